"""The variants a run builds beside its fp32 model: int8, pruned (and pruned + int8) and
distilled students, each exported, measured and appended to the run's results.

Also holds the two small helpers these builders share with :mod:`edgeopt.pipeline`: the
run's progress line (``_log``) and the parsing of a ``RunConfig.distill`` entry
(``_distill_config``). :mod:`edgeopt.pipeline` imports from here, never the other way round.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeopt.errors import ConfigError

if TYPE_CHECKING:
    from edgeopt.pipeline import RunConfig


def _distill_config(d: Any):
    """``(student name, student kwargs, DistillConfig)`` of a ``RunConfig.distill`` entry."""
    from edgeopt.distill import DistillConfig

    if not isinstance(d, dict):
        raise ConfigError(f"RunConfig.distill: each entry is a dict of DistillConfig fields plus 'student', got {d!r}")
    student, kwargs = d.get("student"), d.get("student_kwargs") or {}
    if not isinstance(student, str) or not student:
        raise ConfigError(f"RunConfig.distill: each entry needs 'student': a zoo model name (e.g. cnn_student), "
                          f"got {student!r}")
    if not isinstance(kwargs, dict):
        raise ConfigError(f"RunConfig.distill: 'student_kwargs' must be a dict, got {kwargs!r}")
    if d.get("out_dir") is not None:
        raise ConfigError("RunConfig.distill: out_dir is set by the run (artifacts/distill_<student>)")
    return student, kwargs, DistillConfig.from_dict({k: v for k, v in d.items()
                                                     if k not in ("student", "student_kwargs")})


def _log(cfg: RunConfig, msg: str) -> None:
    if cfg.progress:
        print(f"[edgeopt] {msg}", file=sys.stderr, flush=True)


def quant_variant_name(q) -> str:
    """``int8 onnxruntime``, ``int8 torch-x86``, ``int8 qat litert``... (static is the default)"""
    engine = f"-{q.engine}" if q.backend == "torch" else ""
    extra = "" if q.per_channel else " per-tensor"
    method = "" if q.method == "static" else f" {q.method}"
    return f"int8{method} {q.backend}{engine}{extra}"


def _quantized_variants(cfg: RunConfig, model, data, artifacts_dir: Path, results: dict, lineage: list,
                        common: dict) -> None:
    """Quantize, measure each int8 artifact, draw the first one's histograms."""
    from edgeopt.evaluate import evaluate_variant
    from edgeopt.quantize import QuantConfig, quantize
    from edgeopt.quantize.jobs import write_histograms

    for i, qd in enumerate(cfg.quantize):
        q = QuantConfig.from_dict(qd)
        name = quant_variant_name(q)
        _log(cfg, f"quantizing: {name}")
        res = quantize(model, q, data, artifacts_dir / name.replace(" ", "_"), progress=cfg.progress)
        row = evaluate_variant(name, res.artifact, data, model=model,
                               lineage=lineage + [{"step": "quantize", "method": q.method, "backend": q.backend}],
                               **common)
        row["quantization"] = {"agreement": res.agreement, "float_layers": res.float_layers,
                               "warnings": res.warnings}
        results["variants"].append(row)
        if i == 0 and res.qparams:
            figs = write_histograms(model, res, data, artifacts_dir, name.replace(" ", "_"))
            results.setdefault("figures", []).extend(
                {**f, "path": f"artifacts/{f['path']}"} for f in figs)


