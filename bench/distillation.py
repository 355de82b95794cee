"""The distillation tables: does a teacher make a small student better than training it alone?

Every row is the mean ± std of the test top-1 accuracy over ``--seeds`` seeds, measured
against the same student trained alone (same data, epochs, augmentation, seeds and
starting weights: ``init='seed'``, so the spread includes initialisation). The verdict is
edgeopt's rule (:func:`edgeopt.distill.summarize`): a gain inside twice the combined
spread is "no measurable gain". Three parts (``--steps``), three tables:

* ``fmnist`` -> ``distillation_fmnist``: ``cnn_teacher`` (1.38M parameters) trained once
  on Fashion-MNIST (``--teacher-epochs``, augmentation on; cached in
  ``--out-dir/fmnist/teacher``), then ``cnn_student`` (24k) by every method of the
  ``mnist-cnn`` preset (response, dkd, feature, progressive with ``cnn_assistant``, self,
  online) at ``--epochs`` per model trained, plus the baseline row (trained once, in the
  response cell; every variant starts from the same weights per seed, so it is every
  variant's baseline);
* ``cifar`` -> ``distillation_cifar10``: ``mobilenetv2_student`` from a trained
  ``mobilenetv2_teacher`` (``--teacher-checkpoint``, or trained here for
  ``--cifar-teacher-epochs``) on the CIFAR-10 JPEG copy, response KD (preset
  ``mobilenetv2``: T 4, alpha 0.9, augmentation on) vs the student alone at ``--cifar-epochs``;
* ``prune`` -> ``distillation_prune_recovery``: the Fashion-MNIST teacher pruned
  (structured, ``--prune-macs`` of its MACs removed), then recovered for ``--prune-epochs``
  with KD from the unpruned model vs plain fine-tuning, at equal epochs
  (:func:`prune_recovery_with_distillation`).

Each finished cell is cached in ``--out-dir/<part>/cells.json`` (a variant's checkpoints
and ``distill.json`` beside it), so an interrupted run resumes; ``--force NAME,...`` redoes
cells. The results go to ``bench/results/<table>.json`` and ``docs/benchmarks.md`` with
the machine (``bench/_common.save``).

Usage (2 CPU threads; measured on a 2-core AMD EPYC with other benchmarks beside it: cnn_teacher
trains at ~160-300 images/s (5 epochs: 30 min), cnn_student at ~2,300 images/s; MobileNetV2
~140 images/s on CIFAR-10):
    # Fashion-MNIST, the table in docs/distillation.md: teacher 5 epochs, then every variant and
    # the baseline on 5,000 training images, 20 epochs each, 3 seeds (~45 min after the teacher)
    python bench/distillation.py --steps fmnist --student-images 5000 --epochs 20 --teacher-epochs 5 --seeds 3
    # the same students on all 54,000 images, 5 epochs (response + dkd: ~25 min; feature and
    # progressive are the slow ones)
    python bench/distillation.py --steps fmnist --epochs 5 --teacher-epochs 5 --seeds 3 --variants response,dkd
    # pruning recovered with KD vs plain fine-tuning (reuses the Fashion-MNIST teacher; ~2 h)
    python bench/distillation.py --steps prune --prune-epochs 2 --seeds 3 --teacher-epochs 5
    # CIFAR-10 JPEG copy: MobileNetV2 pair (teacher ~1.5 h unless --teacher-checkpoint,
    # students ~3 h)
    python bench/distillation.py --steps cifar --cifar-epochs 5 --cifar-teacher-epochs 15 --seeds 3 \\
        --cifar-data imagefolder:../shared/data/cifar10-jpeg
    # smoke run of all three parts (digits and synthetic data, 5 steps per epoch, 1 epoch,
    # results named *_smoke; delete those and run bench/_common.write_markdown() after)
    python bench/distillation.py --quick --out-dir runs/bench/distill_smoke
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Cells, save  # noqa: E402

STEPS = ("fmnist", "prune", "cifar")
#: the fmnist variants, in the order they run (response first: it also trains the baseline)
VARIANTS = ("response", "dkd", "feature", "progressive", "self", "online")


# -- helpers -----------------------------------------------------------------------------------
def trained_teacher(folder: Path, data: str, model: str, epochs: int, *, augment: bool, lr: float = 0.05,
                    max_steps: int | None = None) -> tuple[Path, dict]:
    """``folder/best.safetensors`` of ``model`` trained on ``data`` (batch 128, SGD + cosine,
    2 threads); trained here unless ``folder/teacher.json`` says it finished (an interrupted
    training resumes from its ``train_state.pt``). Returns the checkpoint and its record."""
    from edgeopt._io import write_json_atomic

    done = folder / "teacher.json"
    if done.is_file():
        record = json.loads(done.read_text())
        if (record.get("model"), record.get("epochs")) != (model, epochs):
            sys.exit(f"{folder} holds a {record.get('model')} teacher trained {record.get('epochs')} epochs, not "
                     f"{model} for {epochs}: pass another --out-dir (or delete {folder} to train it again)")
        return folder / "best.safetensors", record
    from edgeopt.pipeline import DataConfig, ModelConfig, TrainJob, train_job
    from edgeopt.train import TrainConfig

    t0 = time.perf_counter()
    job = TrainJob(data=DataConfig(name=data), model=ModelConfig(name=model),
                   train=TrainConfig(epochs=epochs, batch_size=128, lr=lr, out_dir=str(folder), threads=2,
                                     progress=True, augment=augment, resume=(folder / "train_state.pt").is_file(),
                                     max_steps_per_epoch=max_steps))
    res = train_job(job)
    record = {"model": model, "data": data, "epochs": epochs, "augment": augment, "lr": lr,
              "max_steps_per_epoch": max_steps, "best_val_acc": res.best_metric,
              "test_acc": res.metrics.get("test_acc"), "seconds": round(time.perf_counter() - t0, 1)}
    write_json_atomic(done, record)
    return Path(res.best_path), record


def test_acc(model, data) -> float:
    """Top-1 accuracy on the whole test split (eval mode, batches of 256)."""
    import torch

    model.eval()
    correct = n = 0
    with torch.no_grad():
        for x, y in data.loader("test", 256):
            correct += int((model(x).argmax(1) == y).sum())
            n += len(y)
    return correct / n


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def pm(mean: float | None, std: float | None) -> str:
    return "–" if mean is None else f"{100 * mean:.2f} ± {100 * (std or 0):.2f}"


def gain_cells(s: dict) -> list[str]:
    if s.get("gain") is None:
        return ["–", "–", s.get("verdict", "–")]
    return [f"{100 * s['gain']:+.2f}", f"{100 * s['threshold']:.2f}", s["verdict"]]


def generation_rows(cell: dict, base: list | None, budget: str) -> list[list[str]]:
    """One row per born-again generation (test accuracy over the seeds), read from the
    cell's distill.json: the method reports the best generation by validation accuracy,
    which hides whether the born-again step itself (generation >= 2) gained anything."""
    from edgeopt.distill import summarize

    path = Path((cell.get("paths") or {}).get("json") or "")
    if not path.is_file():
        return []
    runs = json.loads(path.read_text()).get("runs") or []
    by_gen: dict[int, list[float]] = {}
    for r in runs:
        for g in (r.get("student") or {}).get("generations") or []:
            by_gen.setdefault(int(g["generation"]), []).append(g["test_acc"])
    rows = []
    for g, accs in sorted(by_gen.items()):
        s = summarize(accs, base)
        who = "taught by the teacher" if g == 1 else f"taught by generation {g - 1}"
        rows.append([f"  self, generation {g} alone ({who})", pm(s["student_mean"], s["student_std"]), *gain_cells(s),
                     budget, "–"])
    return rows


def student_subset(data, n: int):
    """``data`` with its train split cut to ``n`` images, the same number per class (seed 0;
    val and test untouched): the limited-labels setting where a teacher trained on more data
    has the most to give."""
    import torch

    from edgeopt.data._module import DataModule

    train = data.split("train")
    classes = int(train.labels.max()) + 1
    g = torch.Generator().manual_seed(0)
    per = [torch.nonzero(train.labels == c).flatten() for c in range(classes)]
    keep = torch.cat([idx[torch.randperm(len(idx), generator=g)[: n // classes]] for idx in per]).sort().values
    return DataModule(data.name, data.spec, train.subset(keep), data.split("val"), data.split("test"),
                      augment=data.augment, source=data.source)


# -- part (a): Fashion-MNIST, every method ---------------------------------------------------
def fmnist(args, out: Path, force: set[str], suffix: str) -> None:
    from edgeopt.distill import summarize
    from edgeopt.distill.jobs import distill_checkpoint
    from edgeopt.distill.presets import preset_config
    from edgeopt.jobs import load_data_for

    teacher, trec = trained_teacher(out / "teacher", args.data, "cnn_teacher", args.teacher_epochs, augment=True,
                                    max_steps=args.max_steps)
    data = load_data_for(teacher)
    n_train = len(data.split("train"))
    if args.student_images:  # the students see a subset; the teacher was trained on all of it
        data, out = student_subset(data, args.student_images), out / f"students_{args.student_images}"
        suffix = f"_{args.student_images}{suffix}"
    cells = Cells(out / "cells.json", force)
    base_cfg = {"epochs": args.epochs, "seeds": args.seeds, "init": "seed", "threads": 2,
                "max_steps_per_epoch": args.max_steps, "baseline": False}
    extra = {"feature": {"feature_loss": "fitnet"}, "progressive": {}, "self": {"generations": 2},
             "online": {"peers": 2}}

    def run(method: str) -> Callable[[], dict]:
        def cell() -> dict:
            cfg = preset_config("mnist-cnn", {**base_cfg, **extra.get(method, {}), "method": method,
                                              "baseline": method == "response"})
            rep = distill_checkpoint("cnn_student", teacher, cfg, out / method, data, progress=True,
                                     command="python " + " ".join(sys.argv))
            return {"config": rep["config"], "summary": rep["summary"], "teacher_acc": rep["teacher_acc"],
                    "accs": [r["student"]["test_acc"] for r in rep["runs"]],
                    "baseline_accs": [r["baseline"]["test_acc"] for r in rep["runs"] if r["baseline"]] or None,
                    "baseline_seconds": round(sum(h.get("seconds", 0) for r in rep["runs"] if r["baseline"]
                                                  for h in r["baseline"]["history"]), 1),
                    "info": rep["info"], "warnings": rep["warnings"], "paths": rep["paths"]}
        return cell

    got = {m: cells.get(m, run(m)) for m in VARIANTS if m in args.variants}
    base = (got.get("response") or {}).get("baseline_accs")
    e = args.epochs
    budget = {"response": f"{e}", "dkd": f"{e}", "feature": f"{e} (teacher runs every batch)",
              "progressive": f"{e} + {e} for cnn_assistant", "self": f"{e} x 2 generations",
              "online": f"{e}, 2 peers trained together"}
    rows = []
    if base:
        b = summarize(base)
        rows.append(["cnn_student alone (baseline)", pm(b["student_mean"], b["student_std"]), "–", "–", "–", f"{e}",
                     f"{got['response']['baseline_seconds'] / 60:.1f} (training epochs only)"])
    for m, c in got.items():
        if "error" in c:
            rows.append([m, "–", "–", "–", f"failed: {c['error'][:120]}", budget[m], "–"])
            continue
        s = summarize(c["accs"], base)
        label = {"feature": "feature (FitNet block3:block3, weight 10)", "progressive": "progressive (via cnn_assistant)",
                 "self": "self (born-again, 2 generations; the best by val)", "online": "online (mutual learning, 2 peers, T 1, alpha 0.5, no teacher)",
                 "response": "response (Hinton KD)", "dkd": "dkd (decoupled KD)"}[m]
        own = c.get("seconds", 0) - (c.get("baseline_seconds") or 0)  # the response cell trains the baseline too
        rows.append([label, pm(s["student_mean"], s["student_std"]), *gain_cells(s), budget[m], f"{own / 60:.1f}"])
        if m == "self":  # generation 1 learns from the teacher (it is response KD): show each generation alone
            rows += generation_rows(c, base, budget[m])
    tacc = next((c["teacher_acc"] for c in got.values() if c.get("teacher_acc") is not None), trec.get("test_acc"))
    title = (f"Distillation: cnn_teacher -> cnn_student on {data.name} (test split, {len(data.split('test'))} images"
             + (f"; students on {len(data.split('train'))} training images" if args.student_images else "") + ")")
    notes = (f"Teacher cnn_teacher ({teacher}): {pct(tacc)} % test top-1 after {trec['epochs']} epochs "
             f"(augmentation on, {trec.get('seconds', 0) / 60:.0f} min). Students: preset mnist-cnn (T 4, alpha 0.9, "
             f"SGD + cosine, lr 0.05, batch 128, no augmentation, the teacher's logits cached), {e} epoch(s) per model trained"
             + (f" on {len(data.split('train'))} of the {n_train} training images (stratified by class, seed 0; the "
                f"teacher trained on all of them, the baseline on the same {len(data.split('train'))})"
                if args.student_images else "")
             + f", seeds {args.seeds} (init 'seed': each seed re-initialises the student, the same weights in "
             "every variant and in the baseline). Gain: mean minus the baseline's mean (points); threshold: twice "
             "the combined spread; a gain within it is 'no measurable gain'. Epochs per model; progressive and self "
             "train more models and cost more wall time. Wall time in minutes on this machine with 2 threads"
             + (f", at most {args.max_steps} steps per epoch" if args.max_steps else "") + ".")
    save(f"distillation_fmnist{suffix}", title,
         ["variant", f"top-1 % (mean ± std, {args.seeds} seeds)", "gain (points)", "threshold (points)", "verdict",
          "epochs per model", "wall time (min)"], rows, notes=notes, extra={"cells": cells.data, "teacher": trec})
    for r in rows:
        print(r)


# -- part (b): CIFAR-10, the MobileNetV2 pair -------------------------------------------------
def cifar(args, out: Path, force: set[str], suffix: str) -> None:
    from edgeopt.distill.jobs import distill_checkpoint
    from edgeopt.distill.presets import preset_config
    from edgeopt.jobs import load_data_for
    from edgeopt.pipeline import DataConfig

    if args.teacher_checkpoint:
        teacher, trec = Path(args.teacher_checkpoint), {"checkpoint": args.teacher_checkpoint, "epochs": "given"}
    else:
        teacher, trec = trained_teacher(out / "teacher", args.cifar_data, "mobilenetv2_teacher",
                                        args.cifar_teacher_epochs, augment=True, max_steps=args.max_steps)
    data = load_data_for(teacher, DataConfig(name=args.cifar_data))
    cells = Cells(out / "cells.json", force)

    def cell() -> dict:
        cfg = preset_config("mobilenetv2", {"epochs": args.cifar_epochs, "seeds": args.seeds, "init": "seed",
                                            "threads": 2, "max_steps_per_epoch": args.max_steps})
        rep = distill_checkpoint("mobilenetv2_student", teacher, cfg, out / "response", data, progress=True,
                                 command="python " + " ".join(sys.argv))
        return {"config": rep["config"], "summary": rep["summary"], "teacher_acc": rep["teacher_acc"],
                "runs": [{"seed": r["seed"], "student": r["student"]["test_acc"], "baseline": r["baseline"]["test_acc"]}
                         for r in rep["runs"]], "warnings": rep["warnings"], "paths": rep["paths"]}

    # the budget is in the key: a 3-seed run must not reuse a 1-seed cell (the seeds already
    # trained are reused by distill() itself, seed by seed, from out/response/runs)
    c = cells.get(f"response, {args.seeds} seed(s), {args.cifar_epochs} epoch(s)", cell)
    if "error" in c:
        rows = [["mobilenetv2_student, response KD", "–", "–", "–", f"failed: {c['error'][:160]}", "–", "–"]]
    else:
        s = c["summary"]
        rows = [["mobilenetv2_student alone (baseline)", pm(s["baseline_mean"], s["baseline_std"]), "–", "–", "–",
                 f"{args.cifar_epochs}", "–"],
                ["mobilenetv2_student, response KD (T 4, alpha 0.9)", pm(s["student_mean"], s["student_std"]),
                 *gain_cells(s), f"{args.cifar_epochs}", f"{c.get('seconds', 0) / 60:.1f} (both arms)"],
                ["mobilenetv2_teacher", pct(c["teacher_acc"]), "–", "–", "–", f"{trec.get('epochs')}",
                 f"{trec.get('seconds', 0) / 60:.0f}" if trec.get("seconds") else "–"]]
    save(f"distillation_cifar10{suffix}",
         f"Distillation: mobilenetv2_teacher -> mobilenetv2_student on {data.name} (test split, "
         f"{len(data.split('test'))} images)",
         ["model", f"top-1 % (mean ± std, {args.seeds} seeds)", "gain (points)", "threshold (points)", "verdict",
          "epochs", "wall time (min)"], rows,
         notes=(f"Teacher {teacher} ({trec.get('epochs')} epochs, augmentation on). Student arms: preset mobilenetv2 "
                f"(SGD + cosine, lr 0.05, batch 128, augmentation on, so the teacher runs on every batch), "
                f"{args.cifar_epochs} epochs each, init 'seed'. JPEG copy of CIFAR-10: not comparable one to one "
                "with published CIFAR-10 figures." + (f" At most {args.max_steps} steps per epoch." if args.max_steps else "")),
         extra={"cell": c, "teacher": trec})
    for r in rows:
        print(r)


# -- part (c): pruning recovered with KD vs plain fine-tuning ---------------------------------
def prune_recovery_with_distillation(model, data, *, macs: float = 0.5, epochs: int = 2, lr: float = 0.01,
                                     seeds: int = 3, max_steps: int | None = None, temperature: float = 4.0,
                                     alpha: float = 0.9, progress: bool = True) -> dict:
    """Structured pruning of ``model`` (``macs`` of its MACs removed, l1), then, for each
    seed, ``epochs`` of recovery fine-tuning twice from the same pruned weights: with
    response KD from the unpruned ``model`` as teacher, and with labels only.

    Uses ``edgeopt.prune.prune(..., teacher=model)`` when prune takes a teacher; otherwise
    prunes without fine-tuning and fine-tunes with ``Trainer(cfg, loss_fn=distill_loss_fn(model))``.
    Both arms: SGD + cosine at ``lr``, the dataset's augmentation, the same seed.

    Returns:
        ``{"unpruned", "oneshot", "kd": [acc per seed], "plain": [...], "summary", "api",
        "params_before", "params_after", "macs_before", "macs_after"}`` (accuracies on the test split).
    """
    import copy

    from edgeopt.distill import DistillConfig, distill_loss_fn, summarize
    from edgeopt.prune import PruneConfig, prune
    from edgeopt.train import TrainConfig, Trainer

    def cfg(epochs_: int, seed: int) -> PruneConfig:
        return PruneConfig(method="structured", target="macs", ratio=macs, finetune_epochs=epochs_, finetune_lr=lr,
                           finetune_max_steps_per_epoch=max_steps, finetune_kd_temperature=temperature,
                           finetune_kd_alpha=alpha, seed=seed)

    oneshot = prune(model, cfg(0, 0), data, progress=progress)
    out = {"unpruned": test_acc(model, data), "oneshot": test_acc(oneshot.model, data), "kd": [], "plain": [],
           "params_before": oneshot.params_before, "params_after": oneshot.params_after,
           "macs_before": oneshot.macs_before, "macs_after": oneshot.macs_after}
    has_teacher = "teacher" in inspect.signature(prune).parameters
    out["api"] = "prune(teacher=...)" if has_teacher else "prune + Trainer(loss_fn=distill_loss_fn(teacher))"
    for k in range(seeds):
        if has_teacher:
            kd = prune(model, cfg(epochs, k), data, progress=progress, teacher=model).model
            plain = prune(model, cfg(epochs, k), data, progress=progress).model
        else:
            tcfg = TrainConfig(epochs=epochs, lr=lr, seed=k, augment=True, max_steps_per_epoch=max_steps,
                               progress=progress, out_dir=None)
            fn = distill_loss_fn(model, DistillConfig(temperature=temperature, alpha=alpha))
            kd, plain = copy.deepcopy(oneshot.model), copy.deepcopy(oneshot.model)
            Trainer(tcfg, loss_fn=fn).fit(kd, fn.data(data))
            Trainer(tcfg).fit(plain, data)
        out["kd"].append(test_acc(kd, data))
        out["plain"].append(test_acc(plain, data))
        print(f"[bench] prune recovery seed {k}: kd {out['kd'][-1]:.4f} plain {out['plain'][-1]:.4f}",
              file=sys.stderr, flush=True)
    out["summary"] = summarize(out["kd"], out["plain"])
    return out


def prune_part(args, out: Path, force: set[str], suffix: str) -> None:
    from edgeopt.jobs import load_data_for
    from edgeopt.models import load_checkpoint

    if args.prune_checkpoint:
        ckpt = Path(args.prune_checkpoint)
    else:  # the Fashion-MNIST teacher of part fmnist (trained here when missing)
        ckpt, _ = trained_teacher(out.parent / "fmnist" / "teacher", args.data, "cnn_teacher", args.teacher_epochs,
                                  augment=True, max_steps=args.max_steps)
    model, side = load_checkpoint(ckpt)
    data = load_data_for(ckpt)
    cells = Cells(out / "cells.json", force)
    c = cells.get(f"recovery, {args.seeds} seed(s), {args.prune_epochs} epoch(s), macs {args.prune_macs}", lambda: prune_recovery_with_distillation(
        model, data, macs=args.prune_macs, epochs=args.prune_epochs, lr=args.prune_lr, seeds=args.seeds,
        max_steps=args.max_steps))
    arch = (side.get("arch") or {}).get("name", "model")
    if "error" in c:
        rows = [["structured pruning", "–", "–", "–", f"failed: {c['error'][:160]}", "–"]]
    else:
        s = c["summary"]
        pruned = (f"-{100 * args.prune_macs:.0f}% MACs ({c['macs_before'] / 1e6:.1f}M -> {c['macs_after'] / 1e6:.1f}M, "
                  f"params {c['params_before']:,} -> {c['params_after']:,})")
        rows = [[f"{arch} unpruned", f"{100 * c['unpruned']:.2f}", "–", "–", "–", "–"],
                [f"pruned {pruned}, no fine-tuning (BN statistics re-estimated)", f"{100 * c['oneshot']:.2f}",
                 "–", "–", "–", "0"],
                ["pruned, plain fine-tuning (labels)", pm(s["baseline_mean"], s["baseline_std"]), "–", "–", "–",
                 f"{args.prune_epochs}"],
                ["pruned, fine-tuning with KD from the unpruned model", pm(s["student_mean"], s["student_std"]),
                 *gain_cells(s), f"{args.prune_epochs}"]]
    save(f"distillation_prune_recovery{suffix}",
         f"Pruning recovered with distillation vs plain fine-tuning: {arch} on {data.name} (test split)",
         ["model", f"top-1 % (mean ± std, {args.seeds} seeds)", "gain (points)", "threshold (points)", "verdict",
          "fine-tuning epochs"], rows,
         notes=(f"Checkpoint {ckpt}. Structured pruning (l1, local, MACs target), then per seed both arms from the "
                f"same pruned weights: SGD + cosine, lr {args.prune_lr}, augmentation on (the teacher runs on every "
                f"batch), response KD T 4, alpha 0.9 from the unpruned model vs cross-entropy alone; "
                f"{c.get('api', '?')}; cell wall time {c.get('seconds', 0) / 60:.1f} min."
                + (f" At most {args.max_steps} steps per epoch." if args.max_steps else "")),
         extra={"cell": c})
    for r in rows:
        print(r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default=",".join(STEPS), help=f"parts to run (of {','.join(STEPS)})")
    ap.add_argument("--out-dir", default="runs/bench/distill")
    ap.add_argument("--data", default="fashion-mnist", help="data of parts fmnist and prune")
    ap.add_argument("--epochs", type=int, default=5, help="fmnist: epochs per model trained")
    ap.add_argument("--student-images", type=int, default=None,
                    help="fmnist: students (and their baseline) train on this many training images, the same "
                         "number per class (the teacher on all); results in <out-dir>/fmnist/students_N and table "
                         "distillation_fmnist_N")
    ap.add_argument("--teacher-epochs", type=int, default=5, help="fmnist: cnn_teacher training epochs")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="fmnist: methods to run")
    ap.add_argument("--cifar-data", default="imagefolder:../shared/data/cifar10-jpeg")
    ap.add_argument("--cifar-epochs", type=int, default=5)
    ap.add_argument("--cifar-teacher-epochs", type=int, default=15)
    ap.add_argument("--teacher-checkpoint", default=None, help="cifar: a trained mobilenetv2_teacher checkpoint")
    ap.add_argument("--prune-checkpoint", default=None, help="prune: the model to prune (default: the fmnist teacher)")
    ap.add_argument("--prune-macs", type=float, default=0.5)
    ap.add_argument("--prune-epochs", type=int, default=2)
    ap.add_argument("--prune-lr", type=float, default=0.01)
    ap.add_argument("--max-steps", type=int, default=None, help="cap steps per epoch (smoke runs)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: digits / synthetic data, 1 epoch of 5 steps, 2 seeds, results named *_smoke")
    ap.add_argument("--force", default="", help="cells to redo even when cached")
    args = ap.parse_args()
    suffix = ""
    if args.quick:
        suffix = "_smoke"
        args.max_steps = args.max_steps or 5
        args.epochs = args.teacher_epochs = args.cifar_epochs = args.cifar_teacher_epochs = args.prune_epochs = 1
        args.seeds = 2
        if args.data == ap.get_default("data"):
            args.data = "digits"
        if args.cifar_data == ap.get_default("cifar_data"):
            args.cifar_data = "synthetic"
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        sys.exit(f"unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")

    import torch

    torch.set_num_threads(2)
    force = set(filter(None, args.force.split(",")))
    out = Path(args.out_dir)
    steps = [s for s in args.steps.split(",") if s]
    for step in steps:
        {"fmnist": fmnist, "cifar": cifar, "prune": prune_part}[step](args, out / step, force, suffix)


if __name__ == "__main__":
    main()
