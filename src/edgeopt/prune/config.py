"""PruneConfig: which pruning, how much, which layers, and how to recover."""

from __future__ import annotations

import dataclasses

from edgeopt.config import Config
from edgeopt.errors import ConfigError

#: ``unstructured``: zero single weights by magnitude (masks); ``structured``: remove whole
#: channels/filters through torch-pruning's DependencyGraph (the model gets smaller);
#: ``obs``: unstructured, with the Optimal Brain Surgeon weight update (second order).
METHODS = ("unstructured", "structured", "obs")
#: ``local``: the same ratio in every chosen layer; ``global``: one threshold across them.
SCOPES = ("local", "global")
OBS_TARGETS = ("dense", "layer")
#: Importance scores of structured pruning (edgeopt.prune.importance.IMPORTANCES).
IMPORTANCES = ("l1", "l2", "bn_scale", "taylor", "obd", "lamp", "fpgm")
#: What ``ratio`` is a fraction of: channels/weights removed, or MACs / parameters removed.
TARGETS = ("ratio", "macs", "params")
#: One-shot; prune -> fine-tune in ``steps`` cycles; or the Zhu & Gupta polynomial
#: schedule raising sparsity during one fine-tuning (unstructured/obs only).
SCHEDULES = ("oneshot", "iterative", "gradual")


