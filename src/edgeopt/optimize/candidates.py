"""The candidates ``optimize`` builds from one checkpoint: runtimes x precisions x pruning.

Each is built with the same API calls as the demo's variants (the steps of :mod:`edgeopt.recipe.steps`):
``save_checkpoint`` (fp32 torch eager), ``export_model`` (fp32 ONNX), ``quantize`` (int8
ONNX Runtime static, int8 torch x86), ``prune`` structured + fine-tuning (then ONNX, and
int8 ONNX Runtime). A candidate that fails to build is a :class:`Candidate` with ``error``
set: it becomes a row with a note, never a crash of the run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgeopt.errors import EdgeoptError
from edgeopt.optimize.config import OptimizeConfig


@dataclasses.dataclass
class Candidate:
    """One variant to measure.

    Attributes:
        name: its row name, e.g. ``"int8 onnxruntime"``.
        target: the artifact (an ``Artifact`` or a path) that is deployed; None when the
            build failed.
        model: the ``nn.Module`` it came from (MACs, bytes moved).
        runtime: the runtime to run ``target`` in (None: the artifact's own).
        lineage: the steps that produced it.
        extra: fields added to its row (``quantization``, ``pruning``, ``parity``).
        error: why it could not be built (one line), or None.
    """

    name: str
    target: Any = None
    model: Any = None
    runtime: str | None = None
    lineage: list[Any] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None


def one_line(exc: BaseException) -> str:
    """An exception as one line (edgeopt's own errors with their type name)."""
    text = exc.one_line() if isinstance(exc, EdgeoptError) else f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return text[:300]


def _stem(name: str) -> str:
    return name.replace(" ", "_").replace("%", "").replace("+", "plus")


def _quant(model: Any, backend: str, data: Any, out: Path, lineage: list[Any], name: str) -> Candidate:
    from edgeopt.quantize import QuantConfig, quantize

    q = QuantConfig(backend=backend, engine="x86")
    res = quantize(model, q, data, out / _stem(name), progress=False)
    return Candidate(name, res.artifact, model, None,
                     lineage + [{"step": "quantize", "method": q.method, "backend": q.backend}],
                     {"quantization": {"agreement": res.agreement, "float_layers": res.float_layers,
                                       "warnings": res.warnings}})


def _onnx(model: Any, data: Any, cfg: OptimizeConfig, out: Path, lineage: list[Any], name: str,
          samples: Any) -> Candidate:
    from edgeopt.export import export_model

    exp = export_model(model, "onnx", out / f"{_stem(name)}.onnx", samples=samples, verify=cfg.verify)
    extra = {"parity": exp.parity.to_dict()} if exp.parity is not None else {}
    return Candidate(name, exp.artifact, model, None, lineage + [{"step": "export", "format": "onnx"}], extra)


def build_candidates(model: Any, lineage: list[Any], data: Any, cfg: OptimizeConfig, out: Path, *,
                     teacher: Any = None, log: Callable[[str], None] = lambda msg: None) -> Iterator[Candidate]:
    """Build each candidate in turn (lazily, so each is measured while the next waits).

    Args:
        model: the checkpoint's float model (eval mode, carrying its ModelSpec).
        lineage: the checkpoint's lineage.
        data: the DataModule (the model's preprocessing): calibration, fine-tuning, parity.
        cfg: the OptimizeConfig (``candidates``, ``prune_ratios``, fine-tuning).
        out: the artifacts folder.
        teacher: a model whose response KD the pruned models' fine-tuning learns from.
        log: called with one line before each build.

    Yields:
        :class:`Candidate` objects, failed ones with ``error`` set.
    """
    from edgeopt.models import save_checkpoint

    samples, _ = data.samples(256, split=cfg.split)  # real held-out images for parity
    builders: list[tuple[str, Callable[[], Candidate]]] = []
    if "fp32 torch" in cfg.candidates:
        def fp32_torch() -> Candidate:
            ckpt = save_checkpoint(out / "model_fp32", model, lineage=lineage)
            return Candidate("fp32 torch", ckpt, model, "torch", list(lineage))
        builders.append(("fp32 torch", fp32_torch))
    if "fp32 onnx" in cfg.candidates:
        builders.append(("fp32 onnx", lambda: _onnx(model, data, cfg, out, lineage, "fp32 onnx", samples)))
    for backend, name in (("onnxruntime", "int8 onnxruntime"), ("torch", "int8 torch-x86")):
        if name in cfg.candidates:
            builders.append((name, lambda b=backend, n=name: _quant(model, b, data, out, lineage, n)))
    for name, build in builders:
        log(f"building {name}")
        yield _try(name, build)
    for ratio in cfg.prune_ratios or ():
        yield from _pruned(model, lineage, data, cfg, out, ratio, teacher, samples, log)


def _try(name: str, build: Callable[[], Candidate]) -> Candidate:
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - a backend error is the row's note, not the run's end
        return Candidate(name, error=one_line(exc))


def _pruned(model: Any, lineage: list[Any], data: Any, cfg: OptimizeConfig, out: Path, ratio: float,
            teacher: Any, samples: Any, log: Callable[[str], None]) -> Iterator[Candidate]:
    """``pruned structured N% onnx`` and (``prune_int8``) ``... + int8 onnxruntime``."""
    from edgeopt.prune import PruneConfig, prune
    from edgeopt.prune.jobs import save_pruned

    base = f"pruned structured {round(100 * ratio)}%"
    names = [f"{base} onnx"] + ([f"{base} + int8 onnxruntime"] if cfg.prune_int8 else [])
    p = PruneConfig(method="structured", ratio=ratio, finetune_epochs=cfg.finetune_epochs or 0,
                    finetune_lr=cfg.finetune_lr, finetune_max_steps_per_epoch=cfg.finetune_max_steps_per_epoch,
                    seed=cfg.seed)
    log(f"pruning: {base}" + (f" + {p.finetune_epochs} fine-tuning epoch(s)" if p.finetune_epochs else "")
        + (" with the teacher's KD" if teacher is not None else ""))
    try:
        res = prune(model, p, data, progress=False, teacher=teacher)
        if teacher is not None and (res.info or {}).get("recovery"):
            res.info["recovery"]["teacher_checkpoint"] = str(cfg.teacher)
        ckpt = save_pruned(res, out / _stem(base))
    except Exception as exc:  # noqa: BLE001 - the rows say it; the other candidates go on
        for n in names:
            yield Candidate(n, error=f"pruning failed: {one_line(exc)}")
        return
    pruned_lineage = list(getattr(res.model, "edgeopt_lineage", None) or lineage)
    info = {k: v for k, v in res.to_dict().items()
            if k in ("sparsity", "params_before", "params_after", "macs_before", "macs_after")}
    info["checkpoint"] = ckpt.name
    if (res.info or {}).get("recovery"):
        info["recovery"] = res.info["recovery"]
    log(f"building {names[0]}")
    c = _try(names[0], lambda: _onnx(res.model, data, cfg, out, pruned_lineage, names[0], samples))
    c.extra["pruning"] = info
    yield c
    if cfg.prune_int8:
        log(f"building {names[1]}")
        c = _try(names[1], lambda: _quant(res.model, "onnxruntime", data, out, pruned_lineage, names[1]))
        c.extra["pruning"] = info
        yield c
