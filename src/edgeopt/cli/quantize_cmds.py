"""``edgeopt quantize`` and ``edgeopt scan``: int8 for a real runtime, per-layer sensitivity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeopt.cli._common import config_from, dump_config, emit_json, print_table
from edgeopt.cli.app import (
    ConfigOpt,
    DataOpt,
    DataRootOpt,
    DumpOpt,
    JsonOpt,
    ResizeOpt,
    ThreadsOpt,
    TrustOpt,
    _show_variants,
    _target_data,
    _trust,
    app,
)


# ------------------------------------------------------------------------------ quantize
def _quant_config(config, **flags):
    from edgeopt.quantize import QuantConfig

    return config_from(QuantConfig, config, **flags)


@app.command()
def quantize(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint written by edgeopt (.safetensors + .json).")],
    method: Annotated[Optional[str], typer.Option(help="static (calibrated post-training int8), dynamic (Linear/LSTM weights; activations at run time) or qat (fake-quant fine-tuning).")] = None,
    backend: Annotated[Optional[str], typer.Option(help="onnxruntime (QDQ ONNX, default), torch (PyTorch int8 kernels) or litert (int8 .tflite).")] = None,
    engine: Annotated[Optional[str], typer.Option(help="torch backend: x86, fbgemm, qnnpack (torch.ao FX -> TorchScript) or pt2e-x86 (torchao PT2E -> .pt2).")] = None,
    per_channel: Annotated[Optional[bool], typer.Option("--per-channel/--per-tensor", help="One weight scale per output channel (default) or per tensor.")] = None,
    symmetric_activations: Annotated[Optional[bool], typer.Option("--symmetric-activations/--asymmetric-activations", help="int8 activations with zero point 0, or uint8 with a free zero point (default).")] = None,
    calibration: Annotated[Optional[str], typer.Option(help="Activation range method: minmax, percentile or entropy.")] = None,
    percentile: Annotated[Optional[float], typer.Option(help="Percentile kept by --calibration percentile (e.g. 99.999).")] = None,
    calibration_samples: Annotated[Optional[int], typer.Option(help="Training images used for calibration (default 512).")] = None,
    keep_float: Annotated[Optional[list[str]], typer.Option("--keep-float", help="Layer name or pattern to leave in float (repeatable): features.0.*, re:.*classifier.*")] = None,
    max_drop: Annotated[Optional[float], typer.Option(help="Automatic mixed precision: keep the most sensitive layers float until the int8 model is within this many accuracy points of fp32 (validation split).")] = None,
    accuracy_check: Annotated[Optional[bool], typer.Option("--accuracy-check/--no-accuracy-check", help="Compare int8 and fp32 top-1 on the held-out verification images and warn when int8 loses more than --accuracy-margin (default: on).")] = None,
    accuracy_margin: Annotated[Optional[float], typer.Option(help="Accuracy points int8 may lose on the held-out check before a warning (default 1.0).")] = None,
    qat_epochs: Annotated[Optional[int], typer.Option(help="QAT fine-tuning epochs.")] = None,
    qat_lr: Annotated[Optional[float], typer.Option(help="QAT peak learning rate.")] = None,
    qat_batch_size: Annotated[Optional[int], typer.Option(help="QAT images per step.")] = None,
    qat_max_steps: Annotated[Optional[int], typer.Option("--qat-max-steps", help="Cap QAT steps per epoch (quick runs).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Artifact to write (default: NAME_int8_<method>_<backend> beside the checkpoint).")] = None,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    evaluate: Annotated[bool, typer.Option("--eval/--no-eval", help="Measure fp32 and int8 side by side on the test split.")] = True,
    histograms: Annotated[bool, typer.Option("--histograms/--no-histograms", help="Write weight/activation histogram PNGs with the chosen ranges.")] = True,
    threads: ThreadsOpt = 1,
    resize: ResizeOpt = False,
    trust_model_code: TrustOpt = False,
    config: ConfigOpt = None,
    dump: DumpOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Quantize a checkpoint to int8 for a real int8 runtime, check it, and measure it.

    The artifact is compared with its fake-quant PyTorch reference (top-1 agreement on
    held-out images), layers left float are listed, and with --eval accuracy, latency and
    size are measured on the artifact itself next to fp32.

    Example: edgeopt quantize runs/demo/baseline.safetensors --calibration entropy --max-drop 0.5
    """
    from edgeopt.quantize.jobs import quantize_checkpoint

    _trust(trust_model_code)
    cfg = _quant_config(
        config, method=method, backend=backend, engine=engine, per_channel=per_channel,
        symmetric_activations=symmetric_activations, calibration=calibration, percentile=percentile,
        calibration_samples=calibration_samples, keep_float=tuple(keep_float) if keep_float else None,
        max_drop=max_drop, qat_epochs=qat_epochs, qat_lr=qat_lr, qat_batch_size=qat_batch_size,
        qat_max_steps_per_epoch=qat_max_steps, accuracy_check=accuracy_check, accuracy_margin=accuracy_margin,
    )
    if dump:
        dump_config(cfg)
        return
    dcfg = _target_data(data, data_root)
    summary = quantize_checkpoint(checkpoint, cfg, out, dcfg, evaluate=evaluate, histograms=histograms,
                                  threads=threads, progress=not json_out, resize=resize)
    if json_out:
        emit_json(summary)
        return
    q = summary["quantization"]
    print(f"wrote {summary['artifact']} ({q['precision']})")
    agr = q.get("agreement")
    if agr:
        print(f"agreement with the fake-quant PyTorch reference: {100 * agr['top1_agreement']:.2f}% top-1 "
              f"on {agr['samples']} held-out images (max |logit diff| {agr['max_abs_diff']:.3g})")
    print(f"layers left float: {', '.join(q['float_layers']) if q['float_layers'] else 'none'}")
    mp = q.get("mixed_precision")
    if mp:
        cost = mp.get("cost", {})
        print(f"mixed precision (budget {mp['max_drop']} points on {mp['samples']} {mp['split']} images): "
              f"{len(mp['kept_float'])} layer(s) float; size x{cost.get('size_ratio', float('nan'))}, "
              f"latency x{cost.get('latency_ratio', float('nan'))} vs all-int8")
    for w in q["warnings"]:
        print(f"warning: {w}")
    for f in summary["figures"]:
        print(f"figure: {Path(summary['artifact']).parent / f['path']}")
    if summary["variants"]:
        _show_variants(summary["variants"], False, title="fp32 vs int8 (test split)")


