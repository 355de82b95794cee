"""The ``edgeopt`` command. Subcommands only build configs and call the Python API."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeopt.cli._common import (
    drop_none,
    dump_config,
    emit_json,
    parse_kv,
    print_table,
)

app = typer.Typer(
    help=(
        "edgeopt: make PyTorch vision models fit edge devices. Train, export and measure "
        "every variant (accuracy, latency, size, memory, energy estimate) on the real artifact."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]
DumpOpt = Annotated[bool, typer.Option("--dump-config", help="Print the config this command would run (YAML) and exit.")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="A YAML/JSON file with the config; flags override it.")]
DataOpt = Annotated[Optional[str], typer.Option("--data", help="Dataset: digits, mnist, fashion-mnist, cifar10, imagefolder:PATH (see `edgeopt datasets`).")]
DataRootOpt = Annotated[Optional[str], typer.Option("--data-root", help="Folder holding the dataset files (default: search $EDGEOPT_DATA, ~/.cache/edgeopt, system folders).")]
DownloadOpt = Annotated[Optional[bool], typer.Option("--download/--no-download", help="Download the dataset with torchvision if it is not found locally.")]
ThreadsOpt = Annotated[int, typer.Option("--threads", help="Inference threads (set explicitly for honest latency).")]
TrustOpt = Annotated[bool, typer.Option("--trust-model-code", help="Allow the package.module:factory a checkpoint or config names to be imported and run (files never run code otherwise; see also EDGEOPT_TRUSTED_MODULES).")]
ResizeOpt = Annotated[bool, typer.Option("--resize", help="Resize images of another size to the model's input size (bilinear, antialiased) instead of refusing the data.")]
RtolOpt = Annotated[Optional[float], typer.Option("--rtol", help="Parity: relative tolerance; passes when max |diff| <= atol + rtol x max |logit| (default per precision: fp32 1e-5, fp16 1e-2).")]
AtolOpt = Annotated[Optional[float], typer.Option("--atol", help="Parity: absolute tolerance of the same criterion (default per precision: fp32 1e-4, fp16 0).")]


def _trust(trust_model_code: bool, *names: str | None) -> None:
    """Allow the model code the user named on this command line (edgeopt.models.trust)."""
    from edgeopt.models.trust import allow_model_code

    if trust_model_code:
        allow_model_code("*")
    for n in names:
        if n:
            allow_model_code(n)


def _target_data(data, data_root):
    """The DataConfig for a command on a trained model: None, or a name and/or a root; a
    root without --data keeps the dataset the model records (its ModelSpec)."""
    from edgeopt.pipeline import DataConfig

    return DataConfig(name=data, root=data_root) if (data or data_root) else None


def _data_config(base, name, root, download):
    from edgeopt.pipeline import DataConfig

    d = base.to_dict() if base is not None else {}
    d.update(drop_none({"name": name, "root": root, "download": download}))
    return DataConfig.from_dict(d)


# ---------------------------------------------------------------------------------- train
@app.command()
def train(
    model: Annotated[Optional[str], typer.Option(help="Model: a zoo name (`edgeopt models`), tv:NAME, or package.module:factory.")] = None,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = None,
    epochs: Annotated[Optional[int], typer.Option(help="Number of epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step (per process under DDP).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="sgd or adamw.")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="cosine, step or constant.")] = None,
    warmup_epochs: Annotated[Optional[float], typer.Option(help="Linear warm-up length in epochs.")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="Weight decay.")] = None,
    label_smoothing: Annotated[Optional[float], typer.Option(help="Label smoothing of the cross-entropy.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="fp32, bf16 (autocast, works on CPU) or fp16 (CUDA).")] = None,
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", help="Use the channels_last memory format.")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the model.")] = None,
    grad_clip: Annotated[Optional[float], typer.Option(help="Clip the gradient norm to this value.")] = None,
    augment: Annotated[Optional[bool], typer.Option("--augment/--no-augment", help="Train-time augmentation (random crop, flip where it makes sense).")] = None,
    early_stop: Annotated[Optional[int], typer.Option("--early-stop", help="Stop after N epochs without a better val accuracy.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (data split, init, shuffling).")] = None,
    out_dir: Annotated[Optional[str], typer.Option(help="Where checkpoints go (best.safetensors, last.safetensors, train_state.pt).")] = None,
    resume: Annotated[Optional[bool], typer.Option("--resume/--no-resume", help="Continue an interrupted run in --out-dir where it stopped.")] = None,
    max_steps_per_epoch: Annotated[Optional[int], typer.Option(help="Cap the steps per epoch (smoke runs).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch intra-op threads for training (default: torch's choice).")] = None,
    progress: Annotated[Optional[bool], typer.Option("--progress/--no-progress", help="Progress bar (one line per epoch when not a terminal).")] = None,
    model_arg: Annotated[Optional[list[str]], typer.Option("--model-arg", help="Model argument key=value, e.g. width_mult=0.5 (repeatable).")] = None,
    weights: Annotated[Optional[str], typer.Option(help="Start from these weights (safetensors or a weights-only .pt).")] = None,
    trust_model_code: TrustOpt = False,
    config: ConfigOpt = None,
    dump: DumpOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train a model with the project's Trainer (also under `torchrun` for DDP).

    Example: edgeopt train --model simple_cnn --data fashion-mnist --epochs 2
    """
    from edgeopt.config import load_mapping
    from edgeopt.pipeline import ModelConfig, TrainJob, train_job

    _trust(trust_model_code, model)  # --model on the command line is the user's own choice
    base = TrainJob.from_dict(load_mapping(config)) if config else TrainJob()
    mdict = base.model.to_dict()
    mdict.update(drop_none({"name": model, "weights": weights}))
    if model_arg:
        mdict["kwargs"] = {**mdict.get("kwargs", {}), **parse_kv(model_arg)}
    tdict = base.train.to_dict()
    tdict.update(drop_none(dict(
        epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, schedule=schedule,
        warmup_epochs=warmup_epochs, weight_decay=weight_decay, label_smoothing=label_smoothing,
        precision=precision, channels_last=channels_last, compile=compile, grad_clip=grad_clip,
        early_stop_patience=early_stop, seed=seed, out_dir=out_dir, resume=resume,
        max_steps_per_epoch=max_steps_per_epoch, augment=augment, threads=threads, progress=progress,
    )))
    job = TrainJob(
        data=_data_config(base.data, data, data_root, download),
        model=ModelConfig.from_dict(mdict),
        train=type(base.train).from_dict(tdict),
    )
    if dump:
        dump_config(job)
        return
    result = train_job(job)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return
    last = result.history[-1] if result.history else {}  # the last epoch's record
    summary = {
        "best_val_acc": result.best_metric,
        "test_acc": result.metrics.get("test_acc"),
        "metrics": result.metrics,
        "epochs_run": len(result.history),
        "images_per_s": last.get("images_per_s"),
        "best_path": str(result.best_path),
        "last_path": str(result.last_path),
        "history": result.history,
    }
    if json_out:
        emit_json(summary)
        return
    rows = [[h.get("epoch"), f"{h.get('train_loss', 0):.4f}", f"{100 * h.get('train_acc', 0):.2f}",
             f"{100 * (h.get('val_acc') or 0):.2f}", f"{h.get('images_per_s', 0):.0f}", f"{h.get('seconds', 0):.1f}"]
            for h in result.history]
    print_table("training", ["epoch", "train loss", "train acc %", "val acc %", "img/s", "s"], rows)
    test = summary["test_acc"]
    print(f"best val accuracy {100 * (result.best_metric or 0):.2f}%"
          + (f"; final model's test accuracy {100 * test:.2f}%" if test is not None else "")
          + f"; checkpoint: {result.best_path}")


