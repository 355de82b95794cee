"""QuantConfig: which method, which backend, and how to calibrate."""

from __future__ import annotations

import dataclasses

from edgeopt.config import Config
from edgeopt.errors import ConfigError

METHODS = ("static", "dynamic", "qat")
BACKENDS = ("onnxruntime", "torch", "litert")
CALIBRATIONS = ("minmax", "percentile", "entropy")
#: torch backend engines: torch.ao FX graph mode with a quantized CPU engine (TorchScript
#: output), or torchao PT2E with the X86 Inductor quantizer (torch.export output).
TORCH_ENGINES = ("x86", "fbgemm", "qnnpack", "pt2e-x86")


@dataclasses.dataclass(frozen=True)
class QuantConfig(Config):
    """How to quantize a model to int8.

    Attributes:
        method: ``static`` (post-training: int8 weights and activations, activation
            ranges calibrated on real images), ``dynamic`` (int8 weights of Linear/LSTM
            layers, activations quantized at run time from each batch's range) or ``qat``
            (fake-quant fine-tuning with the Trainer, then conversion to int8).
        backend: the int8 runtime the artifact is built for: ``onnxruntime`` (QDQ ONNX),
            ``torch`` (PyTorch int8 kernels) or ``litert`` (int8 .tflite).
        engine: torch backend only: ``x86``/``fbgemm``/``qnnpack`` (torch.ao FX graph mode,
            TorchScript artifact) or ``pt2e-x86`` (torchao PT2E, torch.export artifact).
        per_channel: one weight scale per output channel (more accurate) instead of one
            per tensor.
        symmetric_activations: int8 activations with zero point 0 instead of uint8 with a
            free zero point (asymmetric, the default where the backend allows it).
        calibration: how an activation range is chosen from the calibration data:
            ``minmax`` (observed extremes), ``percentile`` (clip the tails at ``percentile``)
            or ``entropy`` (the range minimising the KL divergence of the histogram).
        percentile: the percentile kept by ``calibration="percentile"`` (e.g. 99.999).
        calibration_samples: training images used for calibration.
        keep_float: layer names or patterns (``features.0.*``, ``re:.*classifier.*``) left
            in float.
        max_drop: accuracy budget in percentage points: when set, the most sensitive
            layers are kept in float until the int8 artifact is within this drop of fp32;
            in ``[0, 100]`` (0: no loss allowed, an exact tie passes).
        verify_samples: held-out images on which the artifact is compared with its
            fake-quant PyTorch reference (top-1 agreement).
        accuracy_check: on those held-out images, also compare the int8 artifact's top-1
            accuracy with the float model's, and warn (naming the calibration method) when
            it loses more than ``accuracy_margin`` points (entropy calibration lost 3.5
            points on MobileNetV2-CIFAR without a word).
        accuracy_margin: the largest top-1 loss in points that passes without a warning.
        qat_epochs: fake-quant fine-tuning epochs (``method="qat"``).
        qat_lr: peak learning rate of the fine-tuning (cosine schedule).
        qat_freeze_epoch: after this many QAT epochs the batch-norm statistics and the
            observer ranges are frozen, so the last steps train with the ranges and the
            folded weights that will be deployed.
        qat_batch_size: images per QAT step.
        qat_max_steps_per_epoch: cap on QAT steps per epoch (smoke tests), None: all.
        qat_augment: use the dataset's train-time augmentation during QAT.
        reduce_range: 7-bit weights (onnxruntime backend, static and dynamic). x86 CPUs
            without VNNI multiply uint8 x int8 with 16-bit saturating instructions, so
            full-range int8 weights can overflow and the int8 kernels then compute
            something else than the QDQ graph (measured here: static, logits off by 2.5 and
            0.7 % of top-1 flipped on digits; dynamic, 19.6 % flipped on a Linear fed raw
            pixels). None (default): on when this CPU lacks VNNI, recorded in the sidecar.
        seed: seed of the calibration draw and of QAT.

    Example:
        >>> QuantConfig(calibration="percentile", percentile=99.99).backend
        'onnxruntime'
        >>> QuantConfig(method="int4")
        Traceback (most recent call last):
        ...
        edgeopt.errors.ConfigError: QuantConfig.method='int4' must be one of static, dynamic, qat
    """

    method: str = "static"
    backend: str = "onnxruntime"
    engine: str = "x86"
    per_channel: bool = True
    symmetric_activations: bool = False
    calibration: str = "minmax"
    percentile: float = 99.999
    calibration_samples: int = 512
    keep_float: tuple[str, ...] = ()
    max_drop: float | None = None
    verify_samples: int = 512
    accuracy_check: bool = True
    accuracy_margin: float = 1.0
    qat_epochs: int = 1
    qat_lr: float = 1e-3
    qat_freeze_epoch: float = 0.5
    qat_batch_size: int = 128
    qat_max_steps_per_epoch: int | None = None
    qat_augment: bool = False
    reduce_range: bool | None = None
    seed: int = 0

    def validate(self) -> None:
        self._check_choice("method", METHODS)
        self._check_choice("backend", BACKENDS)
        self._check_choice("engine", TORCH_ENGINES)
        self._check_choice("calibration", CALIBRATIONS)
        self._check_range("percentile", 50.0, 100.0)
        self._check_range("calibration_samples", 1, None)
        self._check_range("verify_samples", 1, None)
        self._check_range("accuracy_margin", 0.0, 100.0)
        self._check_range("qat_epochs", 1, None)
        self._check_range("qat_lr", 0.0, None)
        self._check_range("qat_freeze_epoch", 0.0, None)
        self._check_batch_size("qat_batch_size")
        self._check_range("qat_max_steps_per_epoch", 1, None)
        if self.max_drop is not None and not 0.0 <= self.max_drop <= 100.0:
            # a drop is fp32 minus int8 accuracy in points: a negative budget would ask int8
            # to beat fp32 (only all-float meets it, silently), NaN compares false with all
            raise ConfigError(
                f"QuantConfig.max_drop={self.max_drop!r} must be in [0, 100] accuracy points "
                f"(the most int8 may lose against fp32; 0: lose nothing)"
            )
        if self.max_drop is not None and self.method == "dynamic":
            raise ConfigError("QuantConfig.max_drop (automatic mixed precision) needs method static or qat")


def quant_variant_name(q: QuantConfig) -> str:
    """``int8 onnxruntime``, ``int8 torch-x86``, ``int8 qat litert``... (static is the default).

    Example:
        >>> quant_variant_name(QuantConfig(backend="torch", engine="x86"))
        'int8 torch-x86'
    """
    engine = f"-{q.engine}" if q.backend == "torch" else ""
    extra = "" if q.per_channel else " per-tensor"
    method = "" if q.method == "static" else f" {q.method}"
    return f"int8{method} {q.backend}{engine}{extra}"
