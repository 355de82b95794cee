"""The frozen teacher, its logits cache, and the Trainer loss that uses them.

* :func:`frozen_teacher`: a copy of the teacher in eval mode with ``requires_grad=False``;
  it is never a submodule of what the Trainer trains, so the Trainer's ``model.train()``
  cannot switch it to training mode, and its forwards run under ``torch.no_grad()``.
* :func:`check_teacher`: a teacher built for another input shape, class count, class
  names or normalisation than the data is a one-line ConfigError.
* :class:`TeacherCache`: the teacher's logits of each training image, keyed by the
  image's position in the train split. It only applies when the training batches are not
  augmented (an augmented image is a new image every epoch) and the loader can say which
  positions a batch holds (the DataModule's :class:`~edgeopt.data.BatchLoader` can, through
  ``indices()``); otherwise the teacher runs on every batch.
* :class:`DistillLoss` (``distill_loss_fn``): ``loss_fn(model, x, y)`` for
  :class:`~edgeopt.train.Trainer`.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from edgeopt.distill.config import DistillConfig
from edgeopt.distill.losses import get_kd_loss
from edgeopt.errors import ConfigError
from edgeopt.spec import SPEC_ATTR


def frozen_teacher(teacher: nn.Module) -> nn.Module:
    """A copy of ``teacher`` in eval mode with every parameter frozen; the input is unchanged.

    Example:
        >>> t = frozen_teacher(nn.Linear(2, 2))
        >>> t.training, any(p.requires_grad for p in t.parameters())
        (False, False)
    """
    if not isinstance(teacher, nn.Module):
        raise ConfigError(f"the teacher must be a torch.nn.Module, got {type(teacher).__name__}")
    t = copy.deepcopy(teacher)
    t.eval()
    t.requires_grad_(False)
    return t


def _close(a, b) -> bool:
    return len(a) == len(b) and all(math.isclose(float(x), float(y), rel_tol=1e-4, abs_tol=1e-6)
                                    for x, y in zip(a, b))


def check_teacher(teacher: nn.Module, data: Any, student: nn.Module | None = None,
                  what: str = "the teacher") -> None:
    """Raise a one-line ConfigError when ``teacher`` does not fit the data (or the student).

    The teacher's ModelSpec (``edgeopt_spec``) must have the data's input shape and number
    of classes, the same class names when both name them, and the same mean/std (the
    teacher sees the batches normalised for the student). A teacher without a spec is
    checked by one forward of two example images: it must give ``[2, classes]`` logits.

    Example:
        >>> from edgeopt.data import get_dataset
        >>> from edgeopt.models import create_model
        >>> from edgeopt.spec import ModelSpec
        >>> data = get_dataset("digits")
        >>> check_teacher(create_model("simple_cnn", data.spec), data)
        >>> other = create_model("simple_cnn", ModelSpec((1, 8, 8), 5, (0.5,), (0.25,)))
        >>> check_teacher(other, data)
        Traceback (most recent call last):
        ...
        edgeopt.errors.ConfigError: the teacher expects input (1, 8, 8) with 5 classes but the data 'digits' has ...
    """
    d = data.spec
    where = f"the data '{getattr(data, 'name', '?')}'"
    if student is not None:
        s = getattr(student, SPEC_ATTR, None)
        if s is not None and (tuple(s.input_shape) != tuple(d.input_shape) or s.num_classes != d.num_classes):
            raise ConfigError(
                f"the student expects input {tuple(s.input_shape)} with {s.num_classes} classes but "
                f"{where} has {tuple(d.input_shape)} with {d.num_classes}; create the student from "
                f"the data's spec"
            )
    spec = getattr(teacher, SPEC_ATTR, None)
    if spec is None:
        x = d.example_input(2)
        try:
            with torch.no_grad():
                out = frozen_teacher(teacher).to("cpu")(x)
        except Exception as exc:  # noqa: BLE001 - any failure means it does not fit
            raise ConfigError(f"{what} carries no ModelSpec and fails on {where}'s input "
                              f"{tuple(d.input_shape)}: {type(exc).__name__}") from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, d.num_classes):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"{what} carries no ModelSpec and gives {shape} for 2 images; "
                              f"{where} needs (2, {d.num_classes}) logits")
        return
    if tuple(spec.input_shape) != tuple(d.input_shape) or spec.num_classes != d.num_classes:
        raise ConfigError(
            f"{what} expects input {tuple(spec.input_shape)} with {spec.num_classes} classes but "
            f"{where} has {tuple(d.input_shape)} with {d.num_classes} classes; distil from a teacher "
            f"trained on this data"
        )
    if spec.class_names and d.class_names and tuple(spec.class_names) != tuple(d.class_names):
        raise ConfigError(f"{what}'s class names differ from {where}'s; a label would mean another "
                          f"class to the teacher")
    if not (_close(spec.mean, d.mean) and _close(spec.std, d.std)):
        raise ConfigError(
            f"{what} was trained on inputs normalised with mean {tuple(spec.mean)} std "
            f"{tuple(spec.std)} but {where} uses {tuple(d.mean)} {tuple(d.std)}; its logits would "
            f"be wrong: distil on the data the teacher was trained with"
        )


class TeacherCache:
    """Teacher logits ``[N, classes]`` of the ``N`` training images, filled on first use.

    Example:
        >>> c = TeacherCache(4, 3)
        >>> t = nn.Linear(2, 3).eval()
        >>> x = torch.randn(2, 2)
        >>> a = c.get(t, x, torch.tensor([0, 3])); b = c.get(t, x, torch.tensor([0, 3]))
        >>> c.forwards, c.filled, bool(torch.equal(a, b))
        (1, 2, True)
    """

    def __init__(self, n: int, num_classes: int) -> None:
        self.logits = torch.zeros(n, num_classes)
        self.have = torch.zeros(n, dtype=torch.bool)
        self.forwards = 0  # teacher forward passes this cache ran

    @property
    def filled(self) -> int:
        """Images whose logits are cached."""
        return int(self.have.sum())

    @torch.no_grad()
    def get(self, teacher: nn.Module, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Logits of the batch ``x`` whose train-split positions are ``index``; the teacher
        runs only on the images not cached yet."""
        if self.logits.device != x.device:
            self.logits, self.have = self.logits.to(x.device), self.have.to(x.device)
        index = index.to(x.device)
        missing = ~self.have[index]
        if bool(missing.any()):
            self.logits[index[missing]] = teacher(x[missing]).float()
            self.have[index[missing]] = True
            self.forwards += 1
        return self.logits[index]


