"""What ``edgeopt prune`` and ``edgeopt scan --prune`` run, starting from a checkpoint file.

The CLI only builds a :class:`PruneConfig` and calls these (DESIGN habit 7): load the
checkpoint, find its dataset (with the checkpoint's own preprocessing), prune, save the
pruned model as a checkpoint (safetensors + sidecar; a structured model's sidecar records
its new shapes), write the sparse file of an unstructured model, draw the figures, and
measure parent and pruned side by side on the test split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeopt._outputs import ensure_writable_dir, ensure_writable_file
from edgeopt.prune.config import PruneConfig


def _stem(p: Path) -> str:
    return p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.stem


def default_out(checkpoint: str | Path, cfg: PruneConfig) -> Path:
    """``NAME_pruned_<method><percent>.safetensors`` beside the checkpoint."""
    p = Path(checkpoint)
    target = "" if cfg.target == "ratio" else f"_{cfg.target}"
    return p.with_name(f"{_stem(p)}_pruned_{cfg.method}{round(100 * cfg.ratio)}{target}.safetensors")


def lineage_step(result: Any) -> dict[str, Any]:
    """The ``prune`` entry appended to the model's lineage."""
    cfg = result.config
    step = {"step": "prune", "method": cfg.method, "ratio": cfg.ratio, "scope": cfg.scope,
            "target": cfg.target, "sparsity": round(result.sparsity, 6),
            "params_before": result.params_before, "params_after": result.params_after}
    if cfg.method == "structured":
        step["importance"] = cfg.importance
    if result.macs_before and result.macs_after is not None:
        step["macs_ratio"] = round(result.macs_after / result.macs_before, 6)
    if cfg.finetune_epochs:
        step["finetune_epochs"] = cfg.finetune_epochs
    rec = (result.info or {}).get("recovery")
    if rec:  # recovered with a teacher: which one, and how
        step["recovery"] = {k: rec[k] for k in ("kd", "teacher", "teacher_checkpoint", "temperature", "alpha")
                            if k in rec}
    return step


def save_pruned(result: Any, out: str | Path, *, metrics: dict[str, Any] | None = None) -> Path:
    """Save a :class:`PruneResult`'s model as an edgeopt checkpoint (no pickle).

    The lineage gains a ``prune`` step; the sidecar's ``extra.pruning`` holds the summary
    (per-layer table, protected layers, history); a structured model's record of its new
    shapes goes into the sidecar too (``load_checkpoint`` re-applies it).
    """
    from edgeopt.models import save_checkpoint

    model = result.model
    lineage = list(getattr(model, "edgeopt_lineage", []) or []) + [lineage_step(result)]
    model.edgeopt_lineage = lineage
    summary = result.to_dict()
    return save_checkpoint(out, model, lineage=lineage, metrics=metrics,
                           history=summary.get("history") or [], extra={"pruning": summary})


