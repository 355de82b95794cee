"""int8 quantization for real int8 runtimes: dynamic, static PTQ, QAT, mixed precision.

``quantize(model, QuantConfig(...), data, out_path)`` builds an artifact for the chosen
backend (``onnxruntime`` QDQ ONNX by default, ``torch``, ``litert``), checks it against a
fake-quant PyTorch reference computing with the artifact's own scales, and records which
layers stayed float. ``scan_sensitivity`` measures each layer's accuracy cost;
``QuantConfig(max_drop=0.5)`` keeps the most sensitive layers float until the artifact is
within the budget. :mod:`edgeopt.quantize.math` holds the formulas.
"""

from edgeopt.quantize._base import QuantResult, list_backends, quantize, top1_agreement
from edgeopt.quantize.config import QuantConfig
from edgeopt.quantize.layers import fold_batchnorm, match_layers, quantizable_layers

__all__ = [
    "QuantConfig",
    "QuantResult",
    "fold_batchnorm",
    "list_backends",
    "match_layers",
    "quantizable_layers",
    "quantize",
    "scan_sensitivity",
    "top1_agreement",
]


def __getattr__(name: str):
    if name == "scan_sensitivity":
        from edgeopt.quantize.sensitivity import scan_sensitivity

        return scan_sensitivity
    raise AttributeError(name)
