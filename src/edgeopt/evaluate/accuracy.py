"""Accuracy of any Runner on a held-out split: top-1, top-5, per class, confusion matrix.

The Runner sees exactly what a deployed artifact sees: float32 NCHW numpy batches,
already normalised by the data module, and returns logits ``[N, classes]``. The same
code therefore measures the eager model, the ONNX file and every later runtime.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np

from edgeopt.errors import ConfigError, DataError, NumericalError


@dataclasses.dataclass(frozen=True)
class AccuracyResult:
    """Accuracy of one variant on one split.

    Attributes:
        top1: fraction of images whose highest logit is the label (0..1).
        top5: fraction whose label is among the 5 highest logits; None with < 5 classes.
        n: number of images scored.
        correct: number of top-1 hits.
        per_class: one dict per class: ``{"index", "name", "n", "correct", "accuracy"}``
            (``accuracy`` is None for a class with no images in the split).
        confusion: ``confusion[true][predicted]`` counts, a nested list ``[C][C]``; images
            whose logits held NaN/Inf have no prediction and are left out of it.
        class_names: names of the classes, in index order.
        nan_outputs: images whose logits held NaN or Inf (counted as wrong; only non-zero
            when ``nan_policy="count"``, since the default raises).
        split: which split was scored.
    """

    top1: float
    top5: float | None
    n: int
    correct: int
    per_class: list[dict[str, Any]]
    confusion: list[list[int]]
    class_names: list[str]
    nan_outputs: int = 0
    split: str = "test"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _to_numpy(x: Any, dtype: Any) -> np.ndarray:
    """A torch tensor or array-like as a contiguous numpy array of ``dtype``."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x), dtype=dtype)


def _batches(data: Any, split: str, batch_size: int) -> tuple[Iterable, Any]:
    """(iterable of (x, y) batches, ModelSpec or None) from a DataModule or plain batches."""
    if hasattr(data, "loader"):
        try:
            loader = data.loader(split, batch_size)
        except (KeyError, ValueError) as exc:
            raise DataError(f"cannot read split '{split}' of {getattr(data, 'name', 'the data')}: {exc}") from None
        return loader, getattr(data, "spec", None)
    return data, None  # an iterable of (x, y), e.g. a list of batches in a test


