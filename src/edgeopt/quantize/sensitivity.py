"""Per-layer quantization sensitivity and automatic mixed precision.

:func:`scan_sensitivity` calibrates once, then measures in the fake-quant simulation
(:class:`~edgeopt.quantize.simulate.QuantSim`, one forward pass per configuration) for
every Conv/Linear layer:

* ``drop_alone``: accuracy points lost when only this layer is int8;
* ``drop_all_but``: points lost when every layer *except* this one is int8;
* ``recovery``: how much keeping only this layer float wins back
  (``drop_all_int8 - drop_all_but``), the ranking used by mixed precision;
* ``sqnr_db``: output SQNR (logits vs float) when only this layer is int8.

:func:`auto_mixed_precision` (``QuantConfig.max_drop``) keeps the ``k`` most sensitive
layers float and searches the smallest ``k`` whose **real backend artifact** is within
``max_drop`` points of fp32 on the validation split (a bisection over ``k``, one backend
build per step; the simulation only ranks). If even the full int8 model is within budget,
nothing stays float; if no ``k`` short of all layers meets it, every layer stays float and
the result says so. What the kept layers cost is measured: size and batch-1 latency of
the chosen artifact against the all-int8 one.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeopt._io import write_json_atomic, write_with_atomic
from edgeopt._outputs import ensure_writable_dir
from edgeopt.quantize.config import QuantConfig


@dataclasses.dataclass
class SensitivityReport:
    """The scan's rows (most sensitive first) and its reference accuracies (fractions)."""

    rows: list[dict[str, Any]]
    float_acc: float
    int8_acc: float
    samples: int
    split: str
    files: dict[str, str] = dataclasses.field(default_factory=dict)

    def ranking(self) -> list[str]:
        """Layers ordered by how much keeping them float recovers (then by low SQNR)."""
        return [r["layer"] for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        return {"float_acc": self.float_acc, "int8_acc": self.int8_acc, "samples": self.samples,
                "split": self.split, "rows": self.rows, "files": self.files}


def _eval_split(data: Any) -> str:
    return "val" if len(data.split("val")) else "test"


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + 256]) for i in range(0, len(x), 256)])
    # float64, as _artifact_accuracy's numpy mean: a float32 mean differs in the 8th digit
    # and made an exact tie (drop 0.0) fail a budget of max_drop=0
    return float((logits.argmax(1) == y).double().mean()), logits


def scan_sensitivity(
    model: nn.Module, data: Any, config: QuantConfig | None = None, out_dir: str | Path | None = None,
    *, samples: int = 512, progress: bool = True,
) -> SensitivityReport:
    """Measure each layer's int8 sensitivity in simulation; write CSV, JSON and a plot.

    Args:
        model: the float model (carrying its ModelSpec); not modified.
        data: the DataModule (calibration from train, accuracy on val, else test).
        config: calibration settings (``calibration``, ``percentile``, ``per_channel``,
            ``symmetric_activations``, ``calibration_samples``); None: defaults.
        out_dir: where ``sensitivity.csv``, ``sensitivity.json`` and ``sensitivity.png``
            go; None: nothing is written.
        samples: held-out images the accuracies are measured on.
        progress: a progress bar over the layers.

    Returns:
        A :class:`SensitivityReport`, rows sorted most sensitive first.

    Raises:
        ConfigError: ``out_dir`` is (under) a file or not writable, before any work.

    Example:
        >>> from edgeopt.data import get_dataset
        >>> from edgeopt.models import create_model
        >>> data = get_dataset("digits")
        >>> rep = scan_sensitivity(create_model("simple_cnn", data.spec), data, progress=False)
        >>> len(rep.rows), sorted(rep.rows[0])[:3]
        (5, ['drop_all_but', 'drop_alone', 'kind'])
    """
    from edgeopt.quantize import math as qm
    from edgeopt.quantize.layers import check_finite, fold_batchnorm, quantizable_layers
    from edgeopt.quantize.simulate import QuantSim, calibrate

    cfg = config or QuantConfig()
    if out_dir is not None:
        ensure_writable_dir(out_dir, "out_dir")  # before the scan, not after it
    folded = fold_batchnorm(model)
    layers = quantizable_layers(folded)
    calib = data.calibration(cfg.calibration_samples, seed=cfg.seed)
    check_finite(folded, calib)
    qparams = calibrate(folded, calib, layers, method=cfg.calibration, percentile=cfg.percentile,
                        symmetric_activations=cfg.symmetric_activations, per_channel=cfg.per_channel)
    split = _eval_split(data)
    x, y = data.samples(samples, split=split, seed=cfg.seed + 1)
    sim = QuantSim(folded, qparams, enabled=())
    float_acc, float_logits = _accuracy(sim, x, y)
    sim.set_enabled(layers)
    int8_acc, _ = _accuracy(sim, x, y)
    mods = dict(folded.named_modules())
    rows: list[dict[str, Any]] = []
    it = layers
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("sensitivity scan", total=len(layers))
    try:
        for name in it:
            sim.set_enabled([name])
            acc_alone, logits = _accuracy(sim, x, y)
            sim.set_enabled([n for n in layers if n != name])
            acc_all_but, _ = _accuracy(sim, x, y)
            drop_all = 100 * (float_acc - int8_acc)
            drop_all_but = 100 * (float_acc - acc_all_but)
            rows.append({
                "layer": name, "kind": type(mods[name]).__name__,
                "params": int(sum(p.numel() for p in mods[name].parameters(recurse=False))),
                "drop_alone": round(100 * (float_acc - acc_alone), 3),
                "drop_all_but": round(drop_all_but, 3),
                "recovery": round(drop_all - drop_all_but, 3),
                "sqnr_db": round(qm.sqnr(float_logits, logits), 2),
            })
            if bar is not None:
                bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    rows.sort(key=lambda r: (-r["recovery"], -r["drop_alone"], r["sqnr_db"]))
    report = SensitivityReport(rows, float_acc, int8_acc, len(x), split)
    if out_dir is not None:
        report.files = write_sensitivity(report, Path(out_dir))
    return report