def prune_checkpoint(
    checkpoint: str | Path, config: PruneConfig, out: str | Path | None = None, data: Any = None,
    *, evaluate: bool = True, sparse: bool = True, figures: bool = True, threads: int = 1,
    latency_runs: int = 100, progress: bool = True, resize: bool = False,
    teacher: str | Path | None = None,
) -> dict[str, Any]:
    """Prune a checkpoint, save the result, and (``evaluate``) measure parent and pruned.

    Args:
        checkpoint: an edgeopt checkpoint (``.safetensors`` + ``.json``).
        config: the :class:`PruneConfig`.
        out: the pruned checkpoint (default: :func:`default_out`).
        data: a ``DataConfig``; None: the dataset the checkpoint records, with the
            checkpoint's own preprocessing (edgeopt.jobs.load_data_for).
        evaluate: measure the parent and the pruned model (torch eager) on the test split.
        sparse: unstructured/obs: also write the sparse checkpoint (bitmask + packed
            values, fp32) beside it and report dense, sparse and gzip'd bytes.
        figures: write the per-layer bar chart and weight histograms beside the output.
        threads: inference threads for the measurements.
        resize: resize data of another image size to the checkpoint's.
        teacher: recover with a teacher: an edgeopt checkpoint with the same ModelSpec
            (typically ``checkpoint`` itself) whose response KD every fine-tuning trains on
            (``finetune_kd_temperature``, ``finetune_kd_alpha``); needs ``finetune_epochs``.

    Returns:
        ``{"checkpoint", "pruning": PruneResult.to_dict(), "sizes", "figures", "variants",
        "warnings"}``.

    Raises:
        ConfigError: a teacher without ``finetune_epochs``, or whose ModelSpec differs.
        ModelLoadError: the checkpoint or the teacher cannot be loaded.
    """
    from edgeopt.jobs import load_data_for
    from edgeopt.models import load_checkpoint
    from edgeopt.prune._base import prune
    from edgeopt.runtime import check_threads

    from edgeopt.errors import ConfigError

    threads = check_threads(threads)
    if teacher is not None and config.finetune_epochs < 1:  # before any work
        raise ConfigError("--recover-with-teacher fine-tunes the pruned model with the teacher: "
                          "give --finetune-epochs N (PruneConfig.finetune_epochs >= 1)")
    out_path = Path(out) if out is not None else default_out(checkpoint, config)
    if not out_path.name.endswith(".safetensors"):
        out_path = out_path.with_name(out_path.name + ".safetensors")
    ensure_writable_file(out_path, "output checkpoint")  # before any work
    cycles_dir = out_path.with_name(_stem(out_path) + "_cycles") if config.schedule == "iterative" else None
    if cycles_dir is not None:
        ensure_writable_dir(cycles_dir, "cycle checkpoints folder")
    model, _ = load_checkpoint(checkpoint)
    teacher_model = None
    if teacher is not None:  # weights through safetensors, never pickle
        from edgeopt.prune.recovery import check_same_spec

        teacher_model, _ = load_checkpoint(teacher)
        check_same_spec(model, teacher_model)  # before the data loads
    dm = load_data_for(checkpoint, data, resize=resize)
    result = prune(model, config, dm, progress=progress, out_dir=cycles_dir, teacher=teacher_model)
    if teacher is not None:
        result.info["recovery"]["teacher_checkpoint"] = str(teacher)
    saved = save_pruned(result, out_path)
    summary: dict[str, Any] = {"checkpoint": str(saved), "pruning": result.to_dict(), "sizes": {},
                               "figures": [], "variants": [], "warnings": list(result.warnings)}
    if sparse and config.method != "structured":
        summary["sizes"] = write_sparse_forms(result.model, saved)
    if figures:
        from edgeopt.prune.plots import prune_figures

        summary["figures"] = prune_figures(model, result, saved.parent, _stem(saved))
    if evaluate:
        from edgeopt.evaluate import evaluate_variant

        common = {"threads": threads, "latency_runs": latency_runs, "memory": False, "progress": progress}
        parent = evaluate_variant("fp32 torch", model, dm, model=model, **common)
        name = f"pruned {config.method} {round(100 * config.ratio)}%"
        pruned = evaluate_variant(name, saved, dm, model=result.model, runtime="torch", **common)
        pruned["pruning"] = {k: summary["pruning"][k] for k in
                             ("sparsity", "params_before", "params_after", "macs_before", "macs_after")}
        warn = slower_warning(parent, pruned, config.method)
        if warn:
            pruned.setdefault("warnings", []).append(warn)
            summary["warnings"].append(warn)
        summary["variants"] = [parent, pruned]
    return summary


def slower_warning(parent: dict[str, Any], pruned: dict[str, Any], method: str) -> str | None:
    """A one-line warning when a structured variant measured slower than its parent."""
    if method != "structured":
        return None
    p = ((parent.get("latency") or {}).get("batch1") or {}).get("median_ms")
    q = ((pruned.get("latency") or {}).get("batch1") or {}).get("median_ms")
    if p and q and q > p:
        return (f"the structured-pruned model measured slower than its parent ({q:.3f} vs {p:.3f} ms "
                f"p50, batch 1): odd channel counts can defeat fast kernels; try --round-to 8 or 16")
    return None


def write_sparse_forms(model: Any, dense_path: Path) -> dict[str, Any]:
    """Write ``NAME.sparse.safetensors`` (fp32) and ``NAME.sparse-int8.safetensors`` beside
    the dense checkpoint; return dense, sparse and gzip'd bytes of each."""
    from edgeopt.prune.sparse_storage import save_sparse, size_report

    stem = _stem(dense_path)
    fp32 = save_sparse(dense_path.with_name(f"{stem}.sparse.safetensors"), model, values="fp32")
    int8 = save_sparse(dense_path.with_name(f"{stem}.sparse-int8.safetensors"), model, values="int8")
    return size_report([dense_path, fp32, int8])


def scan_checkpoint(checkpoint: str | Path, config: PruneConfig, out_dir: str | Path | None = None,
                    data: Any = None, *, sparsities: tuple[float, ...] = (0.5, 0.7, 0.9),
                    samples: int = 512, threshold: float = 1.0, progress: bool = True,
                    resize: bool = False) -> dict[str, Any]:
    """Run :func:`~edgeopt.prune.sensitivity.scan_sensitivity` on a checkpoint's model."""
    from edgeopt.jobs import load_data_for
    from edgeopt.models import load_checkpoint
    from edgeopt.prune.sensitivity import scan_sensitivity

    p = Path(checkpoint)
    target = Path(out_dir) if out_dir is not None else p.with_name(_stem(p) + "_prune_scan")
    ensure_writable_dir(target, "out_dir")  # before any work
    model, _ = load_checkpoint(checkpoint)
    dm = load_data_for(checkpoint, data, resize=resize)
    return scan_sensitivity(model, dm, config, target, sparsities=sparsities, samples=samples,
                            threshold=threshold, progress=progress).to_dict()
