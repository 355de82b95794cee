"""Exporters (one per format) and parity verification against the PyTorch model.

``export_model(model, "onnx", "out/model.onnx", samples=x)`` writes one self-contained
file plus its sidecar ``model.onnx.edgeopt.json`` and checks that the file computes what
the model computes (:func:`verify_parity`). Formats: ``onnx`` (later: torchscript,
tflite, coreml, openvino, tensorrt).
"""

from __future__ import annotations

from edgeopt.export._base import EXPORTERS, Exporter, ExportResult, export_model, list_formats
from edgeopt.export.onnx_export import OnnxExportConfig
from edgeopt.export.torchscript_export import TorchScriptExportConfig
from edgeopt.export.tflite_export import TFLiteExportConfig
from edgeopt.export.openvino_export import OpenVINOExportConfig, openvino_from_onnx
from edgeopt.export.coreml_export import CoreMLExportConfig, validate_package
from edgeopt.export.tensorrt_export import TensorRTExportConfig
from edgeopt.export.parity import (
    PARITY_THRESHOLDS,
    ParityReport,
    ParityThresholds,
    compare_logits,
    verify_parity,
)

__all__ = [
    "EXPORTERS",
    "PARITY_THRESHOLDS",
    "CoreMLExportConfig",
    "ExportResult",
    "Exporter",
    "OnnxExportConfig",
    "OpenVINOExportConfig",
    "ParityReport",
    "ParityThresholds",
    "TFLiteExportConfig",
    "TensorRTExportConfig",
    "TorchScriptExportConfig",
    "compare_logits",
    "export_model",
    "list_formats",
    "openvino_from_onnx",
    "validate_package",
    "verify_parity",
]
