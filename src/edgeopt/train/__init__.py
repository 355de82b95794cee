"""edgeopt.train: the training loop that every later step (fine-tune, QAT, KD) reuses.

Public API:

* :class:`TrainConfig`: frozen, validated settings (optimizer, schedule, AMP, resume, ...).
* :class:`Trainer` ``(config, loss_fn=None).fit(model, data)`` -> :class:`TrainResult`.
* :func:`run_training` ``(model_name, dataset, config)``: build model + data and fit.
* :func:`cross_entropy_loss`, :func:`build_optimizer`, :func:`build_schedule`,
  :class:`LRSchedule`, :func:`seed_everything`, :func:`load_train_state`.

DDP: ``torchrun --nproc_per_node N -m edgeopt.train --model simple_cnn --data digits``;
the Trainer sees ``WORLD_SIZE`` and does the rest.

Example:
    >>> from edgeopt.train import TrainConfig, run_training
    >>> res = run_training("simple_cnn", "digits", TrainConfig(epochs=1, progress=False))
    >>> sorted(res.history[0])[:3]
    ['epoch', 'images_per_s', 'lr']
"""

from edgeopt.train.api import run_training
from edgeopt.train.config import TrainConfig
from edgeopt.train.optim import LRSchedule, build_optimizer, build_schedule
from edgeopt.train.state import load_train_state, seed_everything
from edgeopt.train.trainer import Trainer, TrainResult, cross_entropy_loss

__all__ = [
    "LRSchedule",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "build_optimizer",
    "build_schedule",
    "cross_entropy_loss",
    "load_train_state",
    "run_training",
    "seed_everything",
]
