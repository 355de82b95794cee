"""The steps a recipe's variants chain, one registry entry each.

A step takes the model the chain has so far and returns a new model (``prune``,
``finetune``, ``distill``, ``train``) or the files that would be deployed (``quantize``,
``export``: terminal steps). Each parses its YAML mapping into the config dataclass the
Python API uses and writes everything into its own folder, so the runner can cache it.
A new technique is a new entry here, not a branch in the runner.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Callable

from edgeopt.errors import ConfigError
from edgeopt.registry import Registry


@dataclasses.dataclass
class StepContext:
    """What a running step may use: the data, the recipe, its folder, output switches."""

    data: Any
    recipe: Any
    step_dir: Path
    progress: bool
    log: Callable[[str], None]
    chain_info: dict[str, Any] = dataclasses.field(default_factory=dict)  # the earlier steps' info


@dataclasses.dataclass
class StepOutput:
    """What a step made.

    Attributes:
        model: the new model (model steps), saved by the runner as ``model.safetensors``; None
            for a step whose input passes through unchanged (``scan``): the parent's is kept.
        artifacts: terminal steps: ``(label, artifact, row extras)``, one measured row each.
        extras: models measured beside the chain's own (``distill``: the student trained
            alone), ``(label, model, row info)``; not continued by later steps.
        figures: report figures, paths relative to the step's folder.
        info: JSON facts for the rows (``pruning``, ``distillation``...).
    """

    model: Any = None
    artifacts: list[tuple[str, Any, dict[str, Any]]] = dataclasses.field(default_factory=list)
    extras: list[tuple[str, Any, dict[str, Any]]] = dataclasses.field(default_factory=list)
    figures: list[dict[str, str]] = dataclasses.field(default_factory=list)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class StepKind:
    """A registered step: ``parse(mapping, ctx) -> config`` and ``run(ctx, config, model) -> StepOutput``."""

    name: str
    parse: Callable[[dict[str, Any], dict[str, Any]], Any]
    run: Callable[[StepContext, Any, Any], StepOutput]
    terminal: bool = False
    first_only: bool = False
    help: str = ""


STEPS: Registry[StepKind] = Registry("recipe step")


def _register(kind: StepKind) -> None:
    STEPS.add(kind.name, kind, kind.help)


def _lineage(model: Any, step: dict[str, Any]) -> list[dict[str, Any]]:
    return list(getattr(model, "edgeopt_lineage", None) or []) + [step]


@dataclasses.dataclass(frozen=True)
class _WithOptions:
    """A step config plus recipe-only options (``teacher`` of prune, ``formats`` of quantize...)."""

    config: Any
    options: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {**self.config.to_dict(), **self.options}


# ------------------------------------------------------------------------------- prune
def _parse_prune(raw: dict[str, Any], ctx: dict[str, Any]) -> _WithOptions:
    from edgeopt.prune import PruneConfig

    raw = dict(raw)
    from_scan = raw.get("layer_ratios") == "scan"
    if from_scan:  # the table the chain's `scan` step recommends (filled in at run time)
        raw.pop("layer_ratios")
    teacher = raw.pop("teacher", False)
    if not isinstance(teacher, bool):
        raise ConfigError(f"prune.teacher must be true or false (recover with the unpruned model as teacher), got {teacher!r}")
    cfg = PruneConfig.from_dict(raw)
    if teacher and not cfg.finetune_epochs:
        raise ConfigError("prune.teacher: true needs PruneConfig.finetune_epochs >= 1 (the recovery it teaches)")
    return _WithOptions(cfg, {"teacher": teacher, "layer_ratios_from_scan": from_scan})


def _run_prune(ctx: StepContext, cfg: _WithOptions, model: Any) -> StepOutput:
    from edgeopt.prune import prune
    from edgeopt.prune.jobs import lineage_step
    from edgeopt.prune.plots import prune_figures

    p = cfg.config
    if cfg.options.get("layer_ratios_from_scan"):
        table = (ctx.chain_info.get("sensitivity") or {}).get("table")
        if not table:
            raise ConfigError("prune: layer_ratios: scan needs a `scan` step before it in the variant")
        p = p.replace(layer_ratios=table)
    ctx.log(f"pruning: {p.method} {round(100 * p.ratio)} %"
            + (f" + {p.finetune_epochs} fine-tuning epochs" if p.finetune_epochs else "")
            + (" (KD from the unpruned model)" if cfg.options["teacher"] else ""))
    res = prune(model, p, ctx.data, progress=ctx.progress, out_dir=ctx.step_dir / "cycles",
                teacher=model if cfg.options["teacher"] else None)
    res.model.edgeopt_lineage = _lineage(model, lineage_step(res))
    figs = prune_figures(model, res, ctx.step_dir, "prune")
    info = {k: v for k, v in res.to_dict().items()
            if k in ("sparsity", "params_before", "params_after", "macs_before", "macs_after")}
    return StepOutput(model=res.model, figures=figs, info={"pruning": info})


_register(StepKind("prune", _parse_prune, _run_prune,
                   help="PruneConfig fields (edgeopt prune); teacher: true recovers with KD from the input model"))


# -------------------------------------------------------------------------------- scan
@dataclasses.dataclass(frozen=True)
class ScanStep:
    """A per-layer sensitivity scan (``edgeopt scan --prune``); the model passes through."""

    config: Any  # PruneConfig: which layers and method; ratio ignored
    sparsities: tuple[float, ...] = (0.5, 0.7, 0.9)
    samples: int = 512
    threshold: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**self.config.to_dict(), "sparsities": list(self.sparsities), "samples": self.samples,
                "threshold": self.threshold}


def _parse_scan(raw: dict[str, Any], ctx: dict[str, Any]) -> ScanStep:
    from edgeopt.prune import PruneConfig

    raw = dict(raw)
    sp = raw.pop("sparsities", [0.5, 0.7, 0.9])
    samples, threshold = raw.pop("samples", 512), raw.pop("threshold", 1.0)
    if not isinstance(sp, list) or not all(isinstance(x, (int, float)) and 0 < x < 1 for x in sp):
        raise ConfigError(f"scan.sparsities must be a list of fractions in (0, 1), got {sp!r}")
    if not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"scan.samples must be a positive integer, got {samples!r}")
    if not isinstance(threshold, (int, float)) or threshold < 0:
        raise ConfigError(f"scan.threshold (accuracy points) must be >= 0, got {threshold!r}")
    return ScanStep(PruneConfig.from_dict(raw), tuple(float(x) for x in sp), samples, float(threshold))


def _run_scan(ctx: StepContext, cfg: ScanStep, model: Any) -> StepOutput:
    from edgeopt.prune.sensitivity import scan_sensitivity

    ctx.log(f"sensitivity scan: {cfg.config.method} at {', '.join(f'{s:g}' for s in cfg.sparsities)}, "
            f"{cfg.samples} images")
    res = scan_sensitivity(model, ctx.data, cfg.config, ctx.step_dir / "scan", sparsities=cfg.sparsities,
                           samples=cfg.samples, threshold=cfg.threshold, progress=ctx.progress)
    figs = []
    png = res.files.get("png")
    if png:
        figs.append({"title": "Per-layer sensitivity: accuracy points lost when one layer alone is pruned",
                     "path": str(Path(png).relative_to(ctx.step_dir))})
    info = {"sensitivity": {"table": res.table, "threshold": res.threshold, "base_acc": res.base_acc}}
    # no model: the input passes through unchanged, so the runner keeps the parent's
    # checkpoint instead of writing a second copy of it
    return StepOutput(figures=figs, info=info)


_register(StepKind("scan", _parse_scan, _run_scan,
                   help="per-layer sensitivity scan (PruneConfig layer fields + sparsities, samples, threshold); "
                        "a later `prune: {layer_ratios: scan}` uses its table"))


# ---------------------------------------------------------------------------- finetune
_FINETUNE_DEFAULTS = {"epochs": 2, "lr": 0.01}


def _parse_train_like(raw: dict[str, Any], ctx: dict[str, Any], defaults: dict[str, Any]) -> Any:
    from edgeopt.train import TrainConfig

    for key in ("out_dir", "resume"):
        if key in raw:
            raise ConfigError(f"TrainConfig.{key} is set by the run (the step's cached folder)")
    return TrainConfig.from_dict({**defaults, **raw})


def _fit(ctx: StepContext, model: Any, tcfg: Any, callbacks=()) -> Any:
    from edgeopt.train import Trainer

    # resumable inside the step: a killed fine-tuning continues from its last epoch
    out = ctx.step_dir / "train"
    tcfg = tcfg.replace(out_dir=str(out), resume=(out / "train_state.pt").is_file(), progress=ctx.progress)
    Trainer(tcfg, callbacks=list(callbacks)).fit(model, ctx.data)
    return model.eval()


def _run_finetune(ctx: StepContext, tcfg: Any, model: Any) -> StepOutput:
    from edgeopt.prune.layers import prunable_layers
    from edgeopt.prune.masks import MaskCallback, masks_from_zeros

    model = copy.deepcopy(model)
    # an unstructured-pruned model keeps its zeros: fine-tuning would regrow them otherwise
    masks = {k: m for k, m in masks_from_zeros(model, prunable_layers(model)).items() if not bool(m.all())}
    ctx.log(f"fine-tuning {tcfg.epochs} epochs" + (f" (the zeros of {len(masks)} sparse layers kept)" if masks else ""))
    model = _fit(ctx, model, tcfg, [MaskCallback(masks)] if masks else [])
    model.edgeopt_lineage = _lineage(model, {"step": "finetune", "epochs": tcfg.epochs, "lr": tcfg.lr})
    return StepOutput(model=model)


_register(StepKind("finetune", lambda raw, ctx: _parse_train_like(raw, ctx, _FINETUNE_DEFAULTS), _run_finetune,
                   help="TrainConfig fields (default 2 epochs, lr 0.01); zero weights stay zero"))


# ------------------------------------------------------------------------------- train
def _parse_train(raw: dict[str, Any], ctx: dict[str, Any]) -> Any:
    base = ctx["baseline"]
    return _parse_train_like(raw, ctx, dict(base.train or {}))


def _run_train(ctx: StepContext, tcfg: Any, model: Any) -> StepOutput:
    from edgeopt.models import create_model

    arch = getattr(model, "edgeopt_arch", None) or {}
    if not arch.get("name"):
        raise ConfigError("train: the baseline's architecture is not recorded; give baseline.model")
    fresh = create_model(arch["name"], ctx.data.spec, **(arch.get("kwargs") or {}))
    ctx.log(f"training a fresh {arch['name']} for {tcfg.epochs} epochs ({tcfg.precision})")
    fresh = _fit(ctx, fresh, tcfg)
    fresh.edgeopt_lineage = [{"step": "train", "epochs": tcfg.epochs, "precision": tcfg.precision}]
    return StepOutput(model=fresh)


_register(StepKind("train", _parse_train, _run_train, first_only=True,
                   help="train the baseline's architecture from scratch with these TrainConfig fields "
                        "over the baseline's (e.g. precision: bf16); first step only"))


# ----------------------------------------------------------------------------- distill
def _distill_config(d: dict[str, Any]):
    """``(student name, student kwargs, DistillConfig)`` of a ``distill`` step's mapping."""
    from edgeopt.distill import DistillConfig

    student, kwargs = d.get("student"), d.get("student_kwargs") or {}
    if not isinstance(student, str) or not student:
        raise ConfigError(f"distill needs 'student': a zoo model name (e.g. cnn_student), got {student!r}")
    if not isinstance(kwargs, dict):
        raise ConfigError(f"distill: 'student_kwargs' must be a mapping, got {kwargs!r}")
    if d.get("out_dir") is not None:
        raise ConfigError("DistillConfig.out_dir is set by the run (the step's cached folder)")
    return student, kwargs, DistillConfig.from_dict({k: v for k, v in d.items()
                                                     if k not in ("student", "student_kwargs")})


