"""Run a recipe: train (or load) a model, export it, evaluate every variant, report.

The demo is one such run. Finished steps are cached: a step writes ``done.json`` with
the hash of the config that produced it, and a re-run with the same config reuses it,
so an interrupted run resumes from what finished. The int8, pruned and distilled
variants are built in :mod:`edgeopt.pipeline_variants`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from edgeopt._io import write_json_atomic
from edgeopt.config import Config, load_mapping
from edgeopt.errors import ConfigError
from edgeopt.pipeline_variants import (  # noqa: F401  (quant_variant_name: importable from here too)
    _distill_config,
    _distilled_variants,
    _log,
    _pruned_variants,
    _quantized_variants,
    quant_variant_name,
)


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


def load_run_config(path: str | Path) -> RunConfig:
    """Load a recipe (YAML or JSON) into a RunConfig."""
    return RunConfig.from_dict(load_mapping(path))


def config_hash(cfg: Config | dict) -> str:
    """A short stable hash of a config, used to decide whether a cached step is reusable."""
    d = cfg.to_dict() if isinstance(cfg, Config) else cfg
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
