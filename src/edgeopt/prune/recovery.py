"""Recovery with a teacher: fine-tune a pruned model on KD from its unpruned original.

:func:`recovery_loss` is the Trainer ``loss_fn`` that :func:`~edgeopt.prune.prune` (``teacher=``)
hands to every fine-tuning its schedule runs (one-shot + fine-tune, each iterative cycle,
the gradual schedule): response KD (Hinton et al., 2015) from a frozen copy of the teacher
(eval mode, no gradients) at ``finetune_kd_temperature``, weighted ``finetune_kd_alpha``,
the labels getting ``1 - alpha``. Masks are still re-applied after every optimizer step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from edgeopt.errors import ConfigError
from edgeopt.prune.config import PruneConfig

if TYPE_CHECKING:
    from edgeopt.distill import DistillLoss


def recovery_loss(model: nn.Module, teacher: nn.Module, config: PruneConfig, data: Any) -> DistillLoss:
    """The Trainer ``loss_fn`` of recovery with ``teacher``: response KD at
    ``finetune_kd_temperature`` weighted ``finetune_kd_alpha`` (the labels get the rest).

    One loss serves every fine-tuning of a schedule, so without augmentation
    (``finetune_augment=False``) the teacher runs once per training image in all.

    Args:
        model: the unpruned model (its ModelSpec is compared with the teacher's).
        teacher: the teacher (copied and frozen: eval mode, no gradients).
        config: the PruneConfig; ``finetune_epochs`` must be >= 1.
        data: the DataModule the fine-tuning trains on.

    Returns:
        A :class:`~edgeopt.distill.DistillLoss`.

    Raises:
        ConfigError: no fine-tuning, no data, or a teacher whose ModelSpec differs from
            the model's or does not fit the data.

    Example:
        >>> from edgeopt.data import get_dataset
        >>> from edgeopt.models import create_model
        >>> data = get_dataset("digits")
        >>> m = create_model("simple_cnn", data.spec)
        >>> fn = recovery_loss(m, m, PruneConfig(finetune_epochs=1, finetune_kd_alpha=0.5), data)
        >>> fn.config.temperature, fn.config.alpha, fn.teacher.training
        (4.0, 0.5, False)
    """
    from edgeopt.distill import DistillConfig, check_teacher, distill_loss_fn

    if config.finetune_epochs < 1:
        raise ConfigError("recovery with a teacher fine-tunes the pruned model: set "
                          "PruneConfig.finetune_epochs >= 1 (--finetune-epochs N)")
    if data is None:
        raise ConfigError("recovery with a teacher trains on the train split: pass data (a DataModule)")
    check_same_spec(model, teacher)
    check_teacher(teacher, data, model, what="the recovery teacher")
    kd = DistillConfig(method="response", temperature=config.finetune_kd_temperature,
                       alpha=config.finetune_kd_alpha, augment=config.finetune_augment,
                       batch_size=config.finetune_batch_size, seed=config.seed)
    return distill_loss_fn(teacher, kd)


def teacher_fingerprint(teacher: nn.Module) -> str:
    """A short hash of ``teacher``'s weights and buffers (names, shapes, dtypes and values):
    what the iterative schedule records so that cycles fine-tuned with one teacher are never
    resumed with another (an architecture name alone would not tell two trainings apart).

    Example:
        >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> teacher_fingerprint(a) == teacher_fingerprint(a), teacher_fingerprint(a) == teacher_fingerprint(b)
        (True, False)
    """
    import hashlib

    h = hashlib.sha256()
    for name, t in teacher.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def check_same_spec(model: nn.Module, teacher: nn.Module) -> None:
    """A one-line ConfigError when both carry a ModelSpec and they differ in input shape,
    classes, mean/std, or class names or dataset where both name them (the teacher's
    logits would mean other things).

    Example:
        >>> from edgeopt.models import create_model
        >>> from edgeopt.spec import ModelSpec
        >>> a = create_model("simple_cnn", ModelSpec((1, 8, 8), 10, (0.5,), (0.25,)))
        >>> b = create_model("simple_cnn", ModelSpec((1, 8, 8), 5, (0.5,), (0.25,)))
        >>> check_same_spec(a, b)
        Traceback (most recent call last):
        ...
        edgeopt.errors.ConfigError: the recovery teacher's ModelSpec differs from the model's: num_classes 5 vs 10; ...
    """
    from edgeopt.spec import SPEC_ATTR

    s, t = getattr(model, SPEC_ATTR, None), getattr(teacher, SPEC_ATTR, None)
    if s is None or t is None:
        return
    for f in ("input_shape", "num_classes", "class_names", "mean", "std", "dataset"):
        a, b = getattr(t, f), getattr(s, f)
        if f in ("class_names", "dataset") and not (a and b):
            continue  # one of them does not say
        if (tuple(a) != tuple(b)) if isinstance(a, (tuple, list)) else a != b:
            raise ConfigError(f"the recovery teacher's ModelSpec differs from the model's: {f} "
                              f"{_short(a)} vs {_short(b)}; recover with a teacher trained on the "
                              f"same data and preprocessing (e.g. the unpruned checkpoint)")


def _short(v: Any) -> str:
    v = tuple(v) if isinstance(v, (tuple, list)) else v
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
