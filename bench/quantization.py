"""The quantization table: size, accuracy and batch-1 latency of every method and backend.

Each int8 variant is built with ``edgeopt.quantize.quantize`` and measured **on the artifact**
in its own runtime: top-1 accuracy on the whole test split, file size, batch-1 median
latency (one thread, after warm-up), the top-1 agreement with its fake-quant PyTorch
reference, and the ratios that the quantization issue asks for, measured in the same run:
size vs the fp32 ONNX file and speed vs fp32 PyTorch eager.

Usage:
    # MobileNetV2 (stem stride 1) trained on the CIFAR-10 JPEG copy
    python bench/quantization.py --checkpoint runs/bench/mnv2-cifar10/best.safetensors \\
        --data imagefolder:../shared/data/cifar10-jpeg --qat-max-steps 150
    # simple_cnn on Fashion-MNIST (trained here first when the checkpoint is missing)
    python bench/quantization.py --checkpoint runs/bench/fmnist/best.safetensors --data fashion-mnist \\
        --train-model simple_cnn --train-epochs 2
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import accuracy, checkpoint_or_train, load_bench_model, median_ms, save

#: (row name, QuantConfig fields); QAT fields are added from the command line
VARIANTS = [
    ("onnxruntime static per-tensor", {"per_channel": False}),
    ("onnxruntime static per-channel", {}),
    ("onnxruntime static per-channel entropy", {"calibration": "entropy"}),
    ("onnxruntime static per-channel percentile", {"calibration": "percentile", "percentile": 99.99}),
    ("onnxruntime QAT per-channel", {"method": "qat"}),
    ("torch x86 static (FX, TorchScript)", {"backend": "torch", "engine": "x86"}),
    ("torch pt2e-x86 static (inductor)", {"backend": "torch", "engine": "pt2e-x86"}),
    ("litert static per-channel", {"backend": "litert"}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--name", default=None, help="results name (default: model_dataset)")
    ap.add_argument("--out-dir", default="runs/bench/quantization")
    ap.add_argument("--train-model", default=None, help="train this zoo model first when --checkpoint is missing")
    ap.add_argument("--train-epochs", type=int, default=2)
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--qat-lr", type=float, default=1e-3)
    ap.add_argument("--qat-max-steps", type=int, default=None, help="cap QAT steps per epoch")
    ap.add_argument("--qat-augment", action="store_true")
    ap.add_argument("--runs", type=int, default=200, help="timed batch-1 runs per variant")
    ap.add_argument("--only", nargs="*", default=None, help="row names (substrings) to run")
    args = ap.parse_args()

    import torch

    from edgeopt.export import export_model
    from edgeopt.quantize import QuantConfig, quantize
    from edgeopt.runtime import get_runner

    torch.set_num_threads(1)
    ckpt = checkpoint_or_train(args.checkpoint, args.data, args.train_model, args.train_epochs)
    model, arch, data, name, out = load_bench_model(ckpt, args.data, args.name, args.out_dir)
    x, y = data.samples(10**9, split="test")

    def latency(target) -> float:
        return median_ms(target, data.spec, args.runs)

    t0 = time.perf_counter()
    fp32_acc = accuracy(get_runner(model, threads=1), x, y)
    eager_ms = latency(model)
    fp32_onnx = export_model(model, "onnx", out / "fp32.onnx", samples=x[:256]).artifact
    onnx_ms = latency(fp32_onnx)
    fp32_size = fp32_onnx.size_bytes
    header = ["variant", "file", "size MB", "size vs fp32", "top-1 %", "drop (points)", "agreement %",
              "p50 ms (b=1)", "speed-up vs eager"]
    rows = [
        ["fp32 PyTorch eager", "checkpoint", f"{ckpt.stat().st_size / 1e6:.2f}", "–", f"{100 * fp32_acc:.2f}", "–",
         "–", f"{eager_ms:.3f}", "1.00x"],
        ["fp32 ONNX Runtime", "onnx", f"{fp32_size / 1e6:.2f}", "1.00x",
         f"{100 * accuracy(get_runner(fp32_onnx, threads=1), x, y):.2f}", "–", "–", f"{onnx_ms:.3f}",
         f"{eager_ms / onnx_ms:.2f}x"],
    ]
    details = {}
    for label, fields in VARIANTS:
        if args.only and not any(s in label for s in args.only):
            continue
        f = dict(fields)
        if f.get("method") == "qat":
            f.update(qat_epochs=args.qat_epochs, qat_lr=args.qat_lr, qat_max_steps_per_epoch=args.qat_max_steps,
                     qat_augment=args.qat_augment)
        print(f"[bench] {label}", file=sys.stderr, flush=True)
        t1 = time.perf_counter()
        try:
            res = quantize(model, QuantConfig(**f), data, out / label.split(" (")[0].replace(" ", "_"))
            art = res.artifact
            acc = accuracy(get_runner(art, threads=1), x, y)
            ms = latency(art)
            agr = res.agreement["top1_agreement"] if res.agreement else None
            rows.append([label, art.format, f"{art.size_bytes / 1e6:.2f}", f"{art.size_bytes / fp32_size:.3f}x",
                         f"{100 * acc:.2f}", f"{100 * (fp32_acc - acc):.2f}",
                         "–" if agr is None else f"{100 * agr:.2f}", f"{ms:.3f}", f"{eager_ms / ms:.2f}x"])
            details[label] = {"config": res.config.to_dict(), "float_layers": res.float_layers,
                              "warnings": res.warnings, "agreement": res.agreement, "seconds": time.perf_counter() - t1,
                              "accuracy": acc, "latency_ms": ms, "size_bytes": art.size_bytes,
                              "qat": res.meta.get("qat")}
        except Exception as exc:  # noqa: BLE001 - one failed backend is a row, not a crash
            traceback.print_exc()
            rows.append([label, "–", "–", "–", "–", "–", "–", "–", f"failed: {type(exc).__name__}: {str(exc)[:120]}"])
            details[label] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"[bench] {rows[-1]}", file=sys.stderr, flush=True)
    qat_note = f"QAT: {args.qat_epochs} epoch(s), lr {args.qat_lr}" + (
        f", at most {args.qat_max_steps} steps per epoch" if args.qat_max_steps else "")
    save(
        f"quantization_{name}",
        f"Quantization: {arch} on {data.name.split('/')[-1]} (test split, {len(x)} images)",
        header, rows,
        notes=(f"Checkpoint {ckpt}. Size ratio: int8 file / fp32 ONNX file; speed-up: fp32 PyTorch eager "
               f"batch-1 median / the variant's, measured in this run, 1 thread, {args.runs} runs. Agreement: "
               "top-1 agreement of the artifact with its fake-quant PyTorch reference on held-out images. "
               f"Calibration: 512 training images. {qat_note}. Wall time {time.perf_counter() - t0:.0f} s."),
        extra={"details": details},
    )
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
