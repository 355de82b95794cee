"""TensorRT export: a serialized engine (``.engine``) built from edgeopt's ONNX export.

Needs the ``tensorrt`` package (extra ``tensorrt``) and a CUDA GPU: TensorRT compiles the
network for the GPU it builds on, so an engine is tied to that GPU model and to the
TensorRT version (both are recorded in the sidecar). Without either, export (and the
``tensorrt`` runner) raise :class:`~edgeopt.errors.MissingDependencyError` naming exactly
what is missing.

Written against the TensorRT 10 Python API: ``trt.Builder`` -> ``create_network(0)``
(explicit batch is the only mode in TensorRT 10) -> ``trt.OnnxParser.parse`` -> a builder
config (workspace pool limit; TF32 off for ``fp32`` so fp32 means fp32; the FP16 flag for
``fp16``) with one optimization profile for the batch dimension (min 1, opt
``opt_batch``, max ``max_batch``) -> ``build_serialized_network`` -> atomic write.

**Untested here**: the machine edgeopt is developed on has neither TensorRT nor a GPU; the
tests cover only the missing-dependency path.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

from edgeopt._backends import require_tensorrt, tensorrt_available  # noqa: F401 - this module's public names
from edgeopt._io import write_bytes_atomic
from edgeopt.config import Config
from edgeopt.errors import ConfigError, UnsupportedModelError
from edgeopt.spec import ModelSpec

SUFFIX = ".engine"
PRECISIONS = ("fp32", "fp16")


@dataclasses.dataclass(frozen=True)
class TensorRTExportConfig(Config):
    """How to build a TensorRT engine.

    Attributes:
        precision: ``fp32`` (TF32 disabled) or ``fp16`` (TensorRT may run layers in fp16).
        opt_batch: the batch size TensorRT tunes kernels for.
        max_batch: the largest batch the engine accepts (the smallest is 1).
        workspace_mib: builder scratch memory limit, MiB.
        onnx_dynamo: export the intermediate ONNX with the dynamo exporter (robust) or
            the legacy tracer (fast).
        opset: ONNX opset of that export.

    Example:
        >>> TensorRTExportConfig(opt_batch=64, max_batch=32)  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        edgeopt.errors.ConfigError: TensorRTExportConfig: opt_batch=64 must be <= max_batch=32
    """

    precision: str = "fp32"
    opt_batch: int = 1
    max_batch: int = 64
    workspace_mib: int = 1024
    onnx_dynamo: bool = True
    opset: int = 18

    def validate(self) -> None:
        self._check_choice("precision", PRECISIONS)
        self._check_range("opt_batch", 1, None)
        self._check_range("max_batch", 1, None)
        self._check_range("workspace_mib", 16, None)
        if self.opt_batch > self.max_batch:
            raise ConfigError(f"TensorRTExportConfig: opt_batch={self.opt_batch} must be <= max_batch={self.max_batch}")


def build_engine(onnx_path: str | Path, spec: ModelSpec, cfg: TensorRTExportConfig) -> bytes:
    """Build a serialized TensorRT engine from an ONNX file (TensorRT 10 API).

    Raises:
        MissingDependencyError: no tensorrt package or no CUDA GPU.
        UnsupportedModelError: the ONNX parser or the builder fails (the parser's errors).

    Example:
        >>> plan = build_engine("model.onnx", spec, TensorRTExportConfig())  # doctest: +SKIP
    """
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch always
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise UnsupportedModelError(f"TensorRT's ONNX parser rejects the model: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mib << 20)
    if cfg.precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 has a 10-bit mantissa: not fp32
    else:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    chw = tuple(spec.input_shape)
    profile.set_shape(name, (1, *chw), (cfg.opt_batch, *chw), (cfg.max_batch, *chw))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UnsupportedModelError("TensorRT could not build an engine for the model (see the TensorRT log)")
    return bytes(plan)


def export_tensorrt(model: Any, spec: ModelSpec, out_path: Path, cfg: TensorRTExportConfig) -> tuple[Any, dict[str, Any]]:
    """Export to ONNX, build an engine on this GPU and write it atomically.

    Called by ``export_model(model, "tensorrt", "out/model.engine", config)``.

    Returns:
        ``(None, meta)``: precision, batch range, GPU name, TensorRT version, seconds.

    Raises:
        MissingDependencyError: no tensorrt package or no CUDA GPU (checked first).
    """
    trt = require_tensorrt()
    import torch

    from edgeopt.export.onnx_export import OnnxExportConfig, export_onnx

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeopt-trt-") as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        _, onnx_meta = export_onnx(model, spec, onnx_file, OnnxExportConfig(dynamo=cfg.onnx_dynamo, opset=cfg.opset))
        plan = build_engine(onnx_file, spec, cfg)
    write_bytes_atomic(out_path, plan)
    meta = {
        "precision": cfg.precision,  # export_model takes the artifact's precision from here
        "exporter": "tensorrt.Builder(onnx)",
        "opset": onnx_meta["opset"],
        "onnx_exporter": onnx_meta["exporter"],
        "batch_range": [1, cfg.max_batch],
        "gpu": torch.cuda.get_device_name(0),
        "export_seconds": round(time.perf_counter() - t0, 3),
        "versions": {"tensorrt": str(trt.__version__), "torch": str(torch.__version__)},
        "config": cfg.to_dict(),
    }
    return None, meta
