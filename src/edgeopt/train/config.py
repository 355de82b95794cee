"""TrainConfig: every knob of the training loop, frozen and validated.

A bad value is a :class:`~edgeopt.errors.ConfigError` when the config is built, before
any data is loaded or any model is touched.
"""

from __future__ import annotations

import dataclasses
import math

from edgeopt.config import Config
from edgeopt.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """How to train a model: optimizer, schedule, precision, checkpoints, resume.

    Attributes:
        epochs: planned number of passes over the train split.
        batch_size: images per step and per process (DDP multiplies it by the world size).
        lr: peak learning rate (reached at the end of the warm-up).
        optimizer: ``"sgd"`` or ``"adamw"``.
        momentum: SGD momentum (AdamW ignores it).
        nesterov: Nesterov momentum for SGD (needs ``momentum > 0``).
        weight_decay: L2 (SGD) or decoupled (AdamW) weight decay.
        schedule: ``"cosine"`` (to 0 at the last step), ``"step"`` (times ``gamma`` every
            ``step_size`` epochs) or ``"constant"``.
        warmup_epochs: linear warm-up length in epochs (may be fractional), applied per step.
        step_size: epochs between decays of the ``"step"`` schedule.
        gamma: decay factor of the ``"step"`` schedule.
        label_smoothing: cross-entropy label smoothing of the default loss, in ``[0, 1)``.
        precision: ``"fp32"``, ``"bf16"`` (autocast) or ``"fp16"`` (autocast + GradScaler).
        channels_last: train in NHWC memory format (faster convolutions on many devices).
        compile: wrap the model in ``torch.compile``; falls back to eager with a warning
            if compilation fails.
        grad_clip: clip the global gradient norm to this value; ``None`` = no clipping.
        seed: seeds ``torch``, ``numpy`` and ``random`` and the data shuffle.
        out_dir: folder for ``last``/``best`` checkpoints and ``train_state.pt``;
            ``None`` writes nothing.
        resume: continue from ``out_dir/train_state.pt`` (a fresh start, with a warning,
            if there is none).
        early_stop_patience: stop after this many evaluated epochs without a better val
            accuracy; ``None`` = never stop early.
        augment: use the dataset's train-time augmentation.
        eval_every: evaluate on val every N epochs (and always after the last one).
        checkpoint_every_steps: also save ``train_state.pt`` every N steps inside an
            epoch, so a killed long epoch resumes mid-way; 0 = only at epoch ends.
        max_steps_per_epoch: cap on steps per epoch (smoke runs); ``None`` = whole split.
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
        progress: show a progress bar (or one line per epoch when stderr is not a TTY).
        threads: torch intra-op threads; ``None`` leaves torch's setting alone.
        log_every_steps: steps between reads of the running loss from the device (one
            sync each) and NaN checks.

    Example:
        >>> cfg = TrainConfig(epochs=3, lr=0.05, precision="bf16")
        >>> cfg.replace(epochs=5).epochs
        5
        >>> TrainConfig(lr=-1)
        Traceback (most recent call last):
        ...
        edgeopt.errors.ConfigError: TrainConfig.lr=-1 must be in [0.0, inf]
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    step_size: int = 30
    gamma: float = 0.1
    label_smoothing: float = 0.0
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    grad_clip: float | None = None
    seed: int = 0
    out_dir: str | None = None
    resume: bool = False
    early_stop_patience: int | None = None
    augment: bool = False
    eval_every: int = 1
    checkpoint_every_steps: int = 0
    max_steps_per_epoch: int | None = None
    device: str = "auto"
    progress: bool = True
    threads: int | None = None
    log_every_steps: int = 50

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "step_size", "eval_every", "log_every_steps"):
            self._check_int(name)
            self._check_range(name, 1, None)
        for name in ("seed", "checkpoint_every_steps"):
            self._check_int(name)
            self._check_range(name, 0, None)
        for name in ("early_stop_patience", "max_steps_per_epoch", "threads"):
            if getattr(self, name) is not None:
                self._check_int(name)
                self._check_range(name, 1, None)
        self._check_threads("threads")
        self._check_batch_size("batch_size")
        for name in ("lr", "momentum", "weight_decay", "warmup_epochs", "gamma",
                     "label_smoothing"):
            self._check_number(name)
        self._check_range("lr", 0.0, None)
        self._check_range("momentum", 0.0, 1.0)
        self._check_range("weight_decay", 0.0, None)
        self._check_range("warmup_epochs", 0.0, None)
        self._check_range("gamma", 0.0, 1.0)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(
                f"TrainConfig.label_smoothing={self.label_smoothing!r} must be in [0, 1)"
            )
        if self.grad_clip is not None:
            self._check_number("grad_clip")
            if not self.grad_clip > 0:
                raise ConfigError(
                    f"TrainConfig.grad_clip={self.grad_clip!r} must be > 0 (or null for no clipping)"
                )
        self._check_choice("optimizer", OPTIMIZERS)
        self._check_choice("schedule", SCHEDULES)
        self._check_choice("precision", PRECISIONS)
        self._check_choice("device", DEVICES)
        if self.warmup_epochs > self.epochs:
            raise ConfigError(
                f"TrainConfig.warmup_epochs={self.warmup_epochs} is longer than epochs={self.epochs}"
            )
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ConfigError("TrainConfig.nesterov needs optimizer='sgd' and momentum > 0")
        if self.resume and not self.out_dir:
            raise ConfigError("TrainConfig.resume=True needs an out_dir to resume from")
        for name in ("nesterov", "channels_last", "compile", "resume", "augment", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"TrainConfig.{name} must be true or false, got {getattr(self, name)!r}"
                )
        if self.out_dir is not None and not isinstance(self.out_dir, str):
            # A Path is fine for users; store it as str so to_dict()/lineage stay JSON.
            object.__setattr__(self, "out_dir", str(self.out_dir))

    def _check_int(self, name: str) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"TrainConfig.{name} must be an integer, got {value!r}")

    def _check_number(self, name: str) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ConfigError(f"TrainConfig.{name} must be a number, got {value!r}")