def _pruned_variants(cfg: RunConfig, model, data, artifacts_dir: Path, results: dict, common: dict) -> None:
    """Prune (and fine-tune), save, export to ONNX and measure; then int8 when asked."""
    from edgeopt.evaluate import evaluate_variant
    from edgeopt.export import export_model
    from edgeopt.prune import PruneConfig, prune
    from edgeopt.prune.jobs import save_pruned, slower_warning
    from edgeopt.prune.plots import prune_figures
    from edgeopt.quantize import QuantConfig, quantize

    parent = next((v for v in results["variants"] if v.get("name") == "fp32 onnx"), None)
    samples, _ = data.samples(256, split=cfg.eval.split)
    for pd in cfg.prune:
        p = PruneConfig.from_dict({k: v for k, v in pd.items() if k != "quantize"})
        name = f"pruned {p.method} {round(100 * p.ratio)}%"
        stem = name.replace(" ", "_").replace("%", "")
        _log(cfg, f"pruning: {name}" + (f" + {p.finetune_epochs} fine-tuning epochs" if p.finetune_epochs else ""))
        res = prune(model, p, data, progress=False)
        ckpt = save_pruned(res, artifacts_dir / stem)
        figs = prune_figures(model, res, artifacts_dir, stem)
        results.setdefault("figures", []).extend({**f, "path": f"artifacts/{f['path']}"} for f in figs)
        lineage = list(res.model.edgeopt_lineage)
        exp = export_model(res.model, "onnx", artifacts_dir / f"{stem}.onnx", samples=samples, verify=cfg.verify)
        row = evaluate_variant(f"{name} onnx", exp.artifact, data, model=res.model,
                               lineage=lineage + [{"step": "export", "format": "onnx"}], **common)
        row["pruning"] = {k: v for k, v in res.to_dict().items()
                          if k in ("sparsity", "params_before", "params_after", "macs_before", "macs_after")}
        row["pruning"]["checkpoint"] = ckpt.name
        if exp.parity is not None:
            row["parity"] = exp.parity.to_dict()
        warn = slower_warning(parent, row, p.method) if parent else None
        if warn:
            row.setdefault("warnings", []).append(warn)
        results["variants"].append(row)
        if pd.get("quantize") is not None:
            q = QuantConfig.from_dict(pd["quantize"])
            qname = f"{name} + {quant_variant_name(q)}"
            _log(cfg, f"quantizing the pruned model: {qname}")
            qres = quantize(res.model, q, data, artifacts_dir / qname.replace(" ", "_").replace("%", "").replace("+", "plus"),
                            progress=False)
            qrow = evaluate_variant(qname, qres.artifact, data, model=res.model,
                                    lineage=lineage + [{"step": "quantize", "method": q.method, "backend": q.backend}],
                                    **common)
            qrow["quantization"] = {"agreement": qres.agreement, "float_layers": qres.float_layers,
                                    "warnings": qres.warnings}
            results["variants"].append(qrow)


def _distilled_variants(cfg: RunConfig, model, data, artifacts_dir: Path, results: dict, common: dict) -> None:
    """Distil the run's model into each small student (and train it alone too), export
    both to ONNX and measure them. Each row's ``distillation`` holds the seed summary (means,
    spreads, gain, verdict) and ``test_acc``, the measured model's own (the first seed's)."""
    import torch

    from edgeopt.distill import distill
    from edgeopt.evaluate import evaluate_variant
    from edgeopt.export import export_model
    from edgeopt.models import create_model

    samples, _ = data.samples(256, split=cfg.eval.split)
    for d in cfg.distill:
        name, kwargs, dcfg = _distill_config(d)
        student_dir = artifacts_dir / f"distill_{name}"
        dcfg = dcfg.replace(out_dir=str(student_dir))  # student/baseline checkpoints + distill.json
        _log(cfg, f"distilling {cfg.model.name} into {name}: {dcfg.method} KD, {dcfg.epochs} epochs"
                  + (" (and the same student trained alone)" if dcfg.baseline else ""))
        with torch.random.fork_rng(devices=[]):  # the run's random streams stay where they were
            res = distill(create_model(name, data.spec, **kwargs), model, dcfg, data, progress=False)
        s = res.summary
        info = {"student": name, "teacher": cfg.model.name, "method": dcfg.method,
                "temperature": dcfg.temperature, "alpha": dcfg.alpha, "epochs": dcfg.epochs,
                "seeds": dcfg.seeds, "teacher_acc": res.teacher_acc,
                **{k: s[k] for k in ("student_mean", "student_std", "baseline_mean", "baseline_std",
                                     "gain", "threshold", "verdict")},
                "note": s.get("note"), "warnings": list(res.warnings)}
        arms = [("student", f"{name} distilled", res.model,
                 {"step": "distill", "method": dcfg.method, "teacher": cfg.model.name,
                  "temperature": dcfg.temperature, "alpha": dcfg.alpha, "epochs": dcfg.epochs})]
        if res.baseline_model is not None:
            arms.append(("baseline", f"{name} trained alone", res.baseline_model,
                         {"step": "train", "arm": "distill baseline", "epochs": dcfg.epochs}))
        for role, vname, m, step in arms:
            stem = vname.replace(" ", "_")
            exp = export_model(m, "onnx", artifacts_dir / f"{stem}.onnx", samples=samples, verify=cfg.verify)
            row = evaluate_variant(f"{vname} onnx", exp.artifact, data, model=m,
                                   lineage=[step, {"step": "export", "format": "onnx"}], **common)
            first = res.runs[0]
            row["distillation"] = {**info, "role": role, "seed": first["seed"], "test_acc": first[role]["test_acc"],
                                   "checkpoint": f"{student_dir.name}/{role}.safetensors"}
            if exp.parity is not None:
                row["parity"] = exp.parity.to_dict()
            if role == "student" and res.warnings:
                row.setdefault("warnings", []).extend(res.warnings)
            results["variants"].append(row)

