"""Every runtime on one model: MobileNetV2-CIFAR (3x32x32, 10 classes), fp32.

The model is exported to every format available here (``edgeopt.export.compare``: torch
eager, TorchScript, ONNX Runtime at each graph optimization level, and LiteRT / OpenVINO /
... when their exporters are registered and installed); each artifact is checked for
parity against the eager model on real CIFAR-10 test images (the JPEG copy in
``/work/shared/data/cifar10-jpeg``, see its README; random inputs when it is absent), then
timed at batch 1 (median and p99) and at batch 64 (throughput), all in one process, one
after the other, with the same thread count. Ratios are to torch eager in the same run.
Weights are random (latency does not depend on their values); BatchNorm statistics are
set from real images so parity is checked on realistic activations.

Usage: python bench/runtimes.py [--threads 1] [--runs 300] [--formats onnx torchscript]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save

CIFAR_JPEG = "/work/shared/data/cifar10-jpeg"


def _data():
    """(spec, 256 normalised real test images, source) -- random inputs as the fall-back."""
    from edgeopt.data import get_dataset
    from edgeopt.errors import EdgeoptError
    from edgeopt.spec import ModelSpec

    try:
        dm = get_dataset(f"imagefolder:{CIFAR_JPEG}")
        x, _ = dm.samples(256, split="test")
        return dm.spec, x, "CIFAR-10 JPEG test images"
    except EdgeoptError as exc:
        print(f"no CIFAR-10 copy ({exc.one_line()}); parity on random inputs", file=sys.stderr)
        spec = ModelSpec((3, 32, 32), 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), dataset="cifar10")
        return spec, spec.example_input(256, seed=3), "random normal inputs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenetv2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64, help="throughput batch size")
    ap.add_argument("--formats", nargs="*", default=None, help="export formats (default: all registered)")
    args = ap.parse_args()

    import torch

    from edgeopt.export.compare import compare_runtimes
    from edgeopt.models import create_model

    spec, x, source = _data()
    torch.manual_seed(0)
    model = create_model(args.model, spec)
    model.train()
    with torch.no_grad():  # BN statistics from real images (as the parity tests do)
        model(x[:128])
    model.eval()
    with tempfile.TemporaryDirectory() as d:
        rows = compare_runtimes(model, x, d, formats=args.formats, threads=args.threads, runs=args.runs,
                                warmup=args.warmup, throughput_batch=args.batch)

    def f(v, fmt):
        return "–" if v is None else format(v, fmt)

    table = []
    for r in rows:
        parity = "reference" if r["name"] == "torch" else (
            "–" if r["parity_passed"] is None else
            f"{'pass' if r['parity_passed'] else 'FAIL'} ({r['parity']['max_abs_diff']:.1e})")
        status = "" if r["status"] == "ok" else f" ({r['status']})"
        table.append([f"{r['name']}{status}", r["precision"] or "–", args.threads, f(r["p50_ms"], ".3f"),
                      f(r["p99_ms"], ".3f"), f(r["throughput"], ".0f"),
                      f(r["size_bytes"] and r["size_bytes"] / 1e6, ".2f"), parity,
                      f(r["speedup_vs_torch"], ".2f") + ("x" if r["speedup_vs_torch"] else ""),
                      f(r["throughput_vs_torch"], ".2f") + ("x" if r["throughput_vs_torch"] else "")])
    skipped = "; ".join(f"{r['name']}: {r['reason']}" for r in rows if r["status"] != "ok" and r["reason"])
    save(
        f"runtimes_{args.model}",
        f"Every runtime: {args.model} (3x32x32, 10 classes), fp32, batch-1 latency and batch-{args.batch} throughput",
        ["runtime", "precision", "threads", "median ms", "p99 ms", f"images/s (batch {args.batch})", "size MB",
         "parity (max abs diff)", "speed-up vs torch eager (median)", "throughput vs torch eager"],
        table,
        notes=(f"{args.runs} timed batch-1 runs after {args.warmup} warm-up runs per row; throughput: median of "
               f"{max(3, min(30, args.runs))} runs at batch {args.batch}; ratios to torch eager measured in the "
               f"same run. Parity on 256 {source} (fp32: max abs diff <= 1e-4, 100% top-1 agreement). onnx = "
               f"plain file optimized online by onnxruntime at load (ORT_ENABLE_ALL); onnx-basic/-extended/-all = "
               f"optimized offline at that level and loaded at it (onnx-all is tuned to this CPU)."
               + (f" Not measured: {skipped}." if skipped else "")),
        extra={"rows": rows},
    )
    for row in table:
        print(row)


if __name__ == "__main__":
    main()
