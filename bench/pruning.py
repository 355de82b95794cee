"""The pruning table: what each kind of pruning buys on the deployed artifact.

Every variant is measured **on its artifact** in its runtime, with the ratios the pruning
issue asks for measured in the same run: accuracy on the whole test split, MACs,
parameters, ONNX Runtime batch-1 latency (1 thread) of fp32 and int8 (static per-channel)
against the unpruned model's, LiteRT's the same way, and file sizes (dense, sparse,
gzip'd). Four tables are written:

* ``pruning_<name>``: unpruned, structured (>= 50 % of MACs removed, then recovery
  fine-tuning) and unstructured 70 % (recovered), fp32 and int8;
* ``pruning_<name>_oneshot``: magnitude vs OBS at 50 / 70 / 90 % before any fine-tuning;
* ``pruning_<name>_curve``: the accuracy-vs-sparsity curve of iterative pruning to 90 %.

Each finished step is cached in ``--out-dir/<name>/cells.json`` (and its checkpoints beside
it), so an interrupted run resumes where it stopped: ``--force STEP`` measures a step again
(reusing its pruned and fine-tuned checkpoint; delete that file to prune and fine-tune anew).

Usage:
    # MobileNetV2 (stem stride 1) trained on the CIFAR-10 JPEG copy (training command in
    # docs/pruning.md#measured; ~1 h on 2 cores)
    python bench/pruning.py --checkpoint runs/bench/mnv2-cifar10/last.safetensors \\
        --data imagefolder:../shared/data/cifar10-jpeg --recover-epochs 4
    # simple_cnn on Fashion-MNIST (trained here first when the checkpoint is missing)
    python bench/pruning.py --checkpoint runs/bench/fmnist/best.safetensors --data fashion-mnist \\
        --train-model simple_cnn --train-epochs 3 --recover-epochs 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Cells, accuracy, checkpoint_or_train, interleaved_medians, load_bench_model, median_ms, save  # noqa: E402

#: in the order they run: the cheap one-shot comparison first, the long fine-tunings after
STEPS = ("base", "oneshot", "structured", "unstructured", "curve")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--name", default=None, help="results name (default: model_dataset)")
    ap.add_argument("--out-dir", default="runs/bench/pruning")
    ap.add_argument("--train-model", default=None, help="train this zoo model first when --checkpoint is missing")
    ap.add_argument("--train-epochs", type=int, default=3)
    ap.add_argument("--importance", default="l1", help="structured importance (l1, taylor, obd, ...)")
    ap.add_argument("--macs", type=float, default=0.5, help="fraction of MACs the structured variant removes")
    ap.add_argument("--round-to", type=int, default=None, help="structured channel rounding (default: PruneConfig's)")
    ap.add_argument("--scope", default="local", help="structured scope: local (uniform) or global")
    ap.add_argument("--unstructured", type=float, default=0.7, help="sparsity of the unstructured variant")
    ap.add_argument("--recover-epochs", type=int, default=4, help="fine-tuning epochs after structured pruning")
    ap.add_argument("--recover-epochs-unstructured", type=int, default=None,
                    help="fine-tuning epochs after unstructured pruning (default: --recover-epochs)")
    ap.add_argument("--recover-lr", type=float, default=0.01)
    ap.add_argument("--unstructured-method", default="unstructured", choices=("unstructured", "obs"),
                    help="how the unstructured variant is pruned before its recovery (magnitude or OBS)")
    ap.add_argument("--unstructured-exclude", default="",
                    help="comma-separated layer patterns the unstructured variant leaves dense (e.g. depthwise convs: "
                         "'re:features\\.\\d+\\.conv\\.1\\.0,features.1.conv.0.0' on MobileNetV2); raise "
                         "--unstructured so the overall sparsity stays where you want it (the table reports it)")
    ap.add_argument("--unstructured-teacher", action="store_true",
                    help="recover the unstructured variant with the unpruned model as its teacher (response KD, "
                         "PruneConfig's temperature and alpha) instead of plain fine-tuning")
    ap.add_argument("--structured-more-epochs", type=int, default=0,
                    help="a second recovery cycle of N epochs (cosine restarted at --recover-lr) on the "
                         "recovered structured model, measured as its own row")
    ap.add_argument("--max-steps", type=int, default=None, help="cap fine-tuning steps per epoch (quick runs)")
    ap.add_argument("--curve", default="0.3,0.5,0.7,0.8,0.9", help="sparsities of the iterative curve")
    ap.add_argument("--curve-epochs", type=int, default=1, help="fine-tuning epochs per curve step")
    ap.add_argument("--curve-max-steps", type=int, default=None,
                    help="cap fine-tuning steps per epoch of each curve step (default: --max-steps)")
    ap.add_argument("--litert", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure LiteRT (.tflite fp32 and int8)")
    ap.add_argument("--runs", type=int, default=200, help="timed batch-1 runs per artifact")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"steps to run (of {','.join(STEPS)})")
    ap.add_argument("--force", default="", help="steps to redo even when cached")
    args = ap.parse_args()
    if args.recover_epochs_unstructured is None:
        args.recover_epochs_unstructured = args.recover_epochs

    import torch

    from edgeopt.prune import PruneConfig

    torch.set_num_threads(2)  # pruning and fine-tuning; every timing below sets 1 thread
    ckpt = checkpoint_or_train(args.checkpoint, args.data, args.train_model, args.train_epochs, augment=True)
    model, arch, data, name, out = load_bench_model(ckpt, args.data, args.name, args.out_dir)
    cells = Cells(out / "cells.json", set(filter(None, args.force.split(","))))
    steps = set(args.steps.split(","))
    bench = Bench(args, model, data, out)
    t0 = time.perf_counter()

    base = cells.get("base", bench.base)
    if "error" in base:
        sys.exit(f"the unpruned model could not be measured: {base['error']}")
    o = cells.get("oneshot", bench.oneshot) if "oneshot" in steps else {"error": "not run"}
    timed = {"base": base}
    for step in ("structured", "unstructured"):
        if step in steps:
            timed[step] = cells.get(step, getattr(bench, step))
    if "structured" in steps and args.structured_more_epochs:
        timed["structured_more"] = cells.get("structured_more", bench.structured_more)
    bench.retime(timed)
    rows = [bench.row("unpruned", base, base)]
    if "structured" in steps:
        s = timed["structured"]
        rt = args.round_to or PruneConfig().round_to
        rows.append(bench.row(f"structured -{100 * args.macs:.0f}% MACs ({args.importance}, {args.scope}, round_to {rt}), "
                              f"{args.recover_epochs} ep recovery", s, base))
        if "structured_more" in timed:
            rows.append(bench.row(f"the same, + {args.structured_more_epochs} ep (second cosine cycle): "
                                  f"{args.recover_epochs + args.structured_more_epochs} ep recovery in all",
                                  timed["structured_more"], base))
    if "unstructured" in steps:
        u = timed["unstructured"]
        dense = (f" ({100 * args.unstructured:.1f}% of each layer but {args.unstructured_exclude}, which stay dense; "
                 f"{100 * u['sparsity_all']:.1f}% of all conv/linear weights)" if args.unstructured_exclude else "")
        rows.append(bench.row(f"unstructured {100 * args.unstructured:.0f}%{dense}"
                              f"{' (OBS)' if args.unstructured_method == 'obs' else ' (magnitude)'}, "
                              f"{args.recover_epochs_unstructured} ep recovery"
                              f"{' with KD from the unpruned model' if args.unstructured_teacher else ''}", u, base))
    header = ["variant", "top-1 %", "drop", "MACs M", "params", "ORT fp32 ms", "vs unpruned ORT",
              "vs fp32 eager", "int8 top-1 %", "ORT int8 ms", "vs unpruned int8", "LiteRT fp32 vs unpruned",
              "LiteRT int8 vs unpruned", "file MB (fp32 / sparse / sparse int8)"]
    title = f"Pruning: {arch} on {data.name.split('/')[-1]} (test split, {base.get('n_test')} images)"
    notes = (f"Checkpoint {ckpt}. Latency: batch-1, 1 thread; every variant of a runtime is timed in alternation "
             f"in this invocation ({bench.rounds} rounds of 20 runs, median of the round medians); ratios are the unpruned artifact's median / the variant's (>1: faster). int8: ONNX Runtime "
             "static per-channel (QDQ), LiteRT int8 through litert-torch. Drop: fp32 points lost against the "
             f"unpruned model. Recovery: SGD, cosine, lr {args.recover_lr}, augmentation on. "
             f"Wall time of this invocation {time.perf_counter() - t0:.0f} s (cached steps excluded).")
    save(f"pruning_{name}", title, header, rows, notes=notes, extra={"cells": cells.data})

    if "oneshot" in steps:
        if "error" not in o:
            orows = [[f"{100 * r['sparsity']:.0f}%", f"{100 * r['magnitude']:.2f}",
                      f"{100 * r['obs_layer']:.2f}" if "obs_layer" in r else "–", f"{100 * r['obs']:.2f}",
                      f"{100 * (r['obs'] - r['magnitude']):+.2f}"] for r in o["points"]]
            save(f"pruning_{name}_oneshot", f"One-shot unstructured pruning, magnitude vs OBS: {arch} on "
                 f"{data.name.split('/')[-1]} (no fine-tuning)",
                 ["sparsity", "magnitude top-1 %", "OBS, layer target (SparseGPT) top-1 %",
                  "OBS, dense target (default) top-1 %", "OBS - magnitude (points)"], orows,
                 notes=(f"Unpruned {100 * base['acc']:.2f} %. Same layers (first and last protected), local "
                        f"(per-layer) sparsity; OBS: layer-wise Optimal Brain Surgeon with {o['calibration']} "
                        "calibration images, layers pruned in order on the already-pruned model's activations; "
                        "layer target: each layer fits its own output on those activations (SparseGPT); dense "
                        "target: each layer fits the unpruned model's output (obs_target, docs/pruning.md). "
                        "Batch norms re-estimated on the calibration images for every column."),
                 extra={"cell": o})
    if "curve" in steps:
        c = cells.get("curve", bench.curve)
        if "error" not in c:
            crow = [[f"{100 * p['sparsity']:.1f}%", f"{100 * p['acc']:.2f}", f"{100 * (base['acc'] - p['acc']):.2f}"]
                    for p in c["points"]]
            save(f"pruning_{name}_curve", f"Accuracy vs sparsity, iterative magnitude pruning: {arch} on "
                 f"{data.name.split('/')[-1]}", ["sparsity", "top-1 %", "drop (points)"], crow,
                 notes=(f"Iterative prune -> fine-tune ({args.curve_epochs} epoch(s) per step"
                        + (f" of at most {args.curve_max_steps or args.max_steps} steps" if (args.curve_max_steps or args.max_steps) else "")
                        + f", lr {args.recover_lr}) "
                        f"through sparsities {args.curve}; each point is the cycle's checkpoint on the test split."),
                 extra={"cell": c})
    for r in rows:
        print(r)


class Bench:
    """The steps; each returns a JSON-ready dict (cached by :class:`Cells`)."""

    def __init__(self, args, model, data, out: Path) -> None:
        self.args, self.model, self.data, self.out = args, model, data, out
        self.x, self.y = data.samples(10**9, split="test")

    # -- measurements ------------------------------------------------------------------
    def acc(self, target) -> float:
        from edgeopt.runtime import get_runner

        return accuracy(get_runner(target, threads=2), self.x, self.y)

    def ms(self, target) -> float:
        return median_ms(target, self.data.spec, self.args.runs)

    def measure(self, model, stem: str) -> dict:
        """fp32 eager / ONNX / int8 ONNX (/ LiteRT fp32 + int8) of ``model``."""
        from edgeopt.evaluate.macs import count_macs
        from edgeopt.export import export_model
        from edgeopt.quantize import QuantConfig, quantize

        d: dict[str, Any] = {"n_test": len(self.x), "params": sum(p.numel() for p in model.parameters()),
                             "nonzero": sum(int(p.count_nonzero()) for p in model.parameters()),
                             "macs": count_macs(model).total_macs}
        d["acc"] = self.acc(model)
        d["eager_ms"] = self.ms(model)
        onnx = export_model(model, "onnx", self.out / f"{stem}.onnx", samples=self.x[:256]).artifact
        d["onnx_bytes"], d["onnx_ms"] = onnx.size_bytes, self.ms(onnx)
        q = quantize(model, QuantConfig(), self.data, self.out / f"{stem}_int8", progress=False)
        d["int8_acc"], d["int8_ms"], d["int8_bytes"] = self.acc(q.artifact), self.ms(q.artifact), q.artifact.size_bytes
        d["int8_warnings"] = q.warnings
        if self.args.litert:
            try:
                tfl = export_model(model, "tflite", self.out / f"{stem}.tflite", samples=self.x[:64]).artifact
                d["litert_ms"] = self.ms(tfl)
                ql = quantize(model, QuantConfig(backend="litert"), self.data, self.out / f"{stem}_int8_litert",
                              progress=False)
                d["litert_int8_ms"], d["litert_int8_acc"] = self.ms(ql.artifact), self.acc(ql.artifact)
            except Exception as exc:  # noqa: BLE001 - a missing extra or failed conversion is a cell note
                d["litert_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        return d

    def row(self, label: str, d: dict, base: dict) -> list:
        if "error" in d:
            return [label, *["–"] * 12, f"failed: {d['error'][:160]}"]

        def ratio(k: str, ref: dict | None = None) -> str:
            ref = ref or base
            return f"{ref[k] / d[k]:.2f}x" if d.get(k) and ref.get(k) else "–"

        sizes = f"{d['onnx_bytes'] / 1e6:.2f}"
        if d.get("sparse_bytes"):
            sizes = (f"{d['dense_bytes'] / 1e6:.2f} / {d['sparse_bytes'] / 1e6:.2f} ({d['sparse_bytes'] / d['dense_bytes']:.2f}x)"
                     f" / {d['sparse_int8_bytes'] / 1e6:.2f} ({d['sparse_int8_bytes'] / d['dense_bytes']:.3f}x)")
        return [label, f"{100 * d['acc']:.2f}", f"{100 * (base['acc'] - d['acc']):.2f}", f"{d['macs'] / 1e6:.1f}",
                f"{d['params']:,}" + (f" ({d['nonzero']:,} non-zero)" if d["nonzero"] < d["params"] * 0.95 else ""),
                f"{d['onnx_ms']:.3f}", ratio("onnx_ms"), f"{base['eager_ms'] / d['onnx_ms']:.2f}x",
                f"{100 * d['int8_acc']:.2f}", f"{d['int8_ms']:.3f}", ratio("int8_ms"),
                ratio("litert_ms"), ratio("litert_int8_ms"), sizes]

    # -- steps -------------------------------------------------------------------------
    STEMS = {"base": "unpruned", "structured": "structured", "unstructured": "unstructured",
             "structured_more": "structured_more"}
    FILES = {"onnx_ms": "{}.onnx", "int8_ms": "{}_int8.onnx", "litert_ms": "{}.tflite",
             "litert_int8_ms": "{}_int8_litert.tflite"}

    @property
    def rounds(self) -> int:
        return max(5, self.args.runs // 20)

    def retime(self, cells: dict[str, dict]) -> None:
        """Re-time every artifact of a runtime in alternation, in this invocation.

        Steps are cached and may have run an hour apart on a machine whose speed drifts; the
        ratios in the table come from this one interleaved measurement (bench/_common.py).
        """
        from edgeopt.models import load_checkpoint

        ok = {k: d for k, d in cells.items() if "error" not in d}
        eager = {k: load_checkpoint(self.args.checkpoint if k == "base" else self.out / f"{self.STEMS[k]}.safetensors")[0].eval()
                 for k in ok}
        for key, pattern in [("eager_ms", None), *self.FILES.items()]:
            targets = {k: eager[k] if pattern is None else self.out / pattern.format(self.STEMS[k]) for k in ok}
            targets = {k: t for k, t in targets.items() if not isinstance(t, Path) or t.is_file()}
            if targets:
                for k, v in interleaved_medians(targets, self.data.spec, rounds=self.rounds).items():
                    ok[k][key] = v
                print(f"[bench] timed {key}: " + ", ".join(f"{k} {ok[k][key]:.3f}" for k in targets),
                      file=sys.stderr, flush=True)

    def base(self) -> dict:
        return self.measure(self.model, "unpruned")

    def _pruned(self, stem: str, cfg, teacher=None) -> Any:
        """Prune + fine-tune once; the checkpoint is reused by a re-run (no second fine-tune)."""
        from edgeopt.models import load_checkpoint
        from edgeopt.prune import prune
        from edgeopt.prune.jobs import save_pruned

        path = self.out / f"{stem}.safetensors"
        if path.is_file():  # --force re-measures; delete the checkpoint to prune and fine-tune again
            return load_checkpoint(path)[0], json.loads(path.with_suffix(".json").read_text())["extra"]["pruning"]
        res = prune(self.model, cfg, self.data, progress=True, teacher=teacher)
        save_pruned(res, path)
        return res.model, res.to_dict()

    def structured(self) -> dict:
        from edgeopt.prune import PruneConfig

        a = self.args
        extra = {} if a.round_to is None else {"round_to": a.round_to}
        cfg = PruneConfig(method="structured", target="macs", ratio=a.macs, importance=a.importance, scope=a.scope, **extra,
                          finetune_epochs=a.recover_epochs, finetune_lr=a.recover_lr,
                          finetune_max_steps_per_epoch=a.max_steps)
        model, summary = self._pruned("structured", cfg)
        d = self.measure(model, "structured")
        d["pruning"] = {k: summary.get(k) for k in ("params_before", "params_after", "macs_before", "macs_after",
                                                    "history", "warnings")}
        return d

    def structured_more(self) -> dict:
        """A second recovery cycle on the recovered structured model (its own checkpoint)."""
        from edgeopt.models import load_checkpoint, save_checkpoint
        from edgeopt.prune import PruneConfig
        from edgeopt.prune._base import Pruned
        from edgeopt.prune.schedule import finetune

        a = self.args
        path = self.out / "structured_more.safetensors"
        if not path.is_file():
            model = load_checkpoint(self.out / "structured.safetensors")[0]
            cfg = PruneConfig(method="structured", finetune_epochs=a.structured_more_epochs,
                              finetune_lr=a.recover_lr, finetune_max_steps_per_epoch=a.max_steps)
            finetune(Pruned(model=model), cfg, self.data, progress=True)
            save_checkpoint(path, model.eval())
        model = load_checkpoint(path)[0]
        return self.measure(model, "structured_more")

    def unstructured(self) -> dict:
        from edgeopt.prune import PruneConfig
        from edgeopt.prune.sparse_storage import save_sparse

        a = self.args
        exclude = [p for p in a.unstructured_exclude.split(",") if p]
        cfg = PruneConfig(method=a.unstructured_method, ratio=a.unstructured, exclude=exclude,
                          finetune_epochs=a.recover_epochs_unstructured,
                          finetune_lr=a.recover_lr, finetune_max_steps_per_epoch=a.max_steps)
        model, summary = self._pruned("unstructured", cfg, teacher=self.model if a.unstructured_teacher else None)
        d = self.measure(model, "unstructured")
        dense = self.out / "unstructured.safetensors"
        d["dense_bytes"] = dense.stat().st_size
        d["sparse_bytes"] = save_sparse(self.out / "unstructured.sparse.safetensors", model, values="fp32").stat().st_size
        d["sparse_int8_bytes"] = save_sparse(self.out / "unstructured.sparse-int8.safetensors", model,
                                             values="int8").stat().st_size
        d["sparsity"] = summary.get("sparsity")
        d["sparsity_all"] = _sparsity(model)  # of every conv/linear weight, excluded and protected layers too
        return d

    def oneshot(self) -> dict:
        from edgeopt.prune import PruneConfig, prune

        points = []
        for s in (0.5, 0.7, 0.9):
            p = {"sparsity": s}
            for key, method, extra in (("magnitude", "unstructured", {}), ("obs", "obs", {}),
                                       ("obs_layer", "obs", {"obs_target": "layer"})):
                res = prune(self.model, PruneConfig(method=method, ratio=s, calibration_samples=256, **extra),
                            self.data, progress=True)
                p[key] = self.acc(res.model)
            points.append(p)
            print(f"[bench] oneshot {p}", file=sys.stderr, flush=True)
        return {"points": points, "calibration": 256}

    def curve(self) -> dict:
        from edgeopt.models import load_checkpoint
        from edgeopt.prune import PruneConfig, prune

        a = self.args
        levels = [float(s) for s in a.curve.split(",")]
        points = []
        current = self.model
        for k, s in enumerate(levels):
            path = self.out / f"curve_{round(100 * s)}.safetensors"
            if path.is_file():
                current = load_checkpoint(path)[0]
            else:
                from edgeopt.prune.jobs import save_pruned

                steps = a.curve_max_steps or a.max_steps
                res = prune(current, PruneConfig(method="unstructured", ratio=s, finetune_epochs=a.curve_epochs,
                                                 finetune_lr=a.recover_lr, finetune_max_steps_per_epoch=steps),
                            self.data, progress=True)
                save_pruned(res, path)
                current = res.model
            sparsity = _sparsity(current)
            points.append({"ratio": s, "sparsity": sparsity, "acc": self.acc(current)})
            print(f"[bench] curve {points[-1]}", file=sys.stderr, flush=True)
        return {"points": points}


def _sparsity(model) -> float:
    from edgeopt.prune import prunable_layers

    ws = [model.get_submodule(n).weight for n in prunable_layers(model)]
    return 1.0 - sum(int(w.count_nonzero()) for w in ws) / sum(w.numel() for w in ws)


if __name__ == "__main__":
    main()