class _IndexedLoader:
    """A train BatchLoader that remembers which split positions its current batch holds."""

    def __init__(self, loader) -> None:
        self._loader = loader
        self.current: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name: str):
        if name.startswith("_"):  # not forwarded: copy/pickle probe these before __init__
            raise AttributeError(name)
        return getattr(self._loader, name)

    def __iter__(self):
        idx, bs, labels = self._loader.indices(), self._loader.batch_size, self._loader.split.labels
        for i, (x, y) in enumerate(self._loader):
            sel = idx[i * bs:(i + 1) * bs]
            # The cache trusts this to be the batch's positions: check it on the labels.
            if sel.numel() != y.numel() or not torch.equal(labels[sel], y):
                raise RuntimeError("teacher logits cache: the loader's batches do not follow its indices()")
            self.current = sel
            yield x, y
        self.current = None


class IndexedData:
    """The DataModule as the Trainer sees it, with a train loader that tells the cache
    which images each batch holds (every other attribute is the DataModule's)."""

    def __init__(self, data: Any) -> None:
        self._data = data
        self.train_loader: _IndexedLoader | None = None

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._data, name)

    def loader(self, split: str, batch_size: int, **kwargs: Any):
        dl = self._data.loader(split, batch_size, **kwargs)
        if split == "train" and not kwargs.get("augment") and hasattr(dl, "indices"):
            dl = self.train_loader = _IndexedLoader(dl)
        return dl

    @property
    def current(self) -> torch.Tensor | None:
        """Train-split positions of the batch being trained on, or None."""
        return self.train_loader.current if self.train_loader is not None else None


def cache_status(config: DistillConfig, data: Any) -> str:
    """Why the teacher logits cache is used or not (a line for the result)."""
    if not config.cache_teacher_logits:
        return "off: cache_teacher_logits=False"
    if config.augment:
        return "off: augment=True (the teacher runs on each augmented batch)"
    if not hasattr(data, "train") or not hasattr(data.loader("train", 1), "indices"):
        return "off: the train loader cannot say which images a batch holds"
    return "on"


