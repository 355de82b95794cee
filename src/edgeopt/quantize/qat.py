"""Quantization-aware training: fake-quant fine-tuning with the project's Trainer.

A backend prepares the model (torchao PT2E ``prepare_qat_pt2e`` for onnxruntime and
litert; torch.ao FX ``prepare_qat_fx`` for the torch backend): every weight and activation
that will be int8 passes through a FakeQuantize (quantize then dequantize in float, with a
straight-through gradient), and each Conv->BatchNorm pair is simulated *folded*, as it
will be deployed. :func:`finetune` trains that model with :class:`~edgeopt.train.Trainer`
(cosine schedule from ``QuantConfig.qat_lr``) and, after ``qat_freeze_epoch`` epochs,
freezes two things so the last steps train exactly what gets converted:

* the batch-norm running statistics (the folded weights stop moving under them), and
* the observers (the int8 ranges stop moving; only the weights adapt to them).

This is the recipe of the PyTorch QAT tutorials and of Krishnamoorthi (2018), "Quantizing
deep convolutional networks for efficient inference", section 3.2.

Limitation: QAT fine-tunes are short (a fraction of an epoch to a few epochs) and are not
checkpointed: an interrupted QAT run starts again from the float model (the float
checkpoint itself is never touched).
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeopt.quantize.config import QuantConfig

#: the ``progress`` of the running :func:`~edgeopt.quantize.quantize` call (backends'
#: ``build`` takes no progress argument; :func:`finetune` reads it from here)
PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar("edgeopt_quantize_progress", default=True)


class _Freeze:
    """Trainer callback: freeze BN statistics and observers once ``at_step`` is reached."""

    def __init__(self, at_step: int, freeze_fn: Any) -> None:
        self.at_step = at_step
        self.freeze_fn = freeze_fn
        self.done = False
        self.frozen_at: int | None = None

    def on_step_end(self, trainer: Any, step: Any) -> None:
        if not self.done and trainer.global_step >= self.at_step:
            self.freeze_fn(trainer.model if hasattr(trainer, "model") else None)
            self.done = True
            self.frozen_at = trainer.global_step

    def on_epoch_end(self, trainer: Any, record: Any) -> None:
        self.on_step_end(trainer, None)


def _steps_per_epoch(cfg: QuantConfig, data: Any) -> int:
    n = len(data.split("train"))
    steps = math.ceil(n / cfg.qat_batch_size)
    return min(steps, cfg.qat_max_steps_per_epoch) if cfg.qat_max_steps_per_epoch else steps


def freeze_exported(model: nn.Module) -> None:
    """Freeze a PT2E QAT graph: BN in inference mode, observers off, train()/eval() pinned."""
    from torchao.quantization.pt2e import disable_observer
    from torchao.quantization.pt2e import (
        move_exported_model_to_eval as _move_exported_model_to_eval,
    )

    _move_exported_model_to_eval(model)
    model.apply(disable_observer)
    # The Trainer calls model.train() every epoch; for an exported graph that would put
    # the BN ops back into training mode. Pin the frozen state.
    model.train = types.MethodType(lambda self, mode=True: self, model)  # type: ignore[method-assign]


def freeze_fx(model: nn.Module) -> None:
    """Freeze a torch.ao FX QAT model: BN statistics and observers stop updating."""
    import torch.ao.nn.intrinsic.qat as nniqat
    from torch.ao.quantization import disable_observer

    model.apply(nniqat.freeze_bn_stats)
    model.apply(disable_observer)


def finetune(prepared: nn.Module, cfg: QuantConfig, data: Any, out: Path, *, exported: bool,
             progress: bool | None = None) -> dict[str, Any]:
    """Fine-tune a fake-quant model in place with the Trainer; return what happened.

    Args:
        prepared: the model from ``prepare_qat_pt2e`` (``exported=True``) or
            ``prepare_qat_fx``; it must carry the ModelSpec.
        cfg: ``qat_epochs``, ``qat_lr``, ``qat_freeze_epoch``, ``qat_batch_size``,
            ``qat_max_steps_per_epoch``, ``seed``.
        data: the DataModule (its train split).
        out: the artifact path (kept for a future resumable QAT; nothing is written there).
        exported: the model is a torch.export graph (PT2E) rather than an FX module.
        progress: the Trainer's progress output; None: that of the running ``quantize``.

    Returns:
        ``{"epochs", "frozen_at_step", "history", "val_acc"}``.
    """
    from edgeopt.train import TrainConfig, Trainer

    progress = PROGRESS.get() if progress is None else progress
    if exported:
        from torchao.quantization.pt2e import (
            move_exported_model_to_train as _move_exported_model_to_train,
        )

        _move_exported_model_to_train(prepared)
        prepared.train = types.MethodType(lambda self, mode=True: self, prepared)  # BN mode set explicitly
        prepared.eval = types.MethodType(lambda self: self, prepared)
    freeze_step = round(cfg.qat_freeze_epoch * _steps_per_epoch(cfg, data))
    cb = _Freeze(freeze_step, lambda _m: (freeze_exported if exported else freeze_fx)(prepared))
    tcfg = TrainConfig(
        epochs=cfg.qat_epochs, batch_size=cfg.qat_batch_size, lr=cfg.qat_lr, schedule="cosine",
        weight_decay=0.0 if exported else 1e-5, seed=cfg.seed, out_dir=None, progress=progress,
        max_steps_per_epoch=cfg.qat_max_steps_per_epoch, augment=cfg.qat_augment, device="cpu",
        eval_every=cfg.qat_epochs,
    )
    result = Trainer(tcfg, callbacks=[cb]).fit(prepared, data)
    if not cb.done:  # a run shorter than the freeze point still deploys frozen ranges
        (freeze_exported if exported else freeze_fx)(prepared)
    if exported:
        from torchao.quantization.pt2e import (
            move_exported_model_to_eval as _move_exported_model_to_eval,
        )

        _move_exported_model_to_eval(prepared)
    else:
        prepared.eval()
    return {
        "epochs": cfg.qat_epochs,
        "frozen_at_step": cb.frozen_at,
        "history": result.history,
        "val_acc": result.metrics.get("val_acc"),
    }


def count_weight_ops(path: Any) -> tuple[int, int]:
    """``(quantized, float)`` counts of Conv/Gemm/MatMul nodes with a constant weight in an ONNX file."""
    import onnx

    proto = onnx.load(str(path))
    inits = {i.name for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    q = f = 0
    for n in proto.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2:
            continue
        p = producer.get(n.input[1])
        if p is not None and p.op_type == "DequantizeLinear":
            q += 1
        elif n.input[1] in inits or (p is not None and p.op_type == "Constant"):
            f += 1
    return q, f


def allow_train_eval(model: nn.Module) -> nn.Module:
    """Let ``.eval()``/``.train()`` work on a PT2E graph (export and evaluation call them)."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    allow_exported_model_train_eval(model)
    return model