@dataclasses.dataclass(frozen=True)
class PruneConfig(Config):
    """How to prune a model.

    Attributes:
        method: ``unstructured`` (magnitude masks), ``structured`` (remove channels; the
            deployed model is smaller and faster) or ``obs`` (unstructured with the
            second-order Optimal Brain Surgeon update, on calibration activations).
        ratio: the fraction removed, in ``[0, 1)``: of weights (unstructured/obs), of
            channels (structured, ``target="ratio"``), or of the model's MACs / parameters
            (``target="macs"|"params"``, structured only).
        scope: ``local`` (the same ratio in each chosen layer) or ``global`` (one ranking
            across the chosen layers, so layers lose different amounts).
        importance: structured only: how channels are ranked: ``l1``/``l2`` (group
            magnitude), ``bn_scale`` (batch-norm gamma), ``taylor`` (first order, on
            calibration batches), ``obd`` (Hessian diagonal), ``lamp``, ``fpgm``.
        target: what ``ratio`` is a fraction of: ``ratio`` (channels/weights), ``macs`` or
            ``params`` (structured: the channel ratio is searched until the model lost that
            fraction of its MACs or parameters).
        include: layer names or patterns (``features.*``, ``re:.*conv.*``) to prune; empty:
            every prunable layer (Conv/Linear).
        exclude: layer names or patterns never pruned.
        layer_ratios: per-layer ratios ``{name or pattern: ratio}`` (a sparsity table; see
            :func:`edgeopt.prune.read_sparsity_table`); layers it names get that ratio, the
            rest ``ratio`` (or nothing when ``ratio`` is 0).
        protect_first_last: leave the first layer (it sees the raw image) and the last
            (the classifier) unpruned.
        round_to: structured only: keep channel counts multiples of this; None: exact.
            16 by default: ONNX Runtime's fp32 (NCHWc, AVX-512) and int8 kernels are fastest
            on multiples of 16; measured by ``bench/pruning_round_to.py`` (docs/pruning.md).
        max_layer_ratio: structured only: no layer loses more than this fraction of its
            channels (a global ranking may otherwise empty a layer).
        calibration_samples: training images for ``taylor``/``obd`` importance, OBS and
            the batch-norm re-estimation.
        recalibrate_bn: after one-shot pruning without fine-tuning, re-estimate the batch-norm
            statistics on ``calibration_samples`` training images (no weight changes; see
            :mod:`edgeopt.prune.bn_recalibration`); needs data.
        obs_damp: OBS: dampening added to the Hessian diagonal, as a fraction of its mean.
            0.1, not SparseGPT's 0.01: a CNN's last layers see few input vectors (2x2 maps
            x 256 images for up to 960 channels), and the weaker dampening over-fits them
            (one-shot MobileNetV2-CIFAR at 70 %, with the layer target, was better at 0.1).
        obs_target: OBS: what each layer's pruned weights reproduce: ``dense`` (default) the
            unpruned model's layer output, from the inputs the already pruned layers give it,
            so each layer also corrects the error of those before it; ``layer`` the
            layer's own output on those inputs (SparseGPT's target, which lets errors add up).
        obs_block_size: OBS: columns whose mask is chosen and compensated together
            (SparseGPT's block); larger is faster, and the mask depends on it a little
            (it is chosen per block).
        schedule: ``oneshot``; ``iterative`` (``steps`` prune -> fine-tune cycles up to
            ``ratio``, a checkpoint per cycle, stopping when the drop passes ``max_drop``);
            ``gradual`` (unstructured/obs: sparsity rises along the Zhu & Gupta cubic
            schedule during ``finetune_epochs`` of fine-tuning).
        steps: cycles of ``iterative``, pruning steps of ``gradual``.
        finetune_epochs: fine-tuning epochs after (each) pruning step; 0: none.
        finetune_lr: peak learning rate of the fine-tuning (SGD, cosine schedule).
        finetune_batch_size: images per fine-tuning step.
        finetune_max_steps_per_epoch: cap on steps per fine-tuning epoch (smoke tests).
        finetune_augment: the dataset's train-time augmentation during fine-tuning.
        finetune_kd_temperature: recovery with a teacher (``prune(..., teacher=...)``,
            ``--recover-with-teacher``): softmax temperature of the response-KD term (> 0).
        finetune_kd_alpha: recovery with a teacher: weight of the KD term in ``[0, 1]``;
            the hard-label cross-entropy gets ``1 - alpha``. Both are unused without a teacher.
        max_drop: iterative: stop when the validation accuracy has dropped by more than
            this many points from the unpruned model; in ``[0, 100]``.
        seed: seed of the calibration draw and of fine-tuning.

    Example:
        >>> PruneConfig(method="structured", ratio=0.5, importance="taylor").round_to
        8
        >>> PruneConfig(ratio=1.0)
        Traceback (most recent call last):
        ...
        edgeopt.errors.ConfigError: PruneConfig.ratio=1.0 must be in [0, 1): the fraction removed (1 would remove everything)
    """

    method: str = "unstructured"
    ratio: float = 0.5
    scope: str = "local"
    importance: str = "l1"
    target: str = "ratio"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    layer_ratios: dict[str, float] | None = None
    protect_first_last: bool = True
    round_to: int | None = 16
    max_layer_ratio: float = 0.9
    calibration_samples: int = 256
    recalibrate_bn: bool = True
    obs_damp: float = 0.1
    obs_block_size: int = 128
    obs_target: str = "dense"
    schedule: str = "oneshot"
    steps: int = 1
    finetune_epochs: int = 0
    finetune_lr: float = 0.01
    finetune_batch_size: int = 128
    finetune_max_steps_per_epoch: int | None = None
    finetune_augment: bool = True
    finetune_kd_temperature: float = 4.0
    finetune_kd_alpha: float = 0.9
    max_drop: float | None = None
    seed: int = 0

    def validate(self) -> None:
        self._check_choice("method", METHODS)
        self._check_choice("scope", SCOPES)
        self._check_choice("importance", IMPORTANCES)
        self._check_choice("target", TARGETS)
        self._check_choice("schedule", SCHEDULES)
        self._check_choice("obs_target", OBS_TARGETS)
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(
                f"PruneConfig.ratio={self.ratio!r} must be in [0, 1): the fraction removed "
                f"(1 would remove everything)"
            )
        for name, r in (self.layer_ratios or {}).items():
            if not isinstance(r, (int, float)) or isinstance(r, bool) or not 0.0 <= r < 1.0:
                raise ConfigError(
                    f"PruneConfig.layer_ratios[{name!r}]={r!r} must be a number in [0, 1)"
                )
        if self.round_to is not None:
            self._check_range("round_to", 1, 1024)
        self._check_range("max_layer_ratio", 0.0, 1.0)
        if self.max_layer_ratio >= 1.0:
            raise ConfigError("PruneConfig.max_layer_ratio must be below 1 (a layer needs a channel)")
        self._check_range("calibration_samples", 1, None)
        self._check_range("obs_damp", 0.0, None)
        self._check_range("obs_block_size", 1, None)
        self._check_range("steps", 1, 1000)
        self._check_range("finetune_epochs", 0, None)
        self._check_range("finetune_lr", 0.0, None)
        self._check_batch_size("finetune_batch_size")
        self._check_range("finetune_max_steps_per_epoch", 1, None)
        if not self.finetune_kd_temperature > 0:
            raise ConfigError(f"PruneConfig.finetune_kd_temperature={self.finetune_kd_temperature!r} must be > 0")
        self._check_range("finetune_kd_alpha", 0.0, 1.0)
        if self.max_drop is not None and not 0.0 <= self.max_drop <= 100.0:
            raise ConfigError(
                f"PruneConfig.max_drop={self.max_drop!r} must be in [0, 100] accuracy points"
            )
        if self.target != "ratio" and self.method != "structured":
            raise ConfigError(
                f"PruneConfig.target={self.target!r} needs method='structured' (unstructured "
                f"zeros do not remove MACs); use ratio for the fraction of weights"
            )
        if self.schedule == "gradual" and self.method == "structured":
            raise ConfigError(
                "PruneConfig.schedule='gradual' is for unstructured/obs masks; structured pruning "
                "removes channels step by step with schedule='iterative'"
            )
        if self.schedule != "oneshot" and self.finetune_epochs < 1:
            raise ConfigError(
                f"PruneConfig.schedule={self.schedule!r} fine-tunes between steps: set finetune_epochs >= 1"
            )
