"""``edgeopt prune``: structured, unstructured or second-order pruning of a checkpoint."""

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


def prune_config(config: Optional[Path], table: Optional[Path] = None, **flags):
    """The PruneConfig of a command line: ``--config`` file, then ``--table``, then flags."""
    from edgeopt.prune import PruneConfig

    base = {}
    if table is not None:
        from edgeopt.prune.table import read_sparsity_table

        base["layer_ratios"] = read_sparsity_table(table)
    return config_from(PruneConfig, config, base, **flags)


@app.command()
def prune(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint written by edgeopt (.safetensors + .json).")],
    method: Annotated[Optional[str], typer.Option(help="structured (remove channels: smaller, faster model), unstructured (zero single weights by magnitude) or obs (unstructured with Optimal Brain Surgeon updates).")] = None,
    ratio: Annotated[Optional[float], typer.Option(help="Fraction removed in [0, 1): of weights (unstructured/obs), of channels (structured), or of MACs/params with --target.")] = None,
    scope: Annotated[Optional[str], typer.Option(help="local (the same ratio in every layer, default) or global (one ranking across layers).")] = None,
    importance: Annotated[Optional[str], typer.Option(help="structured: l1 (default), l2, bn_scale, taylor, obd (Hessian diagonal), lamp or fpgm.")] = None,
    target: Annotated[Optional[str], typer.Option(help="What --ratio is a fraction of: ratio (channels/weights, default), macs or params (structured).")] = None,
    include: Annotated[Optional[list[str]], typer.Option("--include", help="Layer name or pattern to prune (repeatable; default: every Conv/Linear): features.*, re:.*conv.*")] = None,
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", help="Layer name or pattern never pruned (repeatable).")] = None,
    table: Annotated[Optional[Path], typer.Option("--table", help="Per-layer sparsity table (CSV layer,sparsity or layer,kept; or YAML); e.g. from `edgeopt scan --prune`.")] = None,
    protect_first_last: Annotated[Optional[bool], typer.Option("--protect-first-last/--prune-first-last", help="Leave the first layer and the classifier unpruned (default).")] = None,
    round_to: Annotated[Optional[int], typer.Option(help="structured: keep channel counts multiples of this (default 16: fast ONNX Runtime kernels).")] = None,
    calibration_samples: Annotated[Optional[int], typer.Option(help="Training images for taylor/obd importance and OBS (default 256).")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="oneshot (default), iterative (--steps prune/fine-tune cycles) or gradual (Zhu & Gupta, unstructured).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Cycles of --schedule iterative, pruning steps of gradual.")] = None,
    finetune_epochs: Annotated[Optional[int], typer.Option(help="Fine-tuning epochs after (each) pruning step (default 0).")] = None,
    finetune_lr: Annotated[Optional[float], typer.Option(help="Fine-tuning peak learning rate (default 0.01).")] = None,
    finetune_max_steps: Annotated[Optional[int], typer.Option("--finetune-max-steps", help="Cap fine-tuning steps per epoch (quick runs).")] = None,
    max_drop: Annotated[Optional[float], typer.Option(help="iterative: stop when validation accuracy has dropped more than this many points.")] = None,
    recover_with_teacher: Annotated[Optional[Path], typer.Option("--recover-with-teacher", help="Fine-tune with this checkpoint as KD teacher (response KD; e.g. the unpruned checkpoint itself; same ModelSpec); needs --finetune-epochs.")] = None,
    kd_temperature: Annotated[Optional[float], typer.Option("--kd-temperature", help="--recover-with-teacher: KD softmax temperature (default 4).")] = None,
    kd_alpha: Annotated[Optional[float], typer.Option("--kd-alpha", help="--recover-with-teacher: weight of the KD term in [0, 1]; the labels get the rest (default 0.9).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Pruned checkpoint to write (default: NAME_pruned_<method><percent>.safetensors beside it).")] = None,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    evaluate: Annotated[bool, typer.Option("--eval/--no-eval", help="Measure parent and pruned model side by side on the test split.")] = True,
    sparse: Annotated[bool, typer.Option("--sparse/--no-sparse", help="unstructured: also write the sparse checkpoint (bitmask + packed values) and report sizes.")] = True,
    threads: ThreadsOpt = 1,
    resize: ResizeOpt = False,
    trust_model_code: TrustOpt = False,
    config: ConfigOpt = None,
    dump: DumpOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Prune a checkpoint, save it (safetensors + sidecar, no pickle), and measure it.

    Structured pruning removes whole channels through torch-pruning's dependency graph,
    so the saved and exported model is smaller and faster; its sidecar records the new
    shapes and every other command loads it. Unstructured and OBS pruning zero weights:
    the dense file keeps its size, the sparse file (written beside it) does not.

    With --recover-with-teacher CKPT the fine-tuning learns from CKPT's logits (response
    KD, --kd-temperature, --kd-alpha) as well as the labels; CKPT is usually the unpruned
    checkpoint itself.

    Example: edgeopt prune runs/demo/baseline.safetensors --method structured --ratio 0.5 --finetune-epochs 2
    """
    from edgeopt.prune.jobs import prune_checkpoint

    _trust(trust_model_code)
    cfg = prune_config(
        config, table, method=method, ratio=ratio, scope=scope, importance=importance, target=target,
        include=tuple(include) if include else None, exclude=tuple(exclude) if exclude else None,
        protect_first_last=protect_first_last, round_to=round_to, calibration_samples=calibration_samples,
        schedule=schedule, steps=steps, finetune_epochs=finetune_epochs, finetune_lr=finetune_lr,
        finetune_max_steps_per_epoch=finetune_max_steps, max_drop=max_drop,
        finetune_kd_temperature=kd_temperature, finetune_kd_alpha=kd_alpha,
    )
    if dump:
        dump_config(cfg)
        return
    dcfg = _target_data(data, data_root)
    summary = prune_checkpoint(checkpoint, cfg, out, dcfg, evaluate=evaluate, sparse=sparse,
                               threads=threads, progress=not json_out, resize=resize,
                               teacher=recover_with_teacher)
    if json_out:
        emit_json(summary)
        return
    show_summary(summary)


def show_summary(summary: dict) -> None:
    """Print what a prune run did: the layer table, totals, sizes, warnings, figures."""
    p = summary["pruning"]
    structured = p["config"]["method"] == "structured"
    rows = []
    for r in p["layers"]:
        if structured:
            change = f"{r['channels_before']} -> {r['channels_after']}"
        else:
            change = f"{100 * r['sparsity']:.1f}%"
        rows.append([r["name"], r["type"], change, r["weight_after"], r["protected"] or ""])
    print_table(f"pruned {p['config']['method']} (ratio {p['config']['ratio']})",
                ["layer", "type", "channels" if structured else "sparsity", "weights", "protected"], rows)
    macs = ""
    if p.get("macs_before") and p.get("macs_after") is not None:
        macs = f"; MACs {p['macs_before']:,} -> {p['macs_after']:,} ({100 * (1 - p['macs_after'] / p['macs_before']):.1f}% removed)"
    print(f"parameters {p['params_before']:,} -> {p['params_after']:,}; non-zero {p['nonzero_before']:,} -> "
          f"{p['nonzero_after']:,}{macs}")
    rec = (p.get("info") or {}).get("recovery")
    if rec:
        print(f"recovered with teacher {rec.get('teacher_checkpoint', rec.get('teacher'))} "
              f"(response KD, T={rec['temperature']}, alpha={rec['alpha']})")
    print(f"wrote {summary['checkpoint']}")
    for name, s in (summary.get("sizes") or {}).items():
        print(f"  {name}: {s['bytes']:,} bytes ({s['gzip_bytes']:,} gzip'd)")
    for w in summary["warnings"]:
        print(f"warning: {w}")
    for f in summary["figures"]:
        print(f"figure: {Path(summary['checkpoint']).parent / f['path']}")
    if summary["variants"]:
        _show_variants(summary["variants"], False, title="parent vs pruned (test split)")


def prune_scan(checkpoint: Path, out_dir: Optional[Path], samples: int, sparsities: Optional[str],
               threshold: float, method: Optional[str], dcfg, config: Optional[Path], json_out: bool,
               resize: bool) -> None:
    """``edgeopt scan --prune``: each layer pruned alone at several sparsities."""
    from edgeopt.errors import ConfigError
    from edgeopt.prune.jobs import scan_checkpoint

    try:
        levels = tuple(float(s) for s in sparsities.split(",")) if sparsities else (0.5, 0.7, 0.9)
    except ValueError:
        raise ConfigError(f"--sparsities must be comma-separated fractions like 0.5,0.7,0.9, got {sparsities!r}") from None
    cfg = prune_config(config, method=method)
    rep = scan_checkpoint(checkpoint, cfg, out_dir, dcfg, sparsities=levels, samples=samples,
                          threshold=threshold, progress=not json_out, resize=resize)
    if json_out:
        emit_json(rep)
        return
    rows = [[r["layer"], r.get("params", ""), *[f"{d:.2f}" for d in r["drops"]], f"{r['recommended']:.2f}"]
            for r in rep["rows"]]
    print_table(f"pruning sensitivity of {checkpoint.name} (accuracy points lost with the layer pruned alone; "
                f"base {100 * rep['base_acc']:.2f}% on {rep['samples']} {rep['split']} images)",
                ["layer", "params", *[f"{100 * s:.0f}%" for s in rep["sparsities"]], "recommended"], rows)
    for k, v in rep["files"].items():
        print(f"{k}: {v}")