def _parse_distill(raw: dict[str, Any], ctx: dict[str, Any]) -> _WithOptions:
    raw = dict(raw)
    sweep = raw.pop("sweep", None)
    if sweep is not None:
        if not isinstance(sweep, dict) or set(sweep) - {"temperature", "alpha"} or not sweep:
            raise ConfigError("distill.sweep is {temperature: [..], alpha: [..]} (the response-KD grid)")
        sweep = {k: [float(x) for x in (v if isinstance(v, list) else [v])] for k, v in sweep.items()}
    student, kwargs, dcfg = _distill_config(raw)
    from edgeopt.models.trust import check_model_code

    # a recipe is a file: it may name zoo models, but no package.module:factory it names is
    # imported unless the user allowed it (--trust-model-code), as for baseline.model
    for name in (student, *dcfg.assistants):
        check_model_code(name, "the recipe's distill step")
    if sweep and dcfg.method != "response":
        raise ConfigError(f"distill.sweep trains response KD; DistillConfig.method={dcfg.method!r}")
    return _WithOptions(dcfg, {"student": student, "student_kwargs": kwargs, "sweep": sweep})


def _run_distill(ctx: StepContext, cfg: _WithOptions, model: Any) -> StepOutput:
    import torch

    from edgeopt.distill import distill
    from edgeopt.models import create_model

    name, kwargs, dcfg = cfg.options["student"], cfg.options["student_kwargs"], cfg.config
    figures: list[dict[str, str]] = []
    info: dict[str, Any] = {}
    sweep = cfg.options["sweep"]
    if sweep:
        from edgeopt.distill.sweep import sweep as run_sweep

        temps, alphas = sweep.get("temperature", [dcfg.temperature]), sweep.get("alpha", [dcfg.alpha])
        ctx.log(f"distillation sweep: {len(temps)} temperatures x {len(alphas)} alphas x {dcfg.seeds} seed(s)")
        with torch.random.fork_rng(devices=[]):
            sw = run_sweep(create_model(name, ctx.data.spec, **kwargs), model, dcfg, ctx.data, temps, alphas,
                           progress=ctx.progress, out_dir=ctx.step_dir / "sweep")
        best = sw.best
        dcfg = dcfg.replace(temperature=best["temperature"], alpha=best["alpha"])
        info["sweep"] = {"best": {"temperature": best["temperature"], "alpha": best["alpha"],
                                  "student_mean": best["student_mean"]}, "cells": len(sw.rows)}
        if "heatmap" in sw.paths:
            figures.append({"title": f"Distillation sweep: {name} student, test accuracy by temperature and alpha",
                            "path": str(Path(sw.paths["heatmap"]).relative_to(ctx.step_dir))})
    ctx.log(f"distilling into {name}: {dcfg.method} KD, {dcfg.epochs} epochs, {dcfg.seeds} seed(s)"
            + (" (and the same student trained alone)" if dcfg.baseline else ""))
    with torch.random.fork_rng(devices=[]):  # the run's random streams stay where they were
        res = distill(create_model(name, ctx.data.spec, **kwargs), model,
                      dcfg.replace(out_dir=str(ctx.step_dir / "distill")), ctx.data, progress=ctx.progress)
    s = res.summary
    teacher_name = (getattr(model, "edgeopt_arch", None) or {}).get("name")
    first = res.runs[0]  # the measured models are the first seed's
    common = {
        "student": name, "teacher": teacher_name, "method": dcfg.method, "temperature": dcfg.temperature,
        "alpha": dcfg.alpha, "epochs": dcfg.epochs, "seeds": dcfg.seeds, "teacher_acc": res.teacher_acc,
        **{k: s.get(k) for k in ("student_mean", "student_std", "baseline_mean", "baseline_std",
                                 "gain", "threshold", "verdict")},
        "note": s.get("note"), "warnings": list(res.warnings), "seed": first["seed"]}
    info["distillation"] = {**common, "role": "student", "test_acc": first["student"]["test_acc"]}
    student = res.model.eval()
    student.edgeopt_lineage = [{"step": "distill", "method": dcfg.method, "teacher": teacher_name,
                                "temperature": dcfg.temperature, "alpha": dcfg.alpha, "epochs": dcfg.epochs}]
    extras = []
    if res.baseline_model is not None:
        alone = res.baseline_model.eval()
        alone.edgeopt_lineage = [{"step": "train", "arm": "distill baseline", "epochs": dcfg.epochs}]
        extras.append(("trained alone", alone, {"distillation": {
            **common, "role": "baseline", "test_acc": first["baseline"]["test_acc"]}}))
    return StepOutput(model=student, extras=extras, figures=figures, info=info)