@app.command()
def scan(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint written by edgeopt (.safetensors + .json).")],
    quant: Annotated[bool, typer.Option("--quant", help="Per-layer int8 sensitivity (the default scan).")] = False,
    prune: Annotated[bool, typer.Option("--prune", help="Per-layer pruning sensitivity: each layer pruned alone at --sparsities; writes a sparsity table for `edgeopt prune --table`.")] = False,
    out_dir: Annotated[Optional[Path], typer.Option(help="Folder for sensitivity.csv/.json/.png (default: NAME_quant_scan or NAME_prune_scan beside the checkpoint).")] = None,
    samples: Annotated[int, typer.Option(help="Held-out images each configuration is measured on.")] = 512,
    sparsities: Annotated[Optional[str], typer.Option(help="--prune: comma-separated sparsities per layer (default 0.5,0.7,0.9).")] = None,
    threshold: Annotated[float, typer.Option(help="--prune: recommend per layer the highest sparsity losing at most this many points.")] = 1.0,
    method: Annotated[Optional[str], typer.Option(help="--prune: unstructured (default), obs or structured.")] = None,
    calibration: Annotated[Optional[str], typer.Option(help="minmax, percentile or entropy.")] = None,
    per_channel: Annotated[Optional[bool], typer.Option("--per-channel/--per-tensor", help="Weight scales per channel (default) or per tensor.")] = None,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    resize: ResizeOpt = False,
    trust_model_code: TrustOpt = False,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Per-layer sensitivity: int8 (--quant, default) or pruning (--prune).

    --quant columns: accuracy points lost with only this layer int8, points lost with every
    layer but this one int8, points recovered by keeping only this layer float, output SQNR.
    --prune: points lost with only this layer pruned at each sparsity, and the recommended
    sparsity under --threshold; the table it writes feeds `edgeopt prune --table`.

    Example: edgeopt scan runs/demo/baseline.safetensors --prune --sparsities 0.5,0.7,0.9
    """
    from edgeopt.errors import ConfigError
    from edgeopt.quantize.jobs import scan_checkpoint

    _trust(trust_model_code)
    if quant and prune:
        raise ConfigError("scan takes --quant or --prune, not both: run it once for each")
    dcfg = _target_data(data, data_root)
    if prune:
        from edgeopt.cli.prune_cmd import prune_scan

        prune_scan(checkpoint, out_dir, samples, sparsities, threshold, method, dcfg, config, json_out, resize)
        return
    cfg = _quant_config(config, calibration=calibration, per_channel=per_channel)
    rep = scan_checkpoint(checkpoint, cfg, out_dir, dcfg, samples=samples, progress=not json_out, resize=resize)
    if json_out:
        emit_json(rep)
        return
    rows = [[r["layer"], r["kind"], r["params"], f"{r['drop_alone']:.2f}", f"{r['drop_all_but']:.2f}",
             f"{r['recovery']:.2f}", f"{r['sqnr_db']:.1f}"] for r in rep["rows"]]
    print_table(f"int8 sensitivity of {checkpoint.name} (fp32 {100 * rep['float_acc']:.2f}%, all int8 "
                f"{100 * rep['int8_acc']:.2f}% on {rep['samples']} {rep['split']} images; most sensitive first)",
                ["layer", "kind", "params", "drop alone", "drop all-but", "recovery", "SQNR dB"], rows)
    for k, v in rep["files"].items():
        print(f"{k}: {v}")