def prepare_pt2e_qat(model: nn.Module, quantizer: Any, example: torch.Tensor,
                     graph_pass: Callable[[Any], Any] | None = None) -> nn.Module:
    """``torch.export`` the model in train mode and insert fake-quant with ``quantizer``.

    ``graph_pass`` rewrites the exported graph before the quantizer sees it (the litert
    backend removes dropout with it).
    """
    import copy

    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    m = copy.deepcopy(model).train()
    batch = torch.export.Dim("batch", min=1, max=4096)
    graph = torch.export.export(m, (example,), dynamic_shapes=({0: batch},), strict=False).module()
    if graph_pass is not None:
        graph = graph_pass(graph)
    prepared = prepare_qat_pt2e(graph, quantizer)
    for attr in ("edgeopt_spec", "edgeopt_arch", "edgeopt_lineage"):
        if hasattr(model, attr):
            setattr(prepared, attr, getattr(model, attr))
    return prepared


def qat_onnx(model: nn.Module, cfg: QuantConfig, calibration: torch.Tensor, out: Path,
             keep_float: list[str], data: Any) -> Any:
    """QAT for the onnxruntime backend: PT2E fake-quant training -> QDQ ONNX."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    from edgeopt.artifact import Artifact
    from edgeopt.export import export_model
    from edgeopt.quantize._base import Built, reduce_range_for
    from edgeopt.quantize.onnxruntime_backend import read_qdq_qparams
    from edgeopt.spec import get_spec

    spec = get_spec(model)
    rr = reduce_range_for(cfg)
    qconf = get_default_x86_inductor_quantization_config(is_qat=True, reduce_range=False)
    if rr:
        # 7-bit weights so ONNX Runtime's u8 x s8 kernels cannot saturate on CPUs without VNNI
        # (see QuantConfig.reduce_range), as quantize_static does. Not 7-bit activations, the
        # quantizer's own reduce_range: ONNX QuantizeLinear saturates at the type's full range,
        # so a [0, 127] fake-quant range is lost in the export, and ORT keeps every ReLU6 Clip
        # (it drops one only when the full uint8 range fits inside it), which left 45 of
        # MobileNetV2's 52 convs in float (4.3 ms against 0.62 ms for static int8).
        qconf = dataclasses.replace(qconf, weight=dataclasses.replace(qconf.weight, quant_min=-64, quant_max=63))
    q = X86InductorQuantizer().set_global(qconf)
    for name in keep_float:
        q.set_module_name_qconfig(name, None)
    example = calibration[:2].clone()
    prepared = prepare_pt2e_qat(model, q, example)
    with torch.no_grad():  # initial ranges from the calibration images
        for i in range(0, len(calibration), 64):
            prepared(calibration[i:i + 64])
    info = finetune(prepared, cfg, data, out, exported=True)
    converted = allow_train_eval(convert_pt2e(prepared))
    for attr in ("edgeopt_spec", "edgeopt_arch", "edgeopt_lineage"):
        if hasattr(model, attr):
            setattr(converted, attr, getattr(model, attr))
    exp = export_model(converted, "onnx", out, {"dynamo": True}, samples=data.samples(64, split="val")[0],
                       verify=False)
    qdq = read_qdq_qparams(exp.artifact.path)  # empty when the exporter renamed the weights
    quantized_ops, float_ops = count_weight_ops(exp.artifact.path)
    float_layers = list(keep_float)
    warnings_ = []
    if float_ops > len(keep_float):
        warnings_.append(f"{float_ops - len(keep_float)} Conv/Gemm node(s) of the QAT model stayed float in the ONNX file")
    art: Artifact = exp.artifact
    art.precision = "int8" if float_ops == 0 else "mixed"
    art.meta["lineage"] = list(getattr(model, "edgeopt_lineage", None) or []) + [
        {"step": "quantize", "method": "qat", "backend": "onnxruntime"}]
    art.save_sidecar()
    history = [{k: v for k, v in h.items()} for h in info["history"]]
    return Built(art, converted, float_layers=float_layers, qparams=qdq, warnings=warnings_,
                 meta={"reduce_range": rr, "quantized_ops": quantized_ops, "qat": {"epochs": info["epochs"], "frozen_at_step": info["frozen_at_step"],
                               "history": history, "val_acc": info["val_acc"]},
                       "quantizer": "torchao X86InductorQuantizer (QAT)", "spec": spec.to_dict()})
