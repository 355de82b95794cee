"""Run a recipe: train (or load) a model, export it, evaluate every variant, report.

The demo is one such run. Finished steps are cached: a step writes ``done.json`` with
the hash of the config that produced it, and a re-run with the same config reuses it,
so an interrupted run resumes from what finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from edgeopt._io import write_json_atomic
from edgeopt.config import Config, load_mapping
from edgeopt.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DataConfig(Config):
    """Which dataset, and where it lives (root None: the default search path).

    ``name`` None means "the dataset the model records" (its ModelSpec's ``dataset``); it is
    filled in by :func:`resolve_dataset` for commands that start from a checkpoint or artifact.
    """

    name: str | None = "digits"
    root: str | None = None
    val_fraction: float = 0.1
    seed: int = 0
    download: bool = False

    def validate(self) -> None:
        self._check_range("val_fraction", 0.0, 0.9)
        if self.name is not None and not self.name:
            raise ConfigError("DataConfig.name must not be empty")

    def load(self):
        from edgeopt.data import get_dataset

        if self.name is None:
            raise ConfigError("no dataset given: pass --data NAME (see `edgeopt datasets`)")

        return get_dataset(
            self.name, root=self.root, val_fraction=self.val_fraction, seed=self.seed,
            download=self.download,
        )


@dataclasses.dataclass(frozen=True)
class ModelConfig(Config):
    """A zoo name, ``tv:NAME`` or ``package.module:factory``, its arguments and weights."""

    name: str = "simple_cnn"
    kwargs: dict = dataclasses.field(default_factory=dict)
    weights: str | None = None

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("ModelConfig.name must not be empty")

    def build(self, spec):
        """Build the model for ``spec`` (and load ``weights``). A config is data (it may come
        from a file), so a ``package.module:factory`` name must be allowed by the user
        (``--model`` on the command line, ``--trust-model-code``, edgeopt.models.trust)."""
        from edgeopt.models import create_model, load_weights_
        from edgeopt.models.trust import check_model_code

        check_model_code(self.name, "the model config")
        model = create_model(self.name, spec, **self.kwargs)
        if self.weights:
            load_weights_(model, self.weights)
        return model


@dataclasses.dataclass(frozen=True)
class EvalConfig(Config):
    """How every variant is measured (see docs/measurement.md)."""

    split: str = "test"
    threads: int = 1
    latency_runs: int = 100
    warmup: int = 10
    throughput_batch: int = 64
    memory: bool = True

    def validate(self) -> None:
        self._check_choice("split", ("val", "test"))
        self._check_threads("threads")
        self._check_range("latency_runs", 1, None)
        self._check_range("warmup", 0, None)
        self._check_batch_size("throughput_batch")


def _from_dict_with_train(cls, data: dict[str, Any] | None):
    """Config.from_dict for configs whose ``train`` field is an edgeopt.train.TrainConfig.

    The field is typed ``Any`` so that importing this module does not import torch.
    """
    from edgeopt.train import TrainConfig

    data = dict(data or {})
    train = data.pop("train", None)
    cfg = Config.from_dict.__func__(cls, data)
    if train is not None:
        cfg = dataclasses.replace(cfg, train=TrainConfig.from_dict(train))
    return cfg


def _default_train():
    from edgeopt.train import TrainConfig

    return TrainConfig(epochs=15, batch_size=64, lr=0.05, seed=0)


@dataclasses.dataclass(frozen=True)
class RunConfig(Config):
    """A whole run: data -> model (trained here unless weights are given) -> exports -> report."""

    name: str = "demo"
    out_dir: str = "runs/demo"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: Any = dataclasses.field(default_factory=_default_train)  # edgeopt.train.TrainConfig
    skip_training: bool = False
    formats: tuple[str, ...] = ("onnx",)
    #: int8 variants: each a dict of QuantConfig fields (edgeopt.quantize); () for none
    quantize: tuple[dict, ...] = ({"backend": "onnxruntime"}, {"backend": "torch", "engine": "x86"})
    #: pruned variants: each a dict of PruneConfig fields (edgeopt.prune), plus an optional
    #: ``quantize`` dict of QuantConfig fields for a pruned-then-int8 variant; () for none
    prune: tuple[dict, ...] = (
        {"method": "structured", "ratio": 0.5, "finetune_epochs": 8, "finetune_lr": 0.02,
         "quantize": {"backend": "onnxruntime"}},
    )
    #: distilled-student variants: each a dict of DistillConfig fields (edgeopt.distill) plus
    #: ``student`` (a zoo model name) and optional ``student_kwargs``; the run's trained model
    #: is the teacher and, with ``baseline`` (the default), the same student trained alone
    #: (same start, data, epochs, seed) is measured beside it; () for none. Three seeds: with
    #: one, the verdict turns on a single test image of digits; 3 x 6 epochs x 2 arms of the
    #: 26k-parameter cnn_student cost about 40 % of the rest of the demo's CPU time.
    distill: tuple[dict, ...] = (
        {"student": "cnn_student", "method": "response", "epochs": 6, "lr": 0.1, "batch_size": 128,
         "init": "seed", "seeds": 3},
    )
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    verify: bool = True
    progress: bool = True

    def validate(self) -> None:
        from edgeopt.export import list_formats

        for fmt in self.formats:
            if fmt not in list_formats():
                raise ConfigError(f"RunConfig.formats: unknown format '{fmt}'; choices: {', '.join(list_formats())}")
        from edgeopt.quantize import QuantConfig

        for q in self.quantize:
            if not isinstance(q, dict):
                raise ConfigError(f"RunConfig.quantize: each entry is a dict of QuantConfig fields, got {q!r}")
            QuantConfig.from_dict(q)  # a bad entry fails before any work
        from edgeopt.prune import PruneConfig

        for p in self.prune:
            if not isinstance(p, dict):
                raise ConfigError(f"RunConfig.prune: each entry is a dict of PruneConfig fields, got {p!r}")
            PruneConfig.from_dict({k: v for k, v in p.items() if k != "quantize"})
            if p.get("quantize") is not None:
                QuantConfig.from_dict(p["quantize"])
        for d in self.distill:
            _distill_config(d)  # a bad entry fails before any work
        if self.skip_training and not self.model.weights:
            raise ConfigError("skip_training needs model.weights (a checkpoint to start from)")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "RunConfig":
        return _from_dict_with_train(cls, data)


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


def load_run_config(path: str | Path) -> RunConfig:
    """Load a recipe (YAML or JSON) into a RunConfig."""
    return RunConfig.from_dict(load_mapping(path))


def config_hash(cfg: Config | dict) -> str:
    """A short stable hash of a config, used to decide whether a cached step is reusable."""
    d = cfg.to_dict() if isinstance(cfg, Config) else cfg
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _log(cfg: RunConfig, msg: str) -> None:
    if cfg.progress:
        print(f"[edgeopt] {msg}", file=sys.stderr, flush=True)


def _train_or_load(cfg: RunConfig, data, out: Path):
    """Train the baseline (or reuse a finished identical training step)."""
    from edgeopt.models import load_checkpoint
    from edgeopt.train import Trainer

    if cfg.skip_training:
        model = cfg.model.build(data.spec)
        return model, [{"step": "load", "weights": cfg.model.weights}]
    train_dir = out / "train"
    key = config_hash({"data": cfg.data.to_dict(), "model": cfg.model.to_dict(), "train": cfg.train.to_dict()})
    done = train_dir / "done.json"
    best = train_dir / "best.safetensors"
    if done.is_file() and best.is_file() and json.loads(done.read_text()).get("hash") == key:
        _log(cfg, f"reusing finished training in {train_dir} (same config)")
        model, meta = load_checkpoint(best)
        return model, meta.get("lineage") or [{"step": "train"}]
    model = cfg.model.build(data.spec)
    tcfg = cfg.train.replace(out_dir=str(train_dir), progress=cfg.progress)
    _log(cfg, f"training {cfg.model.name} on {data.name} for {tcfg.epochs} epochs")
    result = Trainer(tcfg).fit(model, data)
    write_json_atomic(done, {"hash": key, "best": str(result.best_path), "best_metric": result.best_metric})
    model, meta = load_checkpoint(result.best_path)
    return model, meta.get("lineage") or [{"step": "train"}]


def run(cfg: RunConfig) -> dict[str, Any]:
    """Run a recipe end to end and write ``results.json`` and ``report.md`` in ``cfg.out_dir``.

    Args:
        cfg: the run's configuration.

    Returns:
        The results dict (the schema of ``edgeopt.evaluate.results``).

    Raises:
        ConfigError: ``out_dir`` is (under) a file or not writable (before any work), or
            another live run is writing into it (``out_dir/.edgeopt.lock`` names its pid).

    Example:
        >>> from edgeopt.pipeline import RunConfig, run
        >>> results = run(RunConfig(out_dir="runs/demo"))  # doctest: +SKIP
    """
    from edgeopt._outputs import dir_lock, ensure_writable_dir
    from edgeopt.errors import note_interrupt

    t0 = time.perf_counter()
    out = ensure_writable_dir(cfg.out_dir, "out_dir")  # a bad folder fails before the data loads
    try:
        with dir_lock(out, "out_dir"):  # a second run into this folder would overwrite this one's files
            return _run(cfg, out, t0)
    except KeyboardInterrupt as exc:
        kept = (out / "train" / "done.json").is_file() and not cfg.skip_training
        note_interrupt(exc, (
            f"interrupted: nothing partial was written; the finished training in {out / 'train'} is "
            "reused when you re-run the same command" if kept else
            "interrupted: nothing partial was written; re-run the same command to start again"
        ), override=True)  # the Trainer's "--resume" does not apply to a run
        raise


def _run(cfg: RunConfig, out: Path, t0: float) -> dict[str, Any]:
    """The body of :func:`run`, with ``out`` locked."""
    from edgeopt.evaluate import evaluate_variant, new_results, save_results
    from edgeopt.export import export_model
    from edgeopt.models import save_checkpoint
    from edgeopt.report import write_report

    data = cfg.data.load()
    model, lineage = _train_or_load(cfg, data, out)
    model.eval()

    artifacts_dir = out / "artifacts"
    ckpt = save_checkpoint(artifacts_dir / "model_fp32", model, lineage=lineage)
    results = new_results(cfg.name, cfg.to_dict())
    common = dict(
        threads=cfg.eval.threads, latency_runs=cfg.eval.latency_runs,
        throughput_batch=cfg.eval.throughput_batch, memory=cfg.eval.memory, split=cfg.eval.split,
        progress=cfg.progress,
    )
    _log(cfg, "evaluating the PyTorch eager model")
    results["variants"].append(
        evaluate_variant("fp32 torch", ckpt, data, model=model, runtime="torch", lineage=lineage, **common)
    )
    samples, _ = data.samples(256, split=cfg.eval.split)
    for fmt in cfg.formats:
        _log(cfg, f"exporting to {fmt} and checking parity")
        exp = export_model(model, fmt, artifacts_dir / f"model_fp32.{fmt}", samples=samples, verify=cfg.verify)
        row = evaluate_variant(
            f"fp32 {fmt}", exp.artifact, data, model=model, lineage=lineage + [{"step": "export", "format": fmt}],
            **common,
        )
        if exp.parity is not None:
            row["parity"] = exp.parity.to_dict()
        results["variants"].append(row)
    _quantized_variants(cfg, model, data, artifacts_dir, results, lineage, common)
    _pruned_variants(cfg, model, data, artifacts_dir, results, common)
    _distilled_variants(cfg, model, data, artifacts_dir, results, common)
    results["elapsed_s"] = round(time.perf_counter() - t0, 2)
    save_results(out / "results.json", results)
    report = write_report(results, out)
    _log(cfg, f"wrote {out / 'results.json'} and {report} in {results['elapsed_s']:.1f} s")
    return results


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


@dataclasses.dataclass(frozen=True)
class TrainJob(Config):
    """What ``edgeopt train`` runs: a dataset, a model and a TrainConfig."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: Any = dataclasses.field(default_factory=_default_train)  # edgeopt.train.TrainConfig

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "TrainJob":
        return _from_dict_with_train(cls, data)


def train_job(job: TrainJob):
    """Load the data, build the model and train it with the project's Trainer.

    Returns:
        The Trainer's ``TrainResult`` (model, history, best_metric, best_path, last_path).
    """
    from edgeopt._outputs import ensure_writable_dir
    from edgeopt.models.trust import check_model_code
    from edgeopt.train import Trainer

    # what can be refused without data is refused before the (possibly long) data load
    if job.train.out_dir:
        ensure_writable_dir(job.train.out_dir, "out_dir")
    check_model_code(job.model.name, "the model config")
    data = job.data.load()
    model = job.model.build(data.spec)
    return Trainer(job.train).fit(model, data)
