"""OptimizeConfig: the device's constraints, the candidates to try, and how to measure them."""

from __future__ import annotations

import dataclasses
from typing import Any

from edgeopt.config import Config
from edgeopt.errors import ConfigError
from edgeopt.evaluate.constraints import Constraints
from edgeopt.pipeline import DataConfig

#: the unpruned candidates: runtime x precision of the checkpoint's own model
BASE_CANDIDATES = ("fp32 torch", "fp32 onnx", "int8 onnxruntime", "int8 torch-x86")
BUDGETS = ("quick", "full")
#: what each budget sets where the config leaves a field None
_PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"prune_ratios": (0.5,), "finetune_epochs": 1, "screen_samples": 256, "screen_latency_runs": 10,
              "latency_runs": 50},
    "full": {"prune_ratios": (0.3, 0.5), "finetune_epochs": 2, "screen_samples": 512, "screen_latency_runs": 20,
             "latency_runs": 100},
}


@dataclasses.dataclass(frozen=True)
class OptimizeConfig(Config):
    """What ``edgeopt optimize`` runs: build candidates, screen them, measure the promising.

    Fields left None take the ``budget``'s value (``quick``: one pruning ratio, 1 fine-tuning
    epoch, 256 screening images, 10 + 50 latency runs; ``full``: 0.3 and 0.5, 2 epochs,
    512 images, 20 + 100 runs).

    Attributes:
        constraints: the device's bounds (:class:`~edgeopt.evaluate.constraints.Constraints`);
            at least one must be set.
        out_dir: where ``artifacts/``, ``results.json``, the report and ``chosen.<ext>`` go.
        data: the dataset (None: the one the checkpoint records, with its own preprocessing).
        resize: resize images of another size to the model's input size.
        threads: inference threads of every latency and memory measurement.
        budget: ``quick`` or ``full`` (see above).
        candidates: which of :data:`BASE_CANDIDATES` to build.
        prune_ratios: structured pruning ratios (fraction of channels removed); each gives
            a ``pruned structured N% onnx`` candidate, fine-tuned ``finetune_epochs``.
        prune_int8: also quantize each pruned model (``... + int8 onnxruntime``).
        finetune_epochs: fine-tuning epochs after pruning (>= 1 with a ``teacher``).
        finetune_lr: peak learning rate of that fine-tuning.
        finetune_max_steps_per_epoch: cap on fine-tuning steps per epoch (quick runs), None: all.
        teacher: an edgeopt checkpoint whose response KD the pruned models' fine-tuning
            learns from (e.g. the model itself). Distilling a new, smaller student is not
            part of optimize: run ``edgeopt distill`` and optimize its checkpoint.
        split: the held-out split every candidate is scored on (``test`` or ``val``).
        screen_samples: held-out images of the cheap screening stage (a seeded subset).
        screen_latency_runs: timed batch-1 runs of the screening stage (no memory probe).
        latency_runs: timed batch-1 runs of the full measurement.
        warmup: untimed runs before each latency measurement.
        throughput_batch: batch size of the full stage's throughput (0: skip it).
        memory: measure peak memory (child process) in the full stage; needed by
            ``max_memory_mb``.
        latency_slack: a candidate is promising when its screened latency is within this
            factor of ``max_latency_ms`` ...
        accuracy_slack: ... and its screened top-1 within this many points of
            ``min_accuracy`` / ``max_drop`` (size is exact already; memory is not screened).
        fallback: when no candidate is promising, this many closest ones are fully measured.
        verify: check every ONNX export against the PyTorch model (parity on real images).
        seed: seed of the screening subset.

    Example:
        >>> cfg = OptimizeConfig(constraints=Constraints(max_latency_ms=2.0, min_accuracy=0.9), budget="quick")
        >>> cfg.prune_ratios, cfg.finetune_epochs
        ((0.5,), 1)
        >>> OptimizeConfig()
        Traceback (most recent call last):
        ...
        edgeopt.errors.ConfigError: OptimizeConfig needs at least one constraint, e.g. --max-latency-ms 2 --min-accuracy 0.95
    """

    constraints: Constraints = dataclasses.field(default_factory=Constraints)
    out_dir: str = "runs/optimize"
    data: DataConfig | None = None
    resize: bool = False
    threads: int = 1
    budget: str = "full"
    candidates: tuple[str, ...] = BASE_CANDIDATES
    prune_ratios: tuple[float, ...] | None = None
    prune_int8: bool = True
    finetune_epochs: int | None = None
    finetune_lr: float = 0.01
    finetune_max_steps_per_epoch: int | None = None
    teacher: str | None = None
    split: str = "test"
    screen_samples: int | None = None
    screen_latency_runs: int | None = None
    latency_runs: int | None = None
    warmup: int = 10
    throughput_batch: int = 64
    memory: bool = True
    latency_slack: float = 1.2
    accuracy_slack: float = 1.0
    fallback: int = 3
    verify: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for k, v in _PRESETS.get(self.budget, {}).items():  # an unknown budget fails in validate()
            if getattr(self, k) is None:
                object.__setattr__(self, k, v)
        super().__post_init__()

    def validate(self) -> None:
        self._check_choice("budget", BUDGETS)
        if not self.constraints.active():
            raise ConfigError("OptimizeConfig needs at least one constraint, e.g. --max-latency-ms 2 --min-accuracy 0.95")
        for c in self.candidates:
            if c not in BASE_CANDIDATES:
                raise ConfigError(f"OptimizeConfig.candidates: unknown candidate {c!r}; choices: "
                                  f"{', '.join(BASE_CANDIDATES)} (pruned ones come from prune_ratios)")
        if not self.candidates and not self.prune_ratios:
            raise ConfigError("OptimizeConfig: no candidates (candidates and prune_ratios are both empty)")
        for r in self.prune_ratios or ():
            if not 0.0 < r < 1.0:
                raise ConfigError(f"OptimizeConfig.prune_ratios: {r!r} must be in (0, 1): the fraction of "
                                  f"channels removed")
        if not self.out_dir:
            raise ConfigError("OptimizeConfig.out_dir must not be empty")
        self._check_threads("threads")
        self._check_choice("split", ("val", "test"))
        self._check_range("finetune_epochs", 0, None)
        self._check_range("finetune_lr", 0.0, None)
        self._check_range("finetune_max_steps_per_epoch", 1, None)
        if self.teacher is not None and self.prune_ratios and not self.finetune_epochs:
            raise ConfigError("OptimizeConfig.teacher recovers the pruned models during fine-tuning: "
                              "set finetune_epochs >= 1")
        self._check_range("screen_samples", 1, None)
        self._check_range("screen_latency_runs", 1, None)
        self._check_range("latency_runs", 1, None)
        self._check_range("warmup", 0, None)
        self._check_batch_size("throughput_batch", lo=0)
        if self.constraints.max_memory_mb is not None and not self.memory:
            raise ConfigError("OptimizeConfig: max_memory_mb needs memory=true (peak memory is measured "
                              "in the full stage)")
        self._check_range("latency_slack", 1.0, None)
        self._check_range("accuracy_slack", 0.0, 100.0)
        self._check_range("fallback", 1, None)

    def screen_constraints(self) -> Constraints:
        """The constraints with the screening slack; memory is not screened (no probe)."""
        c = self.constraints
        return c.replace(
            max_latency_ms=None if c.max_latency_ms is None else c.max_latency_ms * self.latency_slack,
            min_accuracy=None if c.min_accuracy is None else max(0.0, c.min_accuracy - self.accuracy_slack / 100),
            max_drop=None if c.max_drop is None else min(100.0, c.max_drop + self.accuracy_slack),
            max_memory_mb=None,
        )
