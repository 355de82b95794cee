"""TFLite export with litert-torch: one ``.tflite`` file, fp32, fp16 or int8, input NCHW.

litert-torch (``pip install "edgeopt[tflite]"``) captures the model with ``torch.export``
and lowers it to a TFLite flatbuffer without TensorFlow. What this module relies on,
measured with litert-torch 0.10.0 / ai-edge-litert 2.3.0 on torch 2.14.1:

* **Layout.** The model is converted as it is: the file's input is NCHW float32, exactly
  what every edgeopt Runner takes. litert-torch inserts the NCHW->NHWC layout change
  inside the graph (a ``TRANSPOSE``; a ``RESHAPE`` when C == 1), so no ``to_channel_last_io``
  and no preprocessing in the file.
* **Batch.** The batch size is fixed at export (``batch_size``, default 1: what an edge
  device runs). ``dynamic_shapes`` fails inside litert-torch's lowering ("Shapes must be
  1D sequences of concrete values", a JAX tracer error), and a fixed-batch file cannot be
  resized afterwards (XNNPACK refuses to reshape the baked ``RESHAPE``), so the ``litert``
  runner feeds any batch in chunks of the file's batch size.
* **fp16** stores the weights as float16 (half the file) with ``DEQUANTIZE`` ops in front of
  the kernels (ai-edge-quantizer's float-casting recipe, ``full_fp16_recipe``); the
  arithmetic stays float32, which is TFLite's standard "float16 quantization".
* **int8** is full-integer static quantization through litert-torch's PT2E quantizer
  (int8 weights, per-channel by default, int8 activations calibrated on real data). The
  file's input and output tensors are int8: the runner quantizes the float batch with the
  input's scale and zero point and dequantizes the logits; both are in the sidecar.

Conversion costs 5-40 s per zoo model on one core (most of it ``torch.export`` and the
MLIR lowering), which is why the tests convert each model once.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeopt._io import write_with_atomic
from edgeopt.config import Config
from edgeopt.errors import (
    ConfigError,
    EdgeoptError,
    MissingDependencyError,
    UnsupportedModelError,
    brief,
    require,
)
from edgeopt.spec import ModelSpec

SUFFIX = ".tflite"
PRECISIONS = ("fp32", "fp16", "int8")
_TFLITE_MAGIC = b"TFL3"  # flatbuffer file identifier at byte offset 4


@dataclasses.dataclass(frozen=True)
class TFLiteExportConfig(Config):
    """How to export to TFLite.

    Attributes:
        precision: ``"fp32"``; ``"fp16"`` (float16 weights, float32 arithmetic, half the
            file); ``"int8"`` (full-integer: int8 weights and activations, int8 input and
            output tensors; needs calibration data).
        calibration_samples: how many calibration images (from the ``calibration`` tensor
            given to ``export_model``) the int8 observers see; ignored otherwise.
        per_channel: int8 weights with one scale per output channel (more accurate, what
            XNNPACK runs natively) instead of one per tensor.
        batch_size: the batch size baked into the file (litert-torch cannot export a
            dynamic batch; the ``litert`` runner splits larger batches).

    Example:
        >>> TFLiteExportConfig(precision="int4")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        edgeopt.errors.ConfigError: TFLiteExportConfig.precision='int4' must be one of fp32, fp16, int8
        >>> TFLiteExportConfig(precision="int8", calibration_samples=256).per_channel
        True
    """

    precision: str = "fp32"
    calibration_samples: int = 512
    per_channel: bool = True
    batch_size: int = 1

    def validate(self) -> None:
        self._check_choice("precision", PRECISIONS)
        for name in ("calibration_samples", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"TFLiteExportConfig.{name}={v!r} must be an integer")
        self._check_range("calibration_samples", 1, None)
        self._check_range("batch_size", 1, None)
        if not isinstance(self.per_channel, bool):
            raise ConfigError(f"TFLiteExportConfig.per_channel={self.per_channel!r} must be true or false")


def _litert_torch() -> Any:
    return require("litert_torch", "tflite", "TFLite export")


def tflite_available() -> str | None:
    """None when TFLite export (litert-torch) can run here, else the reason (one line).

    Example:
        >>> reason = tflite_available()
        >>> reason is None or 'pip install "edgeopt[tflite]"' in reason
        True
    """
    import importlib.util

    if importlib.util.find_spec("litert_torch") is None:
        return str(MissingDependencyError(
            "TFLite export needs the 'tflite' extra: pip install \"edgeopt[tflite]\" (No module named 'litert_torch')"
        ))
    return None


@contextlib.contextmanager
def _converter_quiet() -> Iterator[None]:
    """No progress tree, absl log lines or quantizer size report on the terminal.

    litert-torch prints a rich progress tree unless ``LITERT_TORCH_SHOW_PROGRESS=n``; the
    variable is restored afterwards so a user's own setting wins outside edgeopt.
    """
    from edgeopt.export.onnx_export import _quiet

    old = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        with _quiet(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if old is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = old


_CALIB_BATCH = 64  # images per observer pass (the calibration graph has a dynamic batch)


def _calibration_images(calibration: Any, cfg: TFLiteExportConfig, spec: ModelSpec) -> Any:
    """The first ``calibration_samples`` images as one float32 CPU tensor."""
    import numpy as np
    import torch

    if calibration is None:
        raise ConfigError(
            "TFLite int8 export needs calibration data: pass calibration=data.calibration(512) to export_model"
        )
    if isinstance(calibration, (tuple, list)) and len(calibration) == 2:
        calibration = calibration[0]  # an (x, y) pair from DataModule.samples
    x = torch.as_tensor(np.asarray(calibration) if not hasattr(calibration, "detach") else calibration.detach())
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(spec.input_shape) or not x.is_floating_point():
        raise ConfigError(
            f"TFLite int8 calibration data must be normalised float images [N, {', '.join(map(str, spec.input_shape))}], "
            f"got {x.dtype} {list(x.shape)}"
        )
    x = x[: cfg.calibration_samples].float().cpu()
    if x.shape[0] == 0:
        raise ConfigError("TFLite int8 export got an empty calibration batch")
    return x


def _calibration_graph(model: Any, example: Any, x: Any) -> tuple[Any, list[Any]]:
    """``torch.export`` the model for the observers, and the batches to run through it.

    With a dynamic batch the observers see 64 images per pass: mobilenetv2's 512
    calibration images take ~3 s instead of ~46 s one by one. A model whose batch cannot
    be symbolic is captured at the file's batch size instead.
    """
    import torch

    try:
        two = example[:1].expand(2, *example.shape[1:]).contiguous()  # torch.export specialises size 1
        dyn = ({0: torch.export.Dim("batch")},)
        graph = torch.export.export(model, (two,), dynamic_shapes=dyn).module()
        return graph, list(x.split(_CALIB_BATCH))
    except Exception:  # noqa: BLE001 - fall back to the static graph the file will have
        b = example.shape[0]
        n = x.shape[0] - x.shape[0] % b
        if n == 0:
            raise ConfigError(f"TFLite int8 export needs at least batch_size={b} calibration images") from None
        return torch.export.export(model, (example,)).module(), list(x[:n].split(b))


def _convert(
    model: Any, example: Any, cfg: TFLiteExportConfig, calibration: Any, spec: ModelSpec
) -> tuple[bytes, int]:
    """Run litert-torch; return the flatbuffer bytes and how many calibration images were used."""
    import torch

    litert_torch = _litert_torch()
    if cfg.precision == "fp32":
        return bytes(litert_torch.convert(model, (example,)).model_content()), 0
    if cfg.precision == "fp16":
        from litert_torch.generative.quantize import quant_recipes

        # Works on any converted model: ai-edge-quantizer rewrites the flatbuffer after conversion.
        qc = quant_recipes.full_fp16_recipe()
        return bytes(litert_torch.convert(model, (example,), quant_config=qc).model_content()), 0
    # int8: PT2E static quantization on the torch.export graph, then lowering to int8 kernels.
    from litert_torch.quantize import pt2e_quantizer as pq
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    x = _calibration_images(calibration, cfg, spec)
    quantizer = pq.PT2EQuantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=cfg.per_channel))
    graph, batches = _calibration_graph(model, example, x)
    prepared = quantize_pt2e.prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for b in batches:
            prepared(b)
    # fold_quantize=False keeps float weights + Q/DQ pairs, which the converter turns into int8 kernels.
    quantized = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    qc = QuantConfig(pt2e_quantizer=quantizer)
    content = litert_torch.convert(quantized, (example,), quant_config=qc).model_content()
    return bytes(content), sum(len(b) for b in batches)


def io_details(content: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(input, output)`` tensor details of a flatbuffer: shape, dtype, scale, zero point."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content, num_threads=1)

    def one(d: dict[str, Any]) -> dict[str, Any]:
        scale, zero = d["quantization"]
        return {
            "shape": [int(v) for v in d["shape_signature"]],
            "dtype": str(d["dtype"].__name__),
            "scale": float(scale),
            "zero_point": int(zero),
        }

    ins, outs = it.get_input_details(), it.get_output_details()
    if len(ins) != 1 or len(outs) != 1:
        raise UnsupportedModelError(
            f"the TFLite model has {len(ins)} inputs and {len(outs)} outputs; edgeopt exports single-input classifiers"
        )
    return one(ins[0]), one(outs[0])


def export_tflite(
    model: Any, spec: ModelSpec, out_path: Path, cfg: TFLiteExportConfig, calibration: Any = None
) -> tuple[bytes, dict[str, Any]]:
    """Convert ``model`` (in eval mode) to one ``.tflite`` file, atomically.

    Args:
        model: the ``nn.Module`` (eval mode; export_model sets it).
        spec: its ModelSpec (input shape of the file: ``[batch_size, C, H, W]``).
        out_path: the ``.tflite`` file to write.
        cfg: the :class:`TFLiteExportConfig`.
        calibration: normalised float images ``[N, C, H, W]`` from the train split
            (``DataModule.calibration``); required for ``precision="int8"``.

    Returns:
        ``(flatbuffer bytes, meta)``: meta records precision, batch size, the input and
        output tensors' dtype / scale / zero point (int8), seconds and versions.

    Raises:
        MissingDependencyError: litert-torch is not installed (the pip command).
        ConfigError: int8 without calibration data, or calibration data of another shape.
        UnsupportedModelError: litert-torch cannot convert the model (one line).

    Example:
        >>> import tempfile, torch
        >>> from edgeopt.export import export_model
        >>> from edgeopt.spec import ModelSpec, attach_spec
        >>> m = attach_spec(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)),
        ...                 ModelSpec((1, 8, 8), 10, (0.5,), (0.25,)))
        >>> res = export_model(m, "tflite", tempfile.mkdtemp() + "/m.tflite")  # doctest: +SKIP
        >>> res.artifact.format, res.parity.passed  # doctest: +SKIP
        ('tflite', True)
    """
    import torch

    litert_torch = _litert_torch()
    if cfg.precision == "int8" and calibration is None:  # fail before minutes of conversion
        raise ConfigError(
            "TFLite int8 export needs calibration data: pass calibration=data.calibration(512) to export_model"
        )
    param = next(model.parameters(), None)
    if param is not None and param.device.type != "cpu":
        model = copy.deepcopy(model).cpu().eval()  # litert-torch traces on the CPU
    example = spec.example_input(cfg.batch_size)
    t0 = time.perf_counter()
    try:
        with _converter_quiet():
            content, n_cal = _convert(model, example, cfg, calibration, spec)
    except EdgeoptError:
        raise
    except Exception as exc:  # noqa: BLE001 - every converter failure becomes one line
        msg = brief(exc)
        raise UnsupportedModelError(
            f"litert-torch cannot convert {type(model).__name__} to TFLite ({cfg.precision}): "
            f"{type(exc).__name__}: {msg}"
        ) from None
    seconds = time.perf_counter() - t0
    if len(content) < 8 or content[4:8] != _TFLITE_MAGIC:
        raise UnsupportedModelError("litert-torch returned no TFLite flatbuffer (missing TFL3 identifier)")
    inp, out = io_details(content)
    if inp["shape"][1:] != list(spec.input_shape) or out["shape"][-1] != spec.num_classes:
        raise UnsupportedModelError(
            f"the TFLite model takes {inp['shape']} and returns {out['shape']}; expected NCHW "
            f"[{cfg.batch_size}, {', '.join(map(str, spec.input_shape))}] -> [{cfg.batch_size}, {spec.num_classes}]"
        )

    def _save(tmp_path: Path) -> None:
        tmp_path.write_bytes(content)

    write_with_atomic(out_path, _save)

    import ai_edge_litert

    meta: dict[str, Any] = {
        "precision": cfg.precision,
        "exporter": "litert-torch",
        "batch_size": cfg.batch_size,
        "layout": "NCHW",
        "input": inp,
        "output": out,
        "export_seconds": round(seconds, 3),
        "versions": {
            "torch": str(torch.__version__),
            "litert_torch": str(getattr(litert_torch, "__version__", "unknown")),
            "ai_edge_litert": str(getattr(ai_edge_litert, "__version__", "unknown")),
        },
        "config": cfg.to_dict(),
    }
    if cfg.precision == "int8":
        # What a device needs to feed the file: q = round(x / scale) + zero_point, int8.
        meta["input_quantization"] = {"dtype": inp["dtype"], "scale": inp["scale"], "zero_point": inp["zero_point"]}
        meta["output_quantization"] = {"dtype": out["dtype"], "scale": out["scale"], "zero_point": out["zero_point"]}
        meta["calibration_samples"] = n_cal
    return content, meta
