"""``edgeopt distill``: a student learns from a teacher checkpoint, measured against the student alone."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeopt.cli._common import dump_config, emit_json, print_table
from edgeopt.cli.app import (
    ConfigOpt,
    DataOpt,
    DataRootOpt,
    DumpOpt,
    JsonOpt,
    ResizeOpt,
    TrustOpt,
    _target_data,
    _trust,
    app,
)

# Spelled out (not read from the registries) so that `edgeopt --help` does not import torch;
# tests/distill/test_distill_cli.py checks these against edgeopt.distill.
METHOD_NAMES = "response, dkd, feature, progressive, self, online"
PRESET_NAMES = "mnist-cnn, mobilenetv2, resnet"


@app.command()
def distill(
    ctx: typer.Context,
    student: Annotated[Optional[str], typer.Argument(help="The student: a zoo model name (created fresh from the teacher's data, e.g. cnn_student) or an edgeopt checkpoint (.safetensors) to start from. Default: the preset's student.", show_default=False)] = None,
    teacher: Annotated[Optional[str], typer.Option(help="The trained teacher: an edgeopt checkpoint (.safetensors + .json). Its dataset and preprocessing are used. Not needed for --method online.")] = None,
    method: Annotated[Optional[str], typer.Option(help=f"One of {METHOD_NAMES}. response: Hinton KD on softened logits (default); dkd: decoupled KD, for strong, confident teachers; feature: response KD + FitNet/attention loss on --feature-pairs; progressive: teacher -> --assistants -> student; self: born-again generations of the student; online: --peers students teach each other, no teacher.")] = None,
    preset: Annotated[Optional[str], typer.Option(help=f"Settings for a known pair: {PRESET_NAMES} (see `edgeopt presets`); flags and --config override them.")] = None,
    temperature: Annotated[Optional[str], typer.Option(help="Softmax temperature of the KD term (default 4); a comma list such as 2,4,8 sweeps it (response KD).")] = None,
    alpha: Annotated[Optional[str], typer.Option(help="Weight of the KD term in [0, 1], cross-entropy gets 1 - alpha (default 0.9); a comma list such as 0.3,0.5,0.7,0.9 sweeps it.")] = None,
    dkd_alpha: Annotated[Optional[float], typer.Option(help="--method dkd: weight of the target-class term (default 1).")] = None,
    dkd_beta: Annotated[Optional[float], typer.Option(help="--method dkd: weight of the non-target-class term (default 8, the paper's CIFAR-100 value; smaller for easy data or small students).")] = None,
    kd_warmup_epochs: Annotated[Optional[float], typer.Option(help="Warm up the KD term linearly from 0 to full weight over the first N epochs (fractional allowed; updated every step; the cross-entropy term is not scaled). Default 0: no warm-up; DKD's recipe uses 20 of 240 epochs.")] = None,
    feature_pairs: Annotated[Optional[str], typer.Option(help="--method feature: student_layer:teacher_layer[,...] by qualified name, e.g. block3:block3 (see `edgeopt models` for the zoo; a wrong name lists the nearest).")] = None,
    feature_loss: Annotated[Optional[str], typer.Option(help="--method feature: fitnet (MSE after a 1x1-conv adapter, default) or attention (attention transfer).")] = None,
    feature_weight: Annotated[Optional[float], typer.Option(help="--method feature: weight of the feature term (default 100 for fitnet, 1000 for attention; lower it for small feature maps).")] = None,
    assistants: Annotated[Optional[str], typer.Option(help="--method progressive: zoo names of the teacher assistants, largest first, e.g. cnn_assistant.")] = None,
    generations: Annotated[Optional[int], typer.Option(help="--method self: born-again generations (default 2).")] = None,
    peers: Annotated[Optional[int], typer.Option(help="--method online: students trained together (default 2).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs for every model trained (student, baseline, assistants, generations); default 10.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (SGD, cosine; default 0.05).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step (default 128).")] = None,
    augment: Annotated[Optional[bool], typer.Option("--augment/--no-augment", help="Train-time augmentation (default off: the teacher's logits are then computed once and cached).")] = None,
    seeds: Annotated[Optional[int], typer.Option(help="Train each arm with this many seeds and report mean ± std; a gain inside twice the spread is 'no measurable gain' (use 3 or more).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="The first seed (default 0).")] = None,
    init: Annotated[Optional[str], typer.Option(help="given: every seed starts from the student's weights (default); seed: each seed re-initialises the student, so the spread includes initialisation.")] = None,
    baseline: Annotated[Optional[bool], typer.Option("--baseline/--no-baseline", help="Also train the student alone (same data, epochs, seeds) and report the gain (default on).")] = None,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    out_dir: Annotated[Optional[str], typer.Option(help="Folder for the checkpoints, distill.json and distill.md (default runs/distill/<student>-<method>).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Torch threads for training.")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Cap the steps of every epoch (quick runs).")] = None,
    resize: ResizeOpt = False,
    trust_model_code: TrustOpt = False,
    config: ConfigOpt = None,
    dump: DumpOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Distil a teacher checkpoint into a small student and measure the gain against the student alone.

    The student is trained with the teacher's soft labels and, with the same data, epochs
    and seeds, without them (the baseline); with --seeds 3 or more the verdict says whether
    the gain is larger than twice the spread across seeds. Writes the distilled student and
    the baseline as checkpoints, distill.json and distill.md into --out-dir; a sweep
    (--temperature 2,4,8 and/or --alpha 0.5,0.9) writes sweep.csv, sweep.json and
    sweep_heatmap.png instead of checkpoints.

    Example: edgeopt distill cnn_student --teacher runs/teacher/best.safetensors --preset mnist-cnn --seeds 3
    """
    from edgeopt.distill.jobs import job_config, parse_pairs, run_job

    if student and ":" in student and not Path(student).exists():
        _trust(False, student)  # a package.module:factory named on the command line is the user's choice
    _trust(trust_model_code)
    job = job_config(
        config, student=student, teacher=teacher, preset=preset, data=_target_data(data, data_root),
        out_dir=out_dir, temperature=temperature, alpha=alpha,
        distill=dict(method=method, dkd_alpha=dkd_alpha, dkd_beta=dkd_beta, kd_warmup_epochs=kd_warmup_epochs, feature_pairs=parse_pairs(feature_pairs), feature_loss=feature_loss,
                     feature_weight=feature_weight,
                     assistants=[a.strip() for a in assistants.split(",") if a.strip()] if assistants else None,
                     generations=generations, peers=peers, epochs=epochs, lr=lr, batch_size=batch_size,
                     augment=augment, seeds=seeds, seed=seed, init=init, baseline=baseline, threads=threads,
                     max_steps_per_epoch=max_steps),
    )
    if dump:
        dump_config(job)
        return
    report = run_job(job, progress=not json_out, command=_command_line(ctx), resize=resize)
    if json_out:
        emit_json(report)
        return
    show_report(report)