_register(StepKind("distill", _parse_distill, _run_distill,
                   help="student (zoo name) + DistillConfig fields; the input model is the teacher; "
                        "sweep: {temperature: [..], alpha: [..]} picks the best cell first"))


# ---------------------------------------------------------------------------- quantize
#: the int8 backend that writes each format (quantize followed by export)
INT8_FORMATS = {"onnx": {"backend": "onnxruntime"}, "tflite": {"backend": "litert"},
                "torchscript": {"backend": "torch", "engine": "x86"}}


def _parse_quantize(raw: dict[str, Any], ctx: dict[str, Any]) -> _WithOptions:
    from edgeopt.quantize import QuantConfig

    raw = dict(raw)
    formats = raw.pop("formats", None) or []
    bad = [f for f in formats if f not in INT8_FORMATS]
    if bad:
        raise ConfigError(f"int8 export to {', '.join(bad)} is not supported; int8 formats: {', '.join(INT8_FORMATS)}")
    if formats and ("backend" in raw or "engine" in raw):
        raise ConfigError("quantize then export: the format picks the backend; drop backend/engine")
    configs = [QuantConfig.from_dict({**raw, **INT8_FORMATS[f]}) for f in formats] or [QuantConfig.from_dict(raw)]
    return _WithOptions(configs[0], {"formats": list(formats), "configs": [c.to_dict() for c in configs]})


