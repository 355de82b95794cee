"""``edgeopt optimize``: the variant of a checkpoint that meets a device's constraints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeopt.cli._common import drop_none, dump_config, emit_json, print_table
from edgeopt.cli.app import ConfigOpt, DataOpt, DataRootOpt, DumpOpt, JsonOpt, TrustOpt, _trust, app


def _config(config, constraints: dict, data, data_root, **flags):
    """OptimizeConfig from --config, then the flags given (a None flag keeps the file's value)."""
    from edgeopt.config import load_mapping
    from edgeopt.optimize import OptimizeConfig

    d = dict(load_mapping(config)) if config is not None else {}
    d["constraints"] = {**(d.get("constraints") or {}), **drop_none(constraints)}
    if data or data_root:
        d["data"] = {**(d.get("data") or {}), **drop_none({"name": data, "root": data_root})}
        d["data"].setdefault("name", None)  # a root alone: the dataset the checkpoint records
    d.update(drop_none(flags))
    return OptimizeConfig.from_dict(d)


def _cell(v, fmt: str, scale: float = 1.0) -> str:
    return "–" if v is None else format(v * scale, fmt)


@app.command()
def optimize(
    model: Annotated[Path, typer.Argument(help="A checkpoint written by edgeopt (.safetensors + .json), e.g. by `edgeopt train`.")],
    max_latency_ms: Annotated[Optional[float], typer.Option("--max-latency-ms", help="Batch-1 median latency bound in ms (with --threads threads).")] = None,
    min_accuracy: Annotated[Optional[float], typer.Option("--min-accuracy", help="Lowest top-1 on the held-out split, as a fraction: 0.95 is 95 %.")] = None,
    max_size_mb: Annotated[Optional[float], typer.Option("--max-size-mb", help="Largest file to ship, in MB (10^6 bytes).")] = None,
    max_memory_mb: Annotated[Optional[float], typer.Option("--max-memory-mb", help="Largest share of peak memory the model and its inference add, in MiB (the runtime's own baseline is not counted).")] = None,
    max_drop: Annotated[Optional[float], typer.Option("--max-drop", help="Largest top-1 loss against the fp32 torch baseline, in percentage points.")] = None,
    teacher: Annotated[Optional[Path], typer.Option("--teacher", help="Fine-tune the pruned candidates with this checkpoint as response-KD teacher (e.g. MODEL itself; same ModelSpec). optimize does not distil a new student: run `edgeopt distill` and optimize its checkpoint.")] = None,
    out_dir: Annotated[Optional[str], typer.Option(help="Where artifacts/, results.json, the report and chosen.<ext> go (default runs/optimize).")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", help="Inference threads of every measurement (default 1; set it to the device's).")] = None,
    budget: Annotated[Optional[str], typer.Option(help="quick (one pruning ratio, 1 fine-tuning epoch, fewer runs) or full (default).")] = None,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    resize: Annotated[Optional[bool], typer.Option("--resize", help="Resize images of another size to the model's input size instead of refusing the data.")] = None,
    trust_model_code: TrustOpt = False,
    config: ConfigOpt = None,
    dump: DumpOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Find the variant of MODEL that meets the device's constraints, and keep it.

    Candidates: fp32 torch eager, fp32 ONNX (onnxruntime), int8 ONNX Runtime static,
    int8 torch x86, structured pruning at 0.3 and 0.5 (fine-tuned; with --teacher, with its
    KD) exported to ONNX, and their int8. Each is screened on a subset of the test split
    with a short latency run; the promising ones (within 1.2x of the latency bound and 1
    point of accuracy) are measured fully (the whole split, latency, memory), and the one
    with the highest top-1 meeting every constraint is copied to OUT_DIR/chosen.<ext>.

    Exit codes: 0 a variant was chosen; 3 none meets the constraints (each failing
    constraint is printed with how much it misses and the closest variant); 2 bad input.

    Example: edgeopt optimize runs/demo/baseline.safetensors --max-latency-ms 0.5 --min-accuracy 0.95
    """
    from edgeopt.optimize import optimize as run_optimize

    _trust(trust_model_code)
    cfg = _config(
        config, {"max_latency_ms": max_latency_ms, "min_accuracy": min_accuracy, "max_size_mb": max_size_mb,
                 "max_memory_mb": max_memory_mb, "max_drop": max_drop},
        data, data_root, out_dir=out_dir, threads=threads, budget=budget, resize=resize,
        teacher=None if teacher is None else str(teacher),
    )
    if dump:
        dump_config(cfg)
        return
    res = run_optimize(model, cfg, progress=not json_out)
    if json_out:
        emit_json(res.to_dict())
    else:
        meets = set(res.results["choice"]["meets"])
        rows = [[v["name"] + (" *" if v["name"] == res.chosen else ""), v.get("stage", "–"),
                 _cell((v.get("accuracy") or {}).get("top1"), ".2f", 100),
                 _cell(((v.get("latency") or {}).get("batch1") or {}).get("median_ms"), ".3f"),
                 _cell((v.get("size") or {}).get("bytes"), ".3f", 1e-6),
                 _cell((v.get("memory") or {}).get("delta_mb"), ".1f"),
                 "yes" if v["name"] in meets else ("–" if v.get("stage") != "full" else "no")]
                for v in res.results["variants"]]
        print_table(f"candidates for {model.name} ({cfg.threads} thread(s); * chosen)",
                    ["variant", "stage", "top-1 %", "median ms", "MB", "memory MiB", "meets"], rows)
        print(res.message)
        if res.chosen_path is not None:
            print(f"artifact: {res.chosen_path}")
        print(f"results: {res.results_path}" + (f"  report: {res.report_path}" if res.report_path else ""))
    if res.exit_code:
        raise typer.Exit(res.exit_code)