class DistillLoss:
    """``loss_fn(model, x, y)`` for :class:`~edgeopt.train.Trainer`: the student's logits
    against the frozen teacher's, with the KD loss of ``config`` (``dkd`` for method
    ``dkd``, else ``response``).

    Pass :meth:`data` of your DataModule to ``Trainer.fit`` to use the logits cache;
    with the DataModule itself the teacher runs on every batch (correct, slower).

    With ``config.kd_warmup_epochs > 0`` the KD term is warmed up from :attr:`epoch`,
    which :func:`~edgeopt.distill.distill` sets before every step; with your own Trainer,
    set it yourself (epochs done once the step is taken, ``(global_step + 1) /
    steps_per_epoch``), or a training step is a one-line ConfigError.

    Attributes:
        teacher: the frozen copy of the teacher.
        cache: the :class:`TeacherCache` once :meth:`data` enabled it, else None.
        forwards: teacher forward passes run so far (cached or not).
        epoch: training progress in epochs for the KD warm-up, or None (not known).
    """

    def __init__(self, teacher: nn.Module, config: DistillConfig) -> None:
        self.teacher = frozen_teacher(teacher)
        self.config = config
        self.kd = get_kd_loss("dkd" if config.method == "dkd" else "response")
        self.cache: TeacherCache | None = None
        self._data: IndexedData | None = None
        self._uncached_forwards = 0
        self.epoch: float | None = None

    @property
    def forwards(self) -> int:
        return self._uncached_forwards + (self.cache.forwards if self.cache is not None else 0)

    def data(self, data: Any) -> Any:
        """``data`` wrapped so that its train batches use the logits cache (when
        :func:`cache_status` says ``on``); else ``data`` itself."""
        if cache_status(self.config, data) != "on":
            return data
        if self.cache is None or self.cache.logits.shape[0] != len(data.train):
            self.cache = TeacherCache(len(data.train), data.spec.num_classes)
        self._data = IndexedData(data)
        return self._data

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits of batch ``x`` ``[B, classes]`` (from the cache when it can)."""
        self._to(x.device)
        index = self._data.current if self._data is not None else None
        if self.cache is not None and index is not None:
            return self.cache.get(self.teacher, x, index)
        self._uncached_forwards += 1
        return self.teacher(x).float()

    def _to(self, device: torch.device) -> None:
        p = next(self.teacher.parameters(), None)
        if p is not None and p.device != device:
            self.teacher.to(device)

    def progress(self) -> float | None:
        """:attr:`epoch`, checked: a warm-up without it is a one-line ConfigError."""
        if self.epoch is None and self.config.kd_warmup_epochs > 0:
            raise ConfigError(
                f"DistillConfig.kd_warmup_epochs={self.config.kd_warmup_epochs:g} needs the training "
                f"progress: set loss.epoch = (global_step + 1) / steps_per_epoch before each step, "
                f"or train with edgeopt.distill.distill"
            )
        return self.epoch

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        logits = model(x)
        return self.kd(logits, self.teacher_logits(x), y, self.config, epoch=self.progress())


def distill_loss_fn(teacher: nn.Module, config: DistillConfig | None = None) -> DistillLoss:
    """A Trainer ``loss_fn`` that distils ``teacher`` (e.g. fine-tune a pruned model with
    its unpruned original as teacher).

    Args:
        teacher: the teacher (copied and frozen; the object passed is not changed).
        config: ``temperature``, ``alpha`` and the KD loss (``dkd`` for method ``dkd``,
            else ``response``); default: response KD, T=4, alpha=0.9.

    Returns:
        A :class:`DistillLoss`; ``Trainer(cfg, loss_fn=fn).fit(model, fn.data(data))`` also
        caches the teacher's logits when ``cfg.augment`` is False.

    Raises:
        ConfigError: ``config.method`` is ``feature`` or ``online`` (they train more than
            the model: use :func:`~edgeopt.distill.distill`).

    Example:
        >>> from edgeopt.data import get_dataset
        >>> from edgeopt.models import create_model
        >>> from edgeopt.train import Trainer, TrainConfig
        >>> data = get_dataset("digits")
        >>> teacher, student = create_model("simple_cnn", data.spec), create_model("simple_cnn", data.spec)
        >>> fn = distill_loss_fn(teacher)
        >>> cfg = TrainConfig(epochs=2, max_steps_per_epoch=3, batch_size=32, progress=False)
        >>> res = Trainer(cfg, loss_fn=fn).fit(student, fn.data(data))
        >>> sorted(k for k in res.history[0] if k.startswith("train_") and k.endswith("loss"))
        ['train_kd_loss', 'train_loss', 'train_task_loss']
    """
    config = config or DistillConfig()
    if config.method in ("feature", "online"):
        raise ConfigError(
            f"distill_loss_fn covers logit KD (response, dkd); method {config.method!r} also "
            f"trains adapters or peers: use edgeopt.distill.distill"
        )
    return DistillLoss(teacher, config)