def _run_quantize(ctx: StepContext, cfg: _WithOptions, model: Any) -> StepOutput:
    from edgeopt.quantize import QuantConfig, quantize
    from edgeopt.quantize.config import quant_variant_name
    from edgeopt.quantize.jobs import write_histograms

    out = StepOutput()
    for i, qd in enumerate(cfg.options["configs"]):
        q = QuantConfig.from_dict(qd)
        label = quant_variant_name(q)
        ctx.log(f"quantizing: {label}")
        stem = label.replace(" ", "_")
        res = quantize(model, q, ctx.data, ctx.step_dir / stem, progress=ctx.progress)
        out.artifacts.append((label, res.artifact, {
            "quantization": {"agreement": res.agreement, "float_layers": res.float_layers, "warnings": res.warnings},
            "_lineage": _lineage(model, {"step": "quantize", "method": q.method, "backend": q.backend})}))
        if i == 0 and res.qparams:
            out.figures.extend(write_histograms(model, res, ctx.data, ctx.step_dir, stem))
    return out


_register(StepKind("quantize", _parse_quantize, _run_quantize, terminal=True,
                   help="QuantConfig fields (edgeopt quantize); followed by export: {formats: [onnx, tflite]}, "
                        "one int8 file per format"))


# ------------------------------------------------------------------------------ export
@dataclasses.dataclass(frozen=True)
class ExportStep:
    formats: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"formats": list(self.formats)}


