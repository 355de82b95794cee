"""What ``edgeopt quantize`` and ``edgeopt scan --quant`` run, starting from a checkpoint file.

The CLI only builds a :class:`QuantConfig` and calls these (DESIGN habit 7), so a script
gets the same behaviour: load the checkpoint, find its dataset, quantize, draw the
weight/activation histograms with the chosen ranges, and measure fp32 and int8 side by
side on the test split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeopt._outputs import ensure_writable_dir, ensure_writable_file
from edgeopt.quantize.config import QuantConfig


def default_out(checkpoint: str | Path, cfg: QuantConfig) -> Path:
    """``NAME_int8_<method>_<backend>`` beside the checkpoint (the suffix comes from the backend)."""
    p = Path(checkpoint)
    stem = p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.stem
    engine = f"_{cfg.engine}" if cfg.backend == "torch" else ""
    return p.with_name(f"{stem}_int8_{cfg.method}_{cfg.backend}{engine}")


def write_histograms(model: Any, result: Any, data: Any, out_dir: Path, stem: str,
                     max_layers: int = 12) -> list[dict[str, str]]:
    """Weight and activation histograms of the quantized layers, with their int8 ranges.

    Returns the figure entries for a results file (``{"title", "path", "caption"}``).
    """
    from edgeopt.quantize.histograms import (
        collect_activations,
        plot_activation_histograms,
        plot_weight_histograms,
    )
    from edgeopt.quantize.layers import fold_batchnorm

    qp = {k: {kk: vv for kk, vv in v.items() if not (kk == "input" and ("scale" not in vv))}
          for k, v in (result.qparams or {}).items()}
    folded = fold_batchnorm(model)
    names = {n for n, _ in folded.named_modules()}
    layers = [n for n in qp if n in names][:max_layers]
    if not layers:
        return []
    figs = []
    w = plot_weight_histograms(folded, layers, qp, out_dir / f"{stem}_weights.png", max_layers=max_layers)
    figs.append({"title": f"{stem}: weights, float vs int8", "path": w.name,
                 "caption": "Float weight histogram, the int8 values it becomes, and the representable range."})
    with_input = [n for n in layers if "input" in qp[n]]
    if with_input:
        acts = collect_activations(folded, data.calibration(256), with_input)
        a = plot_activation_histograms(acts, qp, out_dir / f"{stem}_activations.png", max_layers=max_layers)
        figs.append({"title": f"{stem}: layer inputs and their int8 ranges", "path": a.name,
                     "caption": "Activation histogram on calibration images; lines mark the range chosen by calibration."})
    return figs


def quantize_checkpoint(
    checkpoint: str | Path, config: QuantConfig, out: str | Path | None = None, data: Any = None,
    *, evaluate: bool = True, histograms: bool = True, threads: int = 1, latency_runs: int = 100,
    progress: bool = True, resize: bool = False,
) -> dict[str, Any]:
    """Quantize a checkpoint; return a summary with the fp32 and int8 rows when ``evaluate``.

    Args:
        checkpoint: an edgeopt checkpoint (``.safetensors`` + ``.json``).
        config: the :class:`QuantConfig`.
        out: the artifact path; None: :func:`default_out`.
        data: a ``DataConfig``; None: the dataset the checkpoint records. Images are fed
            with the checkpoint's own preprocessing (edgeopt.jobs.load_data_for).
        evaluate: measure fp32 (torch eager) and the int8 artifact on the test split.
        histograms: write weight and activation histogram PNGs beside the artifact.
        threads: inference threads for the measurements.
        resize: resize data of another image size to the checkpoint's.

    Returns:
        ``{"artifact", "quantization": QuantResult.to_dict(), "figures", "variants"}``.
    """
    from edgeopt.jobs import load_data_for
    from edgeopt.models import load_checkpoint
    from edgeopt.quantize._base import quantize
    from edgeopt.runtime import check_threads

    threads = check_threads(threads)  # [1, MAX_THREADS], before any work (0 was accepted)
    out_path = Path(out) if out is not None else default_out(checkpoint, config)
    ensure_writable_file(out_path, "output file", allow_dir=True)  # before any work (the suffix comes later)
    model, _ = load_checkpoint(checkpoint)
    dm = load_data_for(checkpoint, data, resize=resize)  # calibration with the model's own spec
    result = quantize(model, config, dm, out_path, progress=progress)
    summary: dict[str, Any] = {"artifact": str(result.artifact.path), "quantization": result.to_dict(),
                               "figures": [], "variants": []}
    if histograms and result.qparams:
        summary["figures"] = write_histograms(model, result, dm, result.artifact.path.parent,
                                              result.artifact.path.stem)
    if evaluate:
        from edgeopt.evaluate import evaluate_variant

        common = {"threads": threads, "latency_runs": latency_runs, "memory": False, "progress": progress}
        fp32 = evaluate_variant("fp32 torch", model, dm, model=model, **common)
        q = evaluate_variant(f"int8 {config.method} {config.backend}", result.artifact, dm, model=model, **common)
        summary["variants"] = [fp32, q]
    return summary


def scan_checkpoint(checkpoint: str | Path, config: QuantConfig, out_dir: str | Path | None = None,
                    data: Any = None, *, samples: int = 512, progress: bool = True,
                    resize: bool = False) -> dict[str, Any]:
    """Run :func:`~edgeopt.quantize.sensitivity.scan_sensitivity` on a checkpoint's model."""
    from edgeopt.jobs import load_data_for
    from edgeopt.models import load_checkpoint
    from edgeopt.quantize.sensitivity import scan_sensitivity

    p = Path(checkpoint)
    target = Path(out_dir) if out_dir is not None else p.with_name(p.name.split(".")[0] + "_quant_scan")
    ensure_writable_dir(target, "out_dir")  # before any work
    model, _ = load_checkpoint(checkpoint)
    dm = load_data_for(checkpoint, data, resize=resize)
    return scan_sensitivity(model, dm, config, target, samples=samples, progress=progress).to_dict()