# ---------------------------------------------------------------------------------- eval / bench / export
@app.command("eval")
def eval_cmd(
    target: Annotated[Path, typer.Argument(help="A checkpoint (.safetensors) or an artifact (.onnx).")],
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    runtime: Annotated[Optional[str], typer.Option(help="Runtime to run it in (default: the artifact's own).")] = None,
    split: Annotated[str, typer.Option(help="val or test.")] = "test",
    threads: ThreadsOpt = 1,
    runs: Annotated[int, typer.Option(help="Timed latency runs (after warm-up).")] = 100,
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="Measure peak memory in a child process.")] = True,
    resize: ResizeOpt = False,
    trust_model_code: TrustOpt = False,
    dump: DumpOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Evaluate a checkpoint or artifact: accuracy, latency, size, peak memory, energy estimate.

    Images are normalised with the model's own mean/std (its ModelSpec), never the
    dataset's; data whose classes, channels or size differ from the model's is refused.
    """
    from edgeopt.jobs import evaluate_path
    from edgeopt.pipeline import EvalConfig

    _trust(trust_model_code)
    cfg = EvalConfig(split=split, threads=threads, latency_runs=runs, memory=memory)
    dcfg = _target_data(data, data_root)
    if dump:
        dump_config(cfg)
        return
    row = evaluate_path(target, dcfg, runtime, cfg, progress=not json_out, resize=resize)
    _show_variants([row], json_out, title=f"evaluation of {target}")


@app.command()
def bench(
    target: Annotated[Path, typer.Argument(help="A checkpoint (.safetensors) or an artifact (.onnx, .torchscript, ...); with --compare, a checkpoint.")],
    runtime: Annotated[Optional[str], typer.Option(help="Runtime (default: the artifact's own).")] = None,
    batch_size: Annotated[list[int], typer.Option("--batch-size", help="Batch sizes to time (repeatable).")] = [1, 64],  # noqa: B006
    threads: ThreadsOpt = 1,
    runs: Annotated[int, typer.Option(help="Timed runs per batch size.")] = 100,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up runs.")] = 10,
    compare: Annotated[bool, typer.Option("--compare", help="Export the checkpoint to every available format and compare all runtimes (latency, throughput, size, parity) against torch eager.")] = False,
    to: Annotated[Optional[list[str]], typer.Option("--to", help="With --compare: only these formats (repeatable; default: all, see `edgeopt formats`).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option(help="With --compare: keep the artifacts in this folder (default: a temporary one).")] = None,
    rtol: RtolOpt = None,
    atol: AtolOpt = None,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    resize: ResizeOpt = False,
    trust_model_code: TrustOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Time inference of an artifact in its runtime: median, p90, p99 latency and throughput.

    With --compare, TARGET is a checkpoint: it is exported to every format available here
    (ONNX at each ONNX Runtime optimization level), each artifact is checked for parity on
    real test images of its dataset and timed at batch 1 and at the largest --batch-size.

    Example: edgeopt bench runs/best.safetensors --compare --runs 200
    """
    _trust(trust_model_code)
    if compare:
        _bench_compare(target, to, out_dir, data, data_root, threads, runs, warmup, max(batch_size), json_out, resize,
                       _parity_tolerance(rtol, atol))
        return
    from edgeopt.artifact import Artifact
    from edgeopt.evaluate import measure_latency
    from edgeopt.runtime import get_runner

    art = Artifact.load(target)
    runner = get_runner(art, runtime=runtime, threads=threads)
    res = [measure_latency(runner, art.spec, batch_size=b, warmup=warmup, runs=runs, threads=threads).to_dict()
           for b in batch_size]
    if json_out:
        emit_json(res)
        return
    rows = [[r["batch_size"], f"{r['median_ms']:.3f}", f"{r['p90_ms']:.3f}", f"{r['p99_ms']:.3f}",
             f"{r['throughput']:.0f}", r["threads"], r["runs"]] for r in res]
    print_table(f"latency of {target} ({runner.name})",
                ["batch", "median ms", "p90 ms", "p99 ms", "images/s", "threads", "runs"], rows)