def evaluate_accuracy(
    runner: Any,
    data: Any,
    split: str = "test",
    batch_size: int = 256,
    progress: bool = False,
    nan_policy: str = "raise",
) -> AccuracyResult:
    """Score a Runner on a split: top-1, top-5, per-class accuracy and confusion matrix.

    Args:
        runner: anything with ``predict(np.ndarray float32 NCHW) -> np.ndarray [N, C]``
            (an ``edgeopt.runtime`` Runner).
        data: a DataModule (its ``loader(split, batch_size)`` gives normalised float32 x
            and int64 y, its ``spec`` the class names), or an iterable of ``(x, y)``.
        split: the held-out split to score (``"test"`` or ``"val"``); never a training split.
        batch_size: images per ``predict`` call.
        progress: show a progress bar on stderr.
        nan_policy: ``"raise"`` (default) raises NumericalError on the first batch whose
            logits hold NaN/Inf; ``"count"`` counts those images as wrong and reports them
            in ``nan_outputs``.

    Returns:
        An AccuracyResult.

    Raises:
        NumericalError: logits hold NaN or Inf (with ``nan_policy="raise"``).
        DataError: the split is empty, or the logits do not have one row per image.
        ConfigError: a bad ``batch_size`` or ``nan_policy``.

    Example:
        >>> import numpy as np
        >>> class Fixed:  # a Runner that always answers class 1 of 3
        ...     def predict(self, x):
        ...         return np.tile(np.array([[0.0, 1.0, 0.5]], np.float32), (len(x), 1))
        >>> batches = [(np.zeros((4, 1, 2, 2), np.float32), np.array([1, 1, 0, 2]))]
        >>> r = evaluate_accuracy(Fixed(), batches)
        >>> r.top1, r.confusion
        (0.5, [[0, 1, 0], [0, 2, 0], [0, 1, 0]])
    """
    if batch_size < 1:
        raise ConfigError(f"evaluate_accuracy: batch_size={batch_size} must be >= 1")
    if nan_policy not in ("raise", "count"):
        raise ConfigError(f"evaluate_accuracy: nan_policy={nan_policy!r} must be 'raise' or 'count'")
    batches, spec = _batches(data, split, batch_size)
    num_classes = spec.num_classes if spec is not None else None
    names = list(spec.names()) if spec is not None else None

    confusion: np.ndarray | None = None  # [true, predicted] counts, int64
    top5_hits = 0
    nan_outputs = 0
    n = 0

    bar = _progress_bar(progress, batches, f"accuracy ({split})")
    try:
        for x, y in bar:
            xb = _to_numpy(x, np.float32)
            yb = _to_numpy(y, np.int64).reshape(-1)
            logits = np.asarray(runner.predict(xb))
            if logits.ndim != 2 or logits.shape[0] != len(yb):
                raise DataError(
                    f"the runner returned logits of shape {tuple(logits.shape)} for a batch of "
                    f"{len(yb)} images; expected [{len(yb)}, classes]"
                )
            if num_classes is None:
                num_classes = int(logits.shape[1])
            if logits.shape[1] != num_classes:
                raise DataError(f"the runner returned {logits.shape[1]} classes; the data has {num_classes}")
            if confusion is None:
                confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
                class_n = np.zeros(num_classes, dtype=np.int64)  # images per true class
                class_hits = np.zeros(num_classes, dtype=np.int64)  # top-1 hits per true class
            if yb.size and (yb.min() < 0 or yb.max() >= num_classes):
                raise DataError(f"labels must be in [0, {num_classes}); got {int(yb.min())}..{int(yb.max())}")

            finite = np.isfinite(logits).all(axis=1)  # [N] rows with no NaN/Inf
            bad = int((~finite).sum())
            if bad:
                if nan_policy == "raise":
                    raise NumericalError(
                        f"{bad} of {len(yb)} images in a batch gave NaN/Inf logits; the model or "
                        "artifact is numerically broken (check export parity and quantization ranges)"
                    )
                nan_outputs += bad
            pred = np.argmax(logits, axis=1)
            hit = (pred == yb) & finite  # a NaN/Inf row is never a hit
            np.add.at(confusion, (yb[finite], pred[finite]), 1)
            np.add.at(class_n, yb, 1)
            np.add.at(class_hits, yb[hit], 1)
            ok = finite
            if num_classes >= 5:
                # Top-5: the label's logit is beaten by fewer than 5 others (ties favour the label).
                label_logit = logits[np.arange(len(yb)), yb]
                beaten_by = (logits > label_logit[:, None]).sum(axis=1)
                top5_hits += int(((beaten_by < 5) & ok).sum())
            n += len(yb)
    finally:
        if bar is not batches:
            bar.close()

    if n == 0 or confusion is None:
        raise DataError(f"split '{split}' has no images to score")
    present = np.flatnonzero(class_n)
    if len(present) == 1:  # any model that always answers that class scores 100 %
        import warnings

        from edgeopt.errors import EdgeoptWarning

        only = (names or [str(i) for i in range(num_classes)])[int(present[0])]
        warnings.warn(
            f"accuracy on split '{split}' measures nothing: all {n} images are of one class "
            f"('{only}'{', the only class of the model' if num_classes == 1 else ''}); "
            f"evaluate on data with at least two classes", EdgeoptWarning, stacklevel=2)
    diag = class_hits
    per_class_n = class_n
    names = names or [str(i) for i in range(num_classes)]
    per_class = [
        {
            "index": i,
            "name": names[i],
            "n": int(per_class_n[i]),
            "correct": int(diag[i]),
            "accuracy": (float(diag[i]) / float(per_class_n[i])) if per_class_n[i] else None,
        }
        for i in range(num_classes)
    ]
    correct = int(diag.sum())
    return AccuracyResult(
        top1=correct / n,
        top5=(top5_hits / n) if num_classes >= 5 else None,
        n=n,
        correct=correct,
        per_class=per_class,
        confusion=confusion.tolist(),
        class_names=list(names),
        nan_outputs=nan_outputs,
        split=split,
    )


def _progress_bar(progress: bool, batches: Iterable, label: str) -> Any:
    """Wrap ``batches`` in a transient rich progress bar on stderr when asked."""
    if not progress:
        return batches
    from rich.console import Console
    from rich.progress import Progress

    total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    prog = Progress(console=Console(stderr=True), transient=True)
    prog.start()
    task = prog.add_task(label, total=total)

    class _Bar:
        def __iter__(self):
            for item in batches:
                yield item
                prog.advance(task)

        def close(self) -> None:
            prog.stop()

    return _Bar()
