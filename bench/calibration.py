"""Which calibration should be the default? minmax, percentile and entropy on several models.

For each checkpoint: static int8 (ONNX Runtime, per channel, 512 calibration images) with each
calibration method, the int8 file's top-1 on the whole test split against the float model's,
fed with the checkpoint's own preprocessing. The default (``QuantConfig.calibration``) is the
method with the smallest worst-case drop over the models; the table says which, measured.

Usage (the checkpoints the other benchmarks train; a missing one is skipped with a note):
    python bench/calibration.py --data-cifar imagefolder:../shared/data/cifar10-jpeg
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save

#: (label, checkpoint, data): models trained by the other benchmarks (bench/quantization.py,
#: bench/distillation.py) and one trained elsewhere and imported (bench/byom.py).
MODELS = [
    ("mobilenetv2 (CIFAR-10)", "runs/bench/mnv2-cifar10/last.safetensors", "cifar"),
    ("mobilenetv2_teacher (CIFAR-10)", "runs/bench/distill/cifar/teacher/best.safetensors", "cifar"),
    ("simple_cnn (Fashion-MNIST)", "runs/bench/fmnist/best.safetensors", "fashion-mnist"),
    ("cnn_teacher (Fashion-MNIST)", "runs/bench/distill/fmnist/teacher/best.safetensors", "fashion-mnist"),
    ("tv:resnet18 trained elsewhere (CIFAR-10)", "runs/bench/byom/resnet18/imported.safetensors", "cifar"),
]
METHODS = ("minmax", "percentile", "entropy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-cifar", default="imagefolder:../shared/data/cifar10-jpeg")
    ap.add_argument("--out", default="runs/bench/calibration")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from edgeopt.evaluate import evaluate_variant
    from edgeopt.jobs import load_data_for
    from edgeopt.models import load_checkpoint
    from edgeopt.pipeline import DataConfig
    from edgeopt.quantize import QuantConfig, quantize

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows, drops, notes = [], {m: [] for m in METHODS}, []
    for label, ckpt, data in MODELS:
        if not Path(ckpt).is_file():
            notes.append(f"{label}: {ckpt} not found (train it with its benchmark), skipped")
            continue
        name = args.data_cifar if data == "cifar" else data
        model, _ = load_checkpoint(ckpt)
        dm = load_data_for(ckpt, DataConfig(name=name))
        common = {"threads": args.threads, "latency_runs": 3, "latency_warmup": 1, "throughput_batch": 0, "memory": False, "progress": False}
        fp32 = evaluate_variant("fp32", model, dm, model=model, **common)["accuracy"]["top1"]
        row = [label, f"{100 * fp32:.2f}"]
        for m in METHODS:
            out = Path(args.out) / Path(ckpt).parent.name / m
            print(f"[bench] {label}: {m} ...", flush=True)
            res = quantize(model, QuantConfig(backend="onnxruntime", calibration=m), dm, out, progress=False)
            top1 = evaluate_variant(m, res.artifact, dm, model=model, **common)["accuracy"]["top1"]
            d = 100 * (fp32 - top1)
            drops[m].append(d)
            agr = (res.agreement or {}).get("top1_agreement")
            row.append(f"{100 * top1:.2f} ({-d:+.2f})" + (f", agr. {100 * agr:.1f}" if agr is not None else ""))
        rows.append(row)
    worst = {m: max(v) for m, v in drops.items() if v}
    mean = {m: sum(v) / len(v) for m, v in drops.items() if v}
    best = min(worst, key=lambda m: (worst[m], mean[m])) if worst else None
    rows.append(["**worst drop / mean drop (points)**", ""]
                + [f"{worst[m]:.2f} / {mean[m]:.2f}" if m in worst else "" for m in METHODS])
    default = QuantConfig().calibration
    notes_text = (
        "Static int8, ONNX Runtime, per channel, 512 calibration images from the training split; top-1 on "
        "the whole test split with each checkpoint's own preprocessing; in brackets the change against the "
        "float model in points (negative: a loss), then the int8 file's top-1 agreement with its fake-quant "
        f"reference. Smallest worst-case drop: **{best}**; edgeopt's default calibration is **{default}**"
        + (" (the same)." if best == default else " (not the same: review the default).")
        + f" Wall time {time.perf_counter() - t0:.0f} s." + ("".join(f" {n}." for n in notes))
    )
    save("calibration", "Calibration methods on several models (static int8, ONNX Runtime)",
         ["model", "fp32 top-1 %"] + [f"{m}: int8 top-1 % (drop)" for m in METHODS], rows, notes_text,
         extra={"worst_drop": worst, "mean_drop": mean, "best": best, "default": default})


if __name__ == "__main__":
    main()
