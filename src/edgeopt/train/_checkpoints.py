"""The Trainer's files in ``out_dir``: ``last``/``best`` checkpoints and ``train_state.pt``.

Checkpoints go through :func:`edgeopt.models.save_checkpoint` (safetensors + JSON
sidecar, both atomic); the train state through :mod:`edgeopt.train.state` (atomic
``torch.save``, loaded with ``weights_only=True``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from edgeopt.errors import ConfigError, DataError
from edgeopt.spec import SPEC_ATTR
from edgeopt.train.state import (
    STATE_FILE,
    capture_rng,
    check_compatible,
    load_train_state,
    model_fingerprint,
    save_train_state,
)


def data_key(data) -> dict[str, Any]:
    """What identifies the data a state was trained on: dataset name and split sizes."""
    spec = data.spec
    return {
        "name": str(getattr(data, "name", "")),
        "input_shape": list(spec.input_shape),
        "num_classes": int(spec.num_classes),
        "train_size": len(data.train) if hasattr(data, "train") else -1,
    }


def check_model_matches_data(model: nn.Module, data) -> None:
    """A model built for another input shape or class count is a one-line ConfigError."""
    spec = getattr(model, SPEC_ATTR, None)
    if spec is None:
        return
    d = data.spec
    if tuple(spec.input_shape) != tuple(d.input_shape) or spec.num_classes != d.num_classes:
        raise ConfigError(
            f"the model expects input {tuple(spec.input_shape)} with {spec.num_classes} classes "
            f"but dataset '{getattr(data, 'name', '?')}' has {tuple(d.input_shape)} with "
            f"{d.num_classes}; create the model from the dataset's spec"
        )


def check_classes(data) -> None:
    """A dataset with one class cannot train a classifier: a one-line DataError.

    Cross-entropy over a single logit is 0 for every image, so nothing is learnt and the
    accuracy is 100 % by construction. With two or more classes of which a split holds
    only one, training runs, with an EdgeoptWarning (the CLI shows it as one line): on the
    train split the model learns to answer that class, on val/test the accuracy measures
    nothing.
    """
    spec, name = data.spec, getattr(data, "name", "?")
    if spec.num_classes < 2:
        raise DataError(
            f"dataset '{name}' has {spec.num_classes} class ({', '.join(spec.names())}): a classifier "
            f"needs at least 2 (with one, the loss is 0 and the accuracy 100 % whatever the model "
            f"learns); add a folder per class under train/ and test/"
        )
    import warnings

    from edgeopt.errors import EdgeoptWarning

    for split in ("train", "val", "test"):
        labels = getattr(getattr(data, split, None), "labels", None)
        if labels is None or not len(labels) or int(labels.unique().numel()) != 1:
            continue
        only = spec.names()[int(labels[0])]
        why = (f"the model learns to answer '{only}'" if split == "train"
               else f"its {split} accuracy measures nothing")
        warnings.warn(
            f"the {split} split of '{name}' holds only class '{only}' ({len(labels)} images) of "
            f"{spec.num_classes}: {why}", EdgeoptWarning, stacklevel=3)


def lineage(model: nn.Module, config) -> list[dict[str, Any]]:
    """The model's earlier steps (if it carries ``edgeopt_lineage``) plus this training step."""
    before = list(getattr(model, "edgeopt_lineage", None) or [])
    return before + [{"step": "train", **config.to_dict()}]


def save_model(stem: Path, model: nn.Module, history: list, config,
               metrics: dict[str, Any]) -> Path:
    """Write ``stem.safetensors`` + ``stem.json`` (atomically, via edgeopt.models)."""
    from edgeopt.models import save_checkpoint

    return save_checkpoint(stem.with_name(stem.name + ".safetensors"), model,
                           history=list(history), metrics=dict(metrics),
                           lineage=lineage(model, config))


def save_state(out_dir: Path, trainer, data, *, epoch: int, step_in_epoch: int, history: list,
               best: float | None, bad_epochs: int, running, seconds: float,
               finished: bool) -> Path:
    """Save everything :meth:`Trainer.fit` needs to continue at (epoch, step_in_epoch).

    ``epoch`` is 0-based: the epoch to run next (or the one in progress when
    ``step_in_epoch > 0``, whose first ``step_in_epoch`` batches are done).
    """
    model = trainer.model
    state = {
        "epoch": int(epoch),
        "step_in_epoch": int(step_in_epoch),
        "global_step": int(trainer.global_step),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else {},
        "rng": capture_rng(),
        "history": list(history),
        "best_metric": best,
        "bad_epochs": int(bad_epochs),
        "running": running.state_dict() if running is not None else None,
        "seconds": float(seconds),
        "finished": bool(finished),
        "config": trainer.config.to_dict(),
        "model_fingerprint": model_fingerprint(model),
        "data": data_key(data),
        "batch_size": int(trainer.config.batch_size),
    }
    return save_train_state(out_dir, state)


OWN_FILES = (STATE_FILE, "last.safetensors", "last.json", "best.safetensors", "best.json")


def remove_stale_temps(out_dir: Path) -> list[Path]:
    """Delete temporary files a killed run left behind (``.NAME.p<pid>-XXXX.tmp`` of our files).

    An atomic write renames its temporary file only on success; a SIGKILL in the middle
    leaves the temporary behind (never a torn real file). Only our own names are touched,
    and only those whose writer is gone (see :func:`edgeopt._io.remove_stale_temps`).
    """
    from edgeopt._io import remove_stale_temps as remove_for

    removed: list[Path] = []
    if out_dir.is_dir():
        for name in OWN_FILES:
            removed += remove_for(out_dir / name)
    return removed


def load_resume_state(config, model: nn.Module, data, progress) -> dict[str, Any] | None:
    """The state to resume from, or None (fresh start; a warning line if resume was asked)."""
    if not config.resume:
        return None
    out_dir = Path(config.out_dir)
    state = load_train_state(out_dir)
    if state is None:
        progress.message(f"warning: resume=True but {out_dir / STATE_FILE} does not exist; "
                         "starting fresh")
        return None
    check_compatible(state, model, data_key(data), config.batch_size, out_dir / STATE_FILE)
    check_epochs(state, config.epochs, out_dir)
    return state


def check_epochs(state: dict[str, Any], epochs: int, out_dir: Path) -> None:
    """Refuse to resume a run with fewer epochs than it has already run (or begun).

    Resuming would run nothing, then rewrite ``last`` with a lineage that claims the
    shorter training: the finished run's files are left untouched instead.
    """
    begun = int(state.get("epoch", 0)) + (1 if state.get("step_in_epoch") else 0)
    if epochs < begun:
        what = "has run" if not state.get("step_in_epoch") else "has begun"
        raise ConfigError(
            f"cannot resume {out_dir} with epochs={epochs}: that run {what} {begun} epoch(s); "
            f"resume with --epochs {begun} or more to continue it, or train into another "
            f"--out-dir (nothing was changed)"
        )