def _parity_tolerance(rtol, atol):
    """``--rtol/--atol`` as the parity tolerance dict an export config holds (None: the defaults)."""
    tol = drop_none({"rtol": rtol, "atol": atol})
    return tol or None


def _bench_compare(target, formats, out_dir, data, data_root, threads, runs, warmup, tp_batch, json_out, resize,
                   tolerance=None) -> None:
    from edgeopt.errors import ConfigError
    from edgeopt.export.compare import compare_path, require_success

    if not str(target).endswith(".safetensors"):
        raise ConfigError(f"bench --compare needs a checkpoint (.safetensors), got {target}; "
                          f"time an artifact with `edgeopt bench {target}`")
    dcfg = _target_data(data, data_root)
    rows = compare_path(target, out_dir, dcfg, resize=resize, formats=formats or None, threads=threads, runs=runs,
                        warmup=warmup, throughput_batch=tp_batch, tolerance=tolerance)
    if json_out:
        emit_json(rows)
        require_success(rows, str(target))  # the rows first, then exit 2 if no format succeeded
        return

    def num(v, fmt):
        return "–" if v is None else format(v, fmt)

    cells = []
    for r in rows:
        parity = "reference" if r["name"] == "torch" else (
            "–" if r["parity_passed"] is None else ("pass" if r["parity_passed"] else "FAIL")
            + f" {r['parity']['max_abs_diff']:.0e} (rel {r['parity'].get('max_rel_diff', float('nan')):.0e})")
        cells.append([r["name"] if r["status"] == "ok" else f"{r['name']} ({r['status']})", r["precision"] or "–",
                      num(r["p50_ms"], ".3f"), num(r["p99_ms"], ".3f"), num(r["throughput"], ".0f"),
                      num(r["size_bytes"] and r["size_bytes"] / 1e6, ".2f"), parity,
                      num(r["speedup_vs_torch"], ".2f") + ("x" if r["speedup_vs_torch"] else "")])
    print_table(f"runtimes for {target} (batch 1 latency, throughput at batch {tp_batch}, {threads} thread(s))",
                ["runtime", "precision", "p50 ms", "p99 ms", "img/s", "MB", "parity", "vs eager"], cells)
    for r in rows:
        if r["reason"]:
            print(f"{r['name']}: {r['reason']}")
    require_success(rows, str(target))  # the table first, then exit 2 if no format succeeded


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint written by edgeopt (.safetensors + .json).")],
    to: Annotated[str, typer.Option("--to", help="Target format (see `edgeopt formats`).")] = "onnx",
    out: Annotated[Optional[Path], typer.Option(help="Output file (default: beside the checkpoint).")] = None,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check the export against the PyTorch model on real samples.")] = True,
    rtol: RtolOpt = None,
    atol: AtolOpt = None,
    method: Annotated[Optional[str], typer.Option("--method", help="--to torchscript only: trace (default) or script (keeps data-dependent control flow).")] = None,
    resize: ResizeOpt = False,
    trust_model_code: TrustOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Export a checkpoint to a deployable format and verify parity on real samples.

    Parity passes when max |diff| <= atol + rtol x max |logit| and top-1 agrees; a failed
    export is kept (marked failed in its sidecar) and the error says where.

    Example: edgeopt export runs/best.safetensors --to torchscript --method script --rtol 1e-4
    """
    from edgeopt.errors import ConfigError
    from edgeopt.jobs import export_path

    _trust(trust_model_code)
    cfg: dict = {}
    if method is not None:
        if to != "torchscript":
            raise ConfigError(f"--method {method} is a torchscript export option, not one of --to {to}")
        cfg["method"] = method  # validated by TorchScriptExportConfig
    if _parity_tolerance(rtol, atol):
        cfg["parity"] = _parity_tolerance(rtol, atol)  # the export config's parity tolerance (as in YAML)
    dcfg = _target_data(data, data_root)
    res = export_path(checkpoint, to, out, dcfg, verify=verify, resize=resize, config=cfg or None)
    parity = res.parity.to_dict() if res.parity is not None else None
    if json_out:
        emit_json({"artifact": str(res.artifact.path), "format": res.artifact.format, "parity": parity})
        return
    print(f"wrote {res.artifact.path}")
    if parity:
        allowed = parity.get("allowed_abs_diff")
        print(f"parity on {parity.get('n_samples')} real samples: max abs diff {parity['max_abs_diff']:.2e}"
              + (f" (allowed {allowed:.2e})" if allowed is not None else "")
              + f", relative to the logits' scale {parity.get('max_rel_diff', float('nan')):.2e}, "
              f"cosine {parity.get('cosine', parity.get('cosine_similarity', float('nan'))):.6f}, "
              f"top-1 agreement {100 * parity['top1_agreement']:.2f}%")


def _show_variants(rows: list[dict], json_out: bool, title: str) -> None:
    from edgeopt.report import variant_rows

    if json_out:
        emit_json(rows if len(rows) > 1 else rows[0])
        return
    headers, cells = variant_rows({"variants": rows}, compact=True)
    print_table(title, headers, cells)
    print("(all columns: --json, or the report files)")


# The other commands live in their own modules, each registering on ``app`` when imported.
from edgeopt.cli import (  # noqa: E402,F401  (registers commands)
    distill_cmd,
    import_cmd,
    listings,
    optimize_cmd,
    prune_cmd,
    quantize_cmds,
    report_cmd,
    run_cmd,
)