def _parse_export(raw: dict[str, Any], ctx: dict[str, Any]) -> ExportStep:
    from edgeopt.export import list_formats

    extra = set(raw) - {"formats"}
    if extra:
        raise ConfigError(f"export takes `formats` only, got {', '.join(sorted(extra))}")
    formats = raw.get("formats") or ["onnx"]
    if isinstance(formats, str):
        formats = [formats]
    bad = [f for f in formats if f not in list_formats()]
    if bad:
        raise ConfigError(f"export.formats: unknown {', '.join(map(str, bad))}; choices: {', '.join(list_formats())}")
    return ExportStep(tuple(formats))


def _run_export(ctx: StepContext, cfg: ExportStep, model: Any) -> StepOutput:
    out = StepOutput()
    for fmt in cfg.formats:
        out.artifacts.append(export_artifact(ctx, model, fmt))
    return out


def export_artifact(ctx: StepContext, model: Any, fmt: str) -> tuple[str, Any, dict[str, Any]]:
    """Export ``model`` to ``fmt`` in the step's folder, parity-checked: ``(label, artifact, extras)``."""
    from edgeopt.export import export_model

    ctx.log(f"exporting to {fmt} and checking parity")
    samples, _ = ctx.data.samples(256, split=ctx.recipe.target.split)
    exp = export_model(model, fmt, ctx.step_dir / f"model.{fmt}", samples=samples, verify=ctx.recipe.target.verify)
    extras: dict[str, Any] = {"_lineage": _lineage(model, {"step": "export", "format": fmt})}
    if exp.parity is not None:
        extras["parity"] = exp.parity.to_dict()
    return fmt, exp.artifact, extras


_register(StepKind("export", _parse_export, _run_export, terminal=True,
                   help="formats: [onnx, tflite, torchscript, ...] (fp32, parity-checked)"))
