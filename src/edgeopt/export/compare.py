"""Export one model to every runtime available here and measure each on its artifact.

:func:`compare_runtimes` is generic over the :data:`~edgeopt.export.EXPORTERS` registry:
every registered format (and every named config variant an Exporter declares, e.g. one
row per ONNX Runtime optimization level) becomes one row, so a newly registered format
shows up without changes here. Each row is measured the same way, in one process, one
after the other, with the same thread count and the same fixed input:

* the artifact is exported (no parity check inside the export, so a format that exports
  but cannot run here still gets its file and its size);
* parity against the eager model on the given real samples (thresholds of its precision);
* batch-1 latency (median = p50, p99) and throughput at ``throughput_batch``;
* bytes on disk of the file you would ship;
* ratios to the PyTorch eager baseline measured in the same run.

Row ``status`` says what happened: ``"ok"``; ``"skipped"`` (the format's dependency is
missing; ``reason`` holds the MissingDependencyError text); ``"exported, cannot run on this
OS"`` (e.g. Core ML on Linux: the file is written and sized, not timed); ``"failed"``
(export or parity raised; ``reason`` says why).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeopt.errors import (
    ArtifactError,
    ConfigError,
    EdgeoptError,
    ExportMismatchError,
    MissingDependencyError,
    UnsupportedModelError,
)

#: what a row's ``status`` can be
STATUSES = ("ok", "skipped", "exported, cannot run on this OS", "failed")


def _samples_of(data_or_samples: Any, n: int) -> Any:
    """Real samples from a DataModule (its test split), or the samples given."""
    if hasattr(data_or_samples, "samples") and hasattr(data_or_samples, "spec"):
        x, _ = data_or_samples.samples(n, split="test")
        return x
    from edgeopt.export.parity import _as_samples

    x = _as_samples(data_or_samples)
    if x.ndim != 4 or x.shape[0] == 0:
        raise ConfigError(f"compare_runtimes needs a DataModule or samples [N, C, H, W], got shape {list(x.shape)}")
    return x


def _row(name: str, fmt: str, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": name, "format": fmt, "runtime": None, "precision": None, "status": "ok", "reason": None,
        "path": None, "size_bytes": None, "p50_ms": None, "p99_ms": None, "throughput": None,
        "throughput_batch": None, "threads": None, "parity_passed": None, "parity": None,
        "speedup_vs_torch": None, "throughput_vs_torch": None, "latency": None,
    }
    row.update(fields)
    return row


def _time(row: dict[str, Any], runner: Any, spec: Any, *, threads: int, runs: int, warmup: int,
          throughput_batch: int) -> None:
    from edgeopt.evaluate import measure_latency, measure_throughput

    lat = measure_latency(runner, spec, batch_size=1, warmup=warmup, runs=runs, threads=threads)
    row.update(p50_ms=lat.median_ms, p99_ms=lat.p99_ms, threads=lat.threads, latency=lat.to_dict())
    try:
        tp = measure_throughput(runner, spec, batch_size=throughput_batch, runs=max(3, min(30, runs)),
                                threads=threads)
        row.update(throughput=tp.throughput, throughput_batch=throughput_batch)
    except ArtifactError as exc:  # e.g. a file exported with a fixed batch of 1
        row["reason"] = f"no throughput at batch {throughput_batch}: {exc.one_line()}"


def compare_runtimes(
    model: Any,
    data_or_samples: Any,
    out_dir: str | Path,
    *,
    formats: list[str] | None = None,
    threads: int = 1,
    runs: int = 100,
    warmup: int = 10,
    throughput_batch: int = 64,
    n_samples: int = 256,
    configs: dict[str, Any] | None = None,
    tolerance: Any = None,
) -> list[dict[str, Any]]:
    """Export ``model`` to every available format and measure each artifact in its runtime.

    Args:
        model: an ``nn.Module`` carrying a ModelSpec (``edgeopt.models.create_model``).
        data_or_samples: a DataModule (``n_samples`` images of its test split are used
            for parity) or normalised real images ``[N, C, H, W]`` / an ``(x, y)`` pair.
        out_dir: folder for the artifacts (``<row name><suffix>`` + sidecars).
        formats: export formats to try (default: every registered one,
            :func:`~edgeopt.export.list_formats`); each format's variants are included.
        threads: intra-op threads of every runner, torch eager included.
        runs: timed batch-1 runs per row (after ``warmup`` untimed ones).
        warmup: untimed runs before timing.
        throughput_batch: batch size of the throughput measurement.
        n_samples: parity samples taken from a DataModule.
        configs: per-format export config (a dict or config object) keyed by format
            name, e.g. ``{"onnx": {"dynamo": False}}``; a variant's fields are applied
            on top of its format's config.
        tolerance: parity tolerance for every row (``{"rtol": 1e-4, "atol": 1e-5}``
            overrides those criteria of each precision's defaults; see
            :func:`~edgeopt.export.verify_parity`); a format config dict's ``"parity"``
            key sets it for that format alone.

    Returns:
        One dict per row, torch eager first: ``name``, ``format``, ``runtime``,
        ``precision``, ``status``, ``reason``, ``path``, ``size_bytes``, ``p50_ms``,
        ``p99_ms``, ``throughput`` (images/s at ``throughput_batch``), ``threads``,
        ``parity_passed``, ``parity`` (the report dict), ``speedup_vs_torch`` (torch
        eager p50 / this p50; > 1 is faster), ``throughput_vs_torch`` (this / torch
        eager), ``latency`` (the full LatencyResult dict).

    Raises:
        ConfigError: an unknown format, a bad setting, samples of the wrong shape, or an
            ``out_dir`` that is (under) a file or not writable.

    Example:
        >>> import tempfile, torch
        >>> from edgeopt.data import get_dataset
        >>> from edgeopt.models import create_model
        >>> data = get_dataset("digits")
        >>> rows = compare_runtimes(create_model("simple_cnn", data.spec), data, tempfile.mkdtemp(),
        ...                         formats=["torchscript"], runs=5, throughput_batch=8)
        >>> [(r["name"], r["status"], r["parity_passed"]) for r in rows]
        [('torch', 'ok', None), ('torchscript', 'ok', True)]
    """
    from edgeopt.evaluate import measure_size
    from edgeopt.export._base import EXPORTERS
    from edgeopt.runtime import check_threads, get_runner
    from edgeopt.spec import get_spec

    spec = get_spec(model)
    threads = check_threads(threads)
    for name, value in (("runs", runs), ("throughput_batch", throughput_batch), ("n_samples", n_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"compare_runtimes {name}={value!r} must be an integer >= 1")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"compare_runtimes warmup={warmup!r} must be an integer >= 0")
    formats = list(EXPORTERS.names() if formats is None else formats)
    for fmt in formats:
        EXPORTERS.get(fmt)  # an unknown name fails before any work, listing the choices
    from edgeopt.models.weights import check_finite_weights

    check_finite_weights(model, "compare runtimes")  # NaN weights fail every parity check
    configs = dict(configs or {})
    from edgeopt._outputs import ensure_writable_dir

    out = ensure_writable_dir(out_dir, "out_dir")  # a file in the way fails before any export
    samples = _samples_of(data_or_samples, n_samples)
    out.mkdir(parents=True, exist_ok=True)
    timing = {"threads": threads, "runs": runs, "warmup": warmup, "throughput_batch": throughput_batch}

    was_training = getattr(model, "training", False)
    model.eval()
    rows: list[dict[str, Any]] = []
    try:
        base = _row("torch", "module", runtime="torch", precision=_precision(model), size_bytes=measure_size(model).bytes)
        _time(base, get_runner(model, "torch", threads=threads), spec, **timing)
        rows.append(base)

        for fmt in formats:
            exporter = EXPORTERS.get(fmt)
            reason = exporter.available() if exporter.available is not None else None
            variants = {fmt: {}}
            variants.update(exporter.variants() if exporter.variants is not None else {})
            for name, overrides in variants.items():
                if reason is not None:
                    rows.append(_row(name, fmt, status="skipped", reason=reason))
                    continue
                rows.append(_measure_one(model, name, exporter, configs.get(fmt), overrides, out, samples, timing,
                                         tolerance))
    finally:
        model.train(was_training)

    ref = rows[0]
    for r in rows[1:]:
        if r["p50_ms"] and ref["p50_ms"]:
            r["speedup_vs_torch"] = ref["p50_ms"] / r["p50_ms"]
        if r["throughput"] and ref["throughput"]:
            r["throughput_vs_torch"] = r["throughput"] / ref["throughput"]
    ref["speedup_vs_torch"] = 1.0
    ref["throughput_vs_torch"] = 1.0 if ref["throughput"] else None
    return rows


def _precision(model: Any) -> str:
    from edgeopt.export.onnx_export import _precision_of_model

    return _precision_of_model(model)


def _measure_one(model: Any, name: str, exporter: Any, base_cfg: Any, overrides: dict[str, Any], out: Path,
                 samples: Any, timing: dict[str, int], tolerance: Any = None) -> dict[str, Any]:
    """One row: export (format config + variant overrides), run, parity, time, size."""
    from edgeopt.evaluate import measure_size
    from edgeopt.export._base import _config_for, export_model, split_parity_config
    from edgeopt.export.parity import verify_parity
    from edgeopt.runtime import get_runner

    fmt = exporter.name
    row = _row(name, fmt)
    try:
        base_cfg, tolerance = split_parity_config(base_cfg, tolerance)
        cfg = _config_for(exporter, base_cfg)
        if overrides:
            cfg = cfg.replace(**overrides)
        # verify=False and no samples: the export writes the file even when this machine
        # cannot run it; parity is measured below on the real samples, once, by the runner.
        art = export_model(model, fmt, out / f"{name}{exporter.suffix}", cfg, verify=False).artifact
    except MissingDependencyError as exc:
        row.update(status="skipped", reason=exc.one_line())
        return row
    except EdgeoptError as exc:
        row.update(status="failed", reason=exc.one_line())
        return row
    row.update(path=str(art.path), precision=art.precision, runtime=art.default_runtime,
               size_bytes=measure_size(art).bytes)
    try:
        runner = get_runner(art, threads=timing["threads"])
    except EdgeoptError as exc:  # e.g. Core ML on Linux, or a runtime that is not installed
        row.update(status="exported, cannot run on this OS", reason=exc.one_line())
        return row
    try:
        rep = verify_parity(model, art, samples, tolerance, threads=timing["threads"])
        art.meta["parity"] = rep.to_dict()
        art.save_sidecar()
        row.update(parity_passed=rep.passed, parity={
            "max_abs_diff": rep.max_abs_diff, "max_rel_diff": rep.max_rel_diff,
            "allowed_abs_diff": rep.allowed_abs_diff, "thresholds": rep.thresholds,
            "cosine_similarity": rep.cosine_similarity, "top1_agreement": rep.top1_agreement,
            "n_samples": rep.n_samples, "summary": rep.summary(),
        })
        _time(row, runner, art.spec, **timing)
    except EdgeoptError as exc:
        row.update(status="failed", reason=exc.one_line())
    return row


def succeeded(row: dict[str, Any]) -> bool:
    """A format row that exported, ran here and passed parity against torch eager."""
    return row["name"] != "torch" and row["status"] == "ok" and row["parity_passed"] is True


def require_success(rows: list[dict[str, Any]], what: str = "this model") -> None:
    """Raise one line when no format succeeded (:func:`succeeded`); the rows say why each failed.

    ``edgeopt bench --compare`` prints its table first, then calls this: a comparison in
    which nothing but torch eager ran must not end with exit status 0.

    Raises:
        ExportMismatchError: some format ran but none matched torch eager.
        MissingDependencyError: every format was skipped for a missing dependency.
        UnsupportedModelError: otherwise (export failed, or nothing could run here).

    Example:
        >>> require_success([_row("torch", "module"), _row("onnx", "onnx", parity_passed=True)])
    """
    others = [r for r in rows if r["name"] != "torch"]
    if any(succeeded(r) for r in others):
        return

    def why(r: dict[str, Any]) -> str:
        if r["status"] == "ok" and r["parity_passed"] is False:
            par = r.get("parity") or {}
            return (f"{r['name']}: parity FAIL (max abs diff {par.get('max_abs_diff', float('nan')):.3g}, "
                    f"top-1 agreement {100 * par.get('top1_agreement', float('nan')):.1f}%)")
        return f"{r['name']}: {r['status']}" + (f" ({_brief_text(r['reason'], 90)})" if r["reason"] else "")

    shown = "; ".join(why(r) for r in others[:4]) + (f"; and {len(others) - 4} more" if len(others) > 4 else "")
    text = f"no format exported, ran here and matched torch eager for {what}: {shown or 'no format tried'}"
    if any((r["status"] == "ok" and r["parity_passed"] is False)
           or str(r["reason"] or "").startswith("ExportMismatchError") for r in others):
        raise ExportMismatchError(text)
    if others and all(r["status"] == "skipped" for r in others):
        raise MissingDependencyError(text)
    raise UnsupportedModelError(text)


def _brief_text(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def compare_path(
    checkpoint: str | Path, out_dir: str | Path | None = None, data: Any = None, *,
    resize: bool = False, **kwargs: Any
) -> list[dict[str, Any]]:
    """:func:`compare_runtimes` for an edgeopt checkpoint file, with parity on its dataset.

    Args:
        checkpoint: ``NAME.safetensors`` written by :func:`edgeopt.models.save_checkpoint`.
        out_dir: folder for the artifacts; None: a temporary folder, removed afterwards
            (the rows then keep the paths of files that no longer exist).
        data: a ``DataConfig`` (None: the dataset the checkpoint's ModelSpec names).
        **kwargs: passed to :func:`compare_runtimes` (``formats``, ``threads``, ``runs``, ...).

    Returns:
        The rows of :func:`compare_runtimes`.

    Example:
        >>> rows = compare_path("runs/best.safetensors", runs=20)  # doctest: +SKIP
    """
    import tempfile

    from edgeopt.models import load_checkpoint
    from edgeopt.jobs import load_data_for

    if out_dir is not None:
        from edgeopt._outputs import ensure_writable_dir

        ensure_writable_dir(out_dir, "out_dir")  # before the checkpoint and data are read
    model, _ = load_checkpoint(checkpoint)
    dm = load_data_for(checkpoint, data, resize=resize)  # parity samples with the model's own spec
    if out_dir is not None:
        return compare_runtimes(model, dm, out_dir, **kwargs)
    with tempfile.TemporaryDirectory(prefix="edgeopt-compare-") as tmp:
        return compare_runtimes(model, dm, tmp, **kwargs)