def _command_line(ctx: typer.Context) -> str:
    """The command as typed (the arguments and options given on the command line)."""
    words, opts = ["edgeopt", ctx.info_name or "distill"], []
    for p in ctx.command.params:  # typer vendors click: compare by name, not by class
        if getattr(ctx.get_parameter_source(p.name), "name", None) != "COMMANDLINE":
            continue
        value = ctx.params.get(p.name)
        if getattr(p, "param_type_name", None) == "argument":
            words.append(str(value))
        elif getattr(p, "is_flag", False):
            names = p.opts if value or not p.secondary_opts else p.secondary_opts
            opts.append(names[0])
        else:
            opts += [p.opts[0], str(value)]
    return shlex.join(words + opts)


def _mean_std(mean, std) -> str:
    return "–" if mean is None else f"{100 * mean:.2f} ± {100 * (std or 0):.2f}"


def show_report(report: dict) -> None:
    """Print the summary table (distilled vs baseline, gain, verdict, teacher) and the files."""
    s, c = report["summary"], report["config"]
    if report["kind"] == "sweep":
        rows = [[f"{r['temperature']:g}", f"{r['alpha']:g}", _mean_std(r["student_mean"], r["student_std"]),
                 "–" if r["gain"] is None else f"{100 * r['gain']:+.2f}", r["verdict"]]
                for r in report["sweep"]["rows"]]
        print_table(f"response KD sweep ({c['seeds']} seed(s), {c['epochs']} epoch(s) each; test top-1 %)",
                    ["temperature", "alpha", "student", "gain", "verdict"], rows)
        what = f"student, best cell (T={s['temperature']:g}, alpha={s['alpha']:g})"
    else:
        what = f"student, distilled ({c['method']})"
    rows = [[what, _mean_std(s["student_mean"], s["student_std"])]]
    if s.get("baseline_mean") is not None:
        rows.append(["student alone (baseline)", _mean_std(s["baseline_mean"], s["baseline_std"])])
        rows.append(["gain (points)", f"{100 * s['gain']:+.2f} (threshold {100 * s['threshold']:.2f})"])
    rows.append(["verdict", s["verdict"]])
    if report.get("teacher_acc") is not None:
        rows.append([f"teacher ({(report.get('teacher') or {}).get('arch', '?')})", f"{100 * report['teacher_acc']:.2f}"])
    print_table(f"distillation, test top-1 % (mean ± std over {s.get('seeds', c['seeds'])} seed(s), "
                f"{c['epochs']} epoch(s) per model)", ["", "value"], rows)
    if s.get("note"):
        print(f"note: {s['note']}")
    for w in report.get("warnings") or []:
        print(f"warning: {w}")
    for name, path in report["paths"].items():
        print(f"{name}: {path}")
