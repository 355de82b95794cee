"""Training one arm (a model, a loss, a seed) and measuring it; fresh weights for a seed."""

from __future__ import annotations

import copy
import dataclasses
import sys
from typing import Any

import torch
from torch import nn

from edgeopt.distill._resume import current_train_dir
from edgeopt.distill.config import DistillConfig
from edgeopt.errors import ConfigError, EdgeoptError
from edgeopt.train import Trainer


@dataclasses.dataclass
class ArmRun:
    """One trained model: the best epoch's weights (by val accuracy) and its accuracies.

    Attributes:
        model: the trained model, in eval mode, holding its best epoch's weights.
        test_acc / val_acc: top-1 accuracy (a fraction) of those weights; val_acc is None
            without a val split (then the last epoch's weights are kept).
        history: the Trainer's per-epoch records.
        best_epoch: the epoch whose weights were kept (1-based).
        extra: method details for the report (links, generations, peers, adapters).
    """

    model: nn.Module
    test_acc: float
    val_acc: float | None
    history: list[dict[str, Any]]
    best_epoch: int | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """JSON-ready: accuracies, best epoch, history and the extra details."""
        return {"test_acc": self.test_acc, "val_acc": self.val_acc, "best_epoch": self.best_epoch,
                "history": self.history, **self.extra}


class KeepBest:
    """Trainer callback: keep a copy of the weights of the epoch with the best val accuracy."""

    def __init__(self) -> None:
        self.best: float | None = None
        self.epoch: int | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, trainer, record: dict) -> None:
        acc = record.get("val_acc")
        if acc is not None and (self.best is None or acc > self.best):
            self.best, self.epoch = acc, record["epoch"]
            self.state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


class ProgressTrainer(Trainer):
    """A Trainer that tells its loss how far training is, for the KD warm-up: before each
    step ``loss_fn.epoch`` is set to the epochs done once that step is taken,
    ``(global_step + 1) / steps_per_epoch`` (the Trainer's own count of steps per epoch)."""

    def compute_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        self.loss_fn.epoch = (self.global_step + 1) / self.steps_per_epoch
        return super().compute_loss(model, x, y)


def device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def accuracy(model: nn.Module, data: Any, split: str = "test", batch_size: int = 256) -> float | None:
    """Top-1 accuracy (a fraction) of ``model`` on a whole split; None when it is empty.

    Example:
        >>> from edgeopt.data import get_dataset
        >>> from edgeopt.models import create_model
        >>> data = get_dataset("digits")
        >>> 0.0 <= accuracy(create_model("simple_cnn", data.spec), data) <= 1.0
        True
    """
    if len(data.split(split)) == 0:
        return None
    was, dev = model.training, device_of(model)
    model.eval()
    correct = count = 0
    for x, y in data.loader(split, batch_size):
        correct += int((model(x.to(dev)).argmax(1).cpu() == y).sum())
        count += y.numel()
    model.train(was)
    return correct / count


def train_arm(model: nn.Module, config: DistillConfig, data: Any, seed: int, loss_fn: Any = None,
              progress: bool = False, label: str = "") -> ArmRun:
    """Train ``model`` in place with ``loss_fn`` (None: cross-entropy), keep its best epoch.

    ``loss_fn.data(data)`` (a :class:`~edgeopt.distill.teacher.DistillLoss`) is what the
    Trainer sees, so the teacher logits cache applies. A loss with an ``epoch`` attribute
    is told the training progress before each step (:class:`ProgressTrainer`), for the KD
    warm-up. With ``progress``, a line naming the run (``label``) goes to stderr before
    the Trainer's own output. Inside an arm of :func:`~edgeopt.distill.distill` with
    ``out_dir`` the Trainer checkpoints into the arm's folder and resumes from it.
    """
    if progress and label:
        print(f"distill: {label}, seed {seed}", file=sys.stderr, flush=True)

    has_val = len(data.split("val")) > 0  # without val the Trainer reports 0: keep the last epoch
    keep = KeepBest() if has_val else None
    fit_data = loss_fn.data(data) if hasattr(loss_fn, "data") else data
    train_cfg, callbacks = config.to_train_config(seed, progress), [keep] if keep is not None else []
    train_dir = current_train_dir()  # inside distill()'s arms with out_dir: checkpoint, resume
    resumed = False
    if train_dir is not None:
        resumed = train_dir[1]
        train_cfg = train_cfg.replace(out_dir=train_dir[0], resume=resumed)
    if hasattr(loss_fn, "epoch"):
        trainer = ProgressTrainer(train_cfg, loss_fn=loss_fn, callbacks=callbacks)
    else:
        trainer = Trainer(train_cfg, loss_fn=loss_fn, callbacks=callbacks)
    result = trainer.fit(model, fit_data)
    best_epoch = keep.epoch if keep is not None else len(result.history)
    if resumed and keep is not None and result.best_path is not None:
        # KeepBest saw only the epochs after the resume; the Trainer's best checkpoint follows
        # the same rule (val_acc > best so far, kept across the resume) over all of them.
        best_epoch = _load_trainer_best(model, result.best_path)
    elif keep is not None and keep.state is not None:
        model.load_state_dict(keep.state)
    model.eval()
    return ArmRun(model=model, test_acc=accuracy(model, data, "test"),
                  val_acc=accuracy(model, data, "val") if has_val else None,
                  history=result.history, best_epoch=best_epoch)


def _load_trainer_best(model: nn.Module, path) -> int | None:
    """Load the Trainer's ``best.safetensors`` into ``model``; its epoch (1-based)."""
    from safetensors.torch import load_file

    from edgeopt.models.checkpoint import read_sidecar

    state = load_file(str(path))
    model.load_state_dict(state)
    epoch = (read_sidecar(path).get("metrics") or {}).get("epoch")
    return int(epoch) if epoch is not None else None


def reinit(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with freshly initialised weights, drawn under ``seed``.

    A model built by :func:`~edgeopt.models.create_model` gets its factory's own
    initialisation (the same weights ``create_model`` gives under that seed); any other
    model, every submodule's ``reset_parameters()``. The global RNG is left as it was.

    Raises:
        ConfigError: a parameter belongs to a module without ``reset_parameters`` (it
            could not be re-initialised).

    Example:
        >>> a, b = reinit(nn.Linear(3, 2), 1), reinit(nn.Linear(3, 2), 1)
        >>> bool(torch.equal(a.weight, b.weight))
        True
    """
    fresh = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        arch, spec = getattr(model, "edgeopt_arch", None), getattr(model, "edgeopt_spec", None)
        if isinstance(arch, dict) and spec is not None:
            from edgeopt.models import create_model

            try:
                built = create_model(arch["name"], spec, **(arch.get("kwargs") or {}))
                fresh.load_state_dict(built.state_dict())
                return fresh
            except (EdgeoptError, RuntimeError, KeyError):
                torch.manual_seed(seed)  # e.g. a pruned model: shapes differ from the architecture
        done: set[int] = set()
        for m in fresh.modules():
            if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                m.reset_parameters()
                done.update(id(p) for p in m.parameters(recurse=False))
        left = [n for n, p in fresh.named_parameters() if id(p) not in done]
        if left:
            raise ConfigError(
                f"cannot re-initialise parameter {left[0]!r} of the student (its module has no "
                f"reset_parameters); use DistillConfig.init='given' or build the student with create_model"
            )
    return fresh