def write_sensitivity(report: SensitivityReport, out_dir: Path) -> dict[str, str]:
    """Write ``sensitivity.csv``, ``sensitivity.json`` and ``sensitivity.png`` (atomically)."""
    from edgeopt.quantize.histograms import plot_sensitivity

    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    fields = ["layer", "kind", "params", "drop_alone", "drop_all_but", "recovery", "sqnr_db"]
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(report.rows)
    write_with_atomic(out_dir / "sensitivity.csv", lambda p: p.write_text(buf.getvalue()))
    files = {"csv": str(out_dir / "sensitivity.csv"), "json": str(out_dir / "sensitivity.json"),
             "png": str(out_dir / "sensitivity.png")}
    write_json_atomic(out_dir / "sensitivity.json", report.to_dict() | {"files": files})
    plot_sensitivity(report.rows, out_dir / "sensitivity.png")
    return files


def _artifact_accuracy(artifact: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    import numpy as np

    from edgeopt.runtime import get_runner

    r = get_runner(artifact, threads=1)
    pred = np.concatenate([r.predict(x[i:i + 64].numpy()) for i in range(0, len(x), 64)]).argmax(1)
    return float((pred == y.numpy()).mean())


def _latency_ms(artifact: Any, runs: int = 100) -> float:
    from edgeopt.evaluate.latency import measure_latency
    from edgeopt.runtime import get_runner

    res = measure_latency(get_runner(artifact, threads=1), artifact.spec, batch_size=1, runs=runs, warmup=10)
    return float(res.median_ms)


def auto_mixed_precision(model: nn.Module, cfg: QuantConfig, data: Any, out: Path, *, verify: bool = True,
                         progress: bool = True) -> Any:
    """Keep the most sensitive layers float until the artifact is within ``cfg.max_drop``.

    Returns the :class:`~edgeopt.quantize.QuantResult` of the chosen artifact; its
    ``meta["mixed_precision"]`` lists the layers kept float, every configuration tried
    (layers kept float, validation accuracy, drop, file size) and the cost of the kept
    layers in size and batch-1 latency against the all-int8 artifact.
    """
    from edgeopt.quantize._base import QuantResult, _log, quantize
    from edgeopt.quantize.layers import quantizable_layers

    t0 = time.perf_counter()
    budget = float(cfg.max_drop)  # type: ignore[arg-type]
    work = out.parent / f"{out.stem}.mixed"
    report = scan_sensitivity(model, data, cfg, work, samples=cfg.verify_samples, progress=progress)
    ranking = [n for n in report.ranking()]
    forced = [n for n in quantizable_layers(model) if n in set(_resolve(model, cfg.keep_float))]
    ranking = [n for n in ranking if n not in forced]
    split = report.split
    x, y = data.samples(cfg.verify_samples, split=split, seed=cfg.seed + 1)
    from edgeopt.quantize.layers import fold_batchnorm

    float_acc, _ = _accuracy(fold_batchnorm(model), x, y)
    tried: dict[int, dict[str, Any]] = {}
    results: dict[int, Any] = {}

    def attempt(k: int) -> bool:
        kept = forced + ranking[:k]
        path = work / f"k{k:03d}{out.suffix}"
        res = quantize(model, cfg.replace(max_drop=None, keep_float=tuple(kept)), data, path,
                       verify=False, progress=False)
        acc = _artifact_accuracy(res.artifact, x, y)
        drop = 100 * (float_acc - acc)
        tried[k] = {"kept_float": len(kept), "val_acc": round(acc, 5), "drop": round(drop, 3),
                    "size_bytes": res.artifact.size_bytes}
        results[k] = res
        _log(progress, f"mixed precision: {len(kept)} layer(s) float -> val accuracy {100 * acc:.2f} % "
                       f"(drop {drop:.2f} points, budget {budget})")
        return drop <= budget

    n = len(ranking)
    if attempt(0):
        best = 0
    else:
        lo, hi = 0, n  # attempt(lo) fails; k = n (everything float) meets any budget >= 0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if attempt(mid):
                hi = mid
            else:
                lo = mid
        best = hi
    all_float = best >= n
    if all_float:
        _log(progress, "mixed precision: no int8 configuration meets the budget; every layer stays float")
        final = _all_float(model, cfg, data, out, verify=verify)
    else:
        final = quantize(model, cfg.replace(max_drop=None, keep_float=tuple(forced + ranking[:best])), data, out,
                         verify=verify, progress=progress)
    kept = list(final.float_layers) if not all_float else quantizable_layers(model)
    cost: dict[str, Any] = {}
    base = results.get(0)
    if base is not None:
        cost["size_bytes_all_int8"] = base.artifact.size_bytes
        cost["size_bytes_chosen"] = final.artifact.size_bytes
        cost["size_ratio"] = round(final.artifact.size_bytes / max(1, base.artifact.size_bytes), 4)
        try:
            a, b = _latency_ms(base.artifact), _latency_ms(final.artifact)
            cost.update({"latency_ms_all_int8": round(a, 4), "latency_ms_chosen": round(b, 4),
                         "latency_ratio": round(b / a, 4)})
        except Exception as exc:  # noqa: BLE001 - the cost is informative, the artifact is done
            cost["latency_error"] = f"{type(exc).__name__}: {exc}"
    mp = {
        "max_drop": budget, "split": split, "samples": len(x), "float_acc": round(float_acc, 5),
        "kept_float": kept, "all_float": all_float,
        "tried": [{"k": k, **v} for k, v in sorted(tried.items())], "cost": cost,
        "sensitivity": report.files,
    }
    final.artifact.meta.setdefault("quantization", {})["mixed_precision"] = mp
    final.artifact.save_sidecar()
    meta = dict(final.meta)
    meta["mixed_precision"] = mp
    return QuantResult(final.artifact, final.reference, cfg, kept, final.warnings, final.agreement,
                       final.qparams, time.perf_counter() - t0, meta)


def _resolve(model: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    from edgeopt.quantize._base import resolve_keep_float

    return resolve_keep_float(model, patterns)


def _all_float(model: nn.Module, cfg: QuantConfig, data: Any, out: Path, *, verify: bool) -> Any:
    """The budget excludes every int8 layer: ship the float model in the backend's format."""
    from edgeopt.quantize._base import QuantResult

    fmt = {"onnxruntime": "onnx", "torch": "torchscript", "litert": "tflite"}[cfg.backend]
    from edgeopt.export import export_model

    samples = data.samples(64, split=_eval_split(data))[0]
    exp = export_model(model, fmt, out, samples=samples, verify=verify)
    exp.artifact.meta["quantization"] = {"method": cfg.method, "backend": cfg.backend, "all_float": True}
    exp.artifact.save_sidecar()
    return QuantResult(exp.artifact, model, cfg, [], ["no int8 configuration met max_drop; the artifact is float"],
                       None, {}, 0.0, {})
