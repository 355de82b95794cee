"""``data_for_model``: the one place where a dataset meets a model's own preprocessing.

A model trained elsewhere expects its inputs normalised with *its* mean/std (ImageNet
statistics for most torchvision and timm weights), not the dataset's. Every command that
feeds data to a trained model (eval, export parity, calibration, scans, runtime comparison)
goes through :func:`data_for_model`, so the checkpoint's or artifact's ModelSpec wins:

* mean/std: the model's; the dataset's own statistics are never used for a trained model;
* channels, number of classes: must agree, else one-line DataError;
* class names: when both sides name their classes they must be the same, in the same
  order (a label index means the same class on both sides), else one-line DataError;
* image size: must agree, unless ``resize=True``, which resizes each batch (bilinear,
  antialiased) to the model's size as it is normalised.
"""

from __future__ import annotations

from typing import Any

from edgeopt.errors import DataError
from edgeopt.spec import ModelSpec


def _describe(spec: ModelSpec, what: str) -> str:
    return f"{what} ({spec.dataset})" if spec.dataset else what


def _check_classes(spec: ModelSpec, data_spec: ModelSpec, where: str) -> None:
    if spec.num_classes != data_spec.num_classes:
        raise DataError(
            f"{where} has {spec.num_classes} classes but the data has {data_spec.num_classes}; "
            f"evaluate it on the dataset it was trained for (--data)"
        )
    mine, theirs = tuple(spec.class_names), tuple(data_spec.class_names)
    if not mine or not theirs or mine == theirs:
        return
    diff = [i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b]
    shown = ", ".join(f"{i}: '{mine[i]}' vs '{theirs[i]}'" for i in diff[:3])
    more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
    order = " (the same classes in another order)" if sorted(mine) == sorted(theirs) else ""
    raise DataError(
        f"{where}'s class names differ from the data's{order} at label {shown}{more}; a label "
        f"would mean another class, so accuracy would be wrong: use data with the model's "
        f"classes, or re-import the model with --classes in the data's order"
    )


def data_for_model(data: Any, spec: ModelSpec, *, where: str = "the model", resize: bool = False) -> Any:
    """``data`` (a DataModule) fed the way the model with ``spec`` expects.

    Args:
        data: a :class:`~edgeopt.data.DataModule`.
        spec: the model's (checkpoint's, artifact's) ModelSpec.
        where: what the spec belongs to, for messages (e.g. the checkpoint's file name).
        resize: resize images of another size to the model's (else that is an error).

    Returns:
        ``data`` itself when it already uses ``spec``; otherwise a DataModule over the same
        in-memory images (no copy) whose ``spec`` is ``spec``, so normalisation, shapes and
        class names are the model's.

    Raises:
        DataError: channels, classes, class names or (without ``resize``) size differ.

    Example:
        >>> from edgeopt.data import get_dataset
        >>> from edgeopt.spec import ModelSpec
        >>> dm = get_dataset("digits")
        >>> imagenet_like = ModelSpec((1, 8, 8), 10, (0.45,), (0.22,), dm.spec.class_names)
        >>> data_for_model(dm, imagenet_like).spec.mean
        (0.45,)
    """
    from edgeopt.data._module import DataModule

    dspec = data.spec
    if spec == dspec and not getattr(data, "resize_to", None):
        return data
    where = _describe(spec, where)
    if spec.channels != dspec.channels:
        raise DataError(
            f"{where} takes {spec.channels}-channel images but the data ({data.name}) has "
            f"{dspec.channels}; use data with the model's channels"
        )
    _check_classes(spec, dspec, where)
    size, dsize = tuple(spec.input_shape[1:]), tuple(dspec.input_shape[1:])
    if size != dsize and not resize:
        raise DataError(
            f"{where} expects {size[0]}x{size[1]} images but {data.name} has {dsize[0]}x{dsize[1]}; "
            f"use data of the model's size, or pass --resize to resize each image to it"
        )
    return DataModule(
        data.name, spec, data.train, data.val, data.test, augment=data.augment, source=data.source,
        resize_to=size if size != dsize else None,
    )
