"""Which ``round_to`` keeps pruned models fast: batch-1 latency of structured-pruned variants.

The same model is pruned structurally to the same MAC target with channel counts rounded to
multiples of 1, 8, 16 and 32; each variant is exported to ONNX and quantized to int8
(ONNX Runtime static per-channel), and its batch-1 median latency (1 thread) is measured
next to the unpruned model's in the same run. No fine-tuning: latency does not depend on
the weights' values, so this measures the shapes alone (accuracy is not reported).

Usage:
    python bench/pruning_round_to.py --checkpoint runs/bench/mnv2-cifar10/last.safetensors \\
        --data imagefolder:../shared/data/cifar10-jpeg
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import interleaved_medians, save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--macs", type=float, default=0.5, help="fraction of MACs removed")
    ap.add_argument("--round-to", default="1,8,16,32")
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--out-dir", default="runs/bench/pruning_round_to")
    args = ap.parse_args()

    import torch

    from edgeopt.export import export_model
    from edgeopt.models import load_checkpoint
    from edgeopt.pipeline import DataConfig
    from edgeopt.prune import PruneConfig, prune
    from edgeopt.quantize import QuantConfig, quantize

    torch.set_num_threads(2)
    model, meta = load_checkpoint(args.checkpoint)
    arch = (meta.get("arch") or {}).get("name", "model")
    data = DataConfig(name=args.data).load()
    out = Path(args.out_dir) / arch
    out.mkdir(parents=True, exist_ok=True)
    x = data.samples(256)[0]

    def variant(m, stem: str) -> tuple:
        onnx = export_model(m, "onnx", out / f"{stem}.onnx", samples=x).artifact
        q = quantize(m, QuantConfig(verify_samples=64, accuracy_check=False), data, out / f"{stem}_int8",
                     progress=False).artifact
        return onnx, q

    t0 = time.perf_counter()
    arts = {"unpruned": variant(model, "unpruned")}
    kept = {"unpruned": 1.0}
    for r in [int(v) for v in args.round_to.split(",")]:
        res = prune(model, PruneConfig(method="structured", target="macs", ratio=args.macs, round_to=r,
                                       recalibrate_bn=False))
        arts[str(r)] = variant(res.model, f"round_to_{r}")
        kept[str(r)] = res.macs_after / res.macs_before
    # All artifacts of one precision are timed in alternation (bench/_common.py), so the
    # ratios hold on a shared machine whose speed drifts from minute to minute.
    rounds = max(5, args.runs // 20)
    fp32 = interleaved_medians({k: a[0] for k, a in arts.items()}, data.spec, rounds=rounds)
    int8 = interleaved_medians({k: a[1] for k, a in arts.items()}, data.spec, rounds=rounds)
    rows = []
    for k in arts:
        rows.append(["unpruned" if k == "unpruned" else f"structured -{100 * args.macs:.0f}% MACs",
                     "–" if k == "unpruned" else k, f"{kept[k]:.3f}",
                     f"{fp32[k]:.3f}", f"{fp32['unpruned'] / fp32[k]:.2f}x", f"{int8[k]:.3f}",
                     f"{int8['unpruned'] / int8[k]:.2f}x"])
    save(f"pruning_round_to_{arch}", f"Structured pruning: channel rounding vs ONNX Runtime latency ({arch})",
         ["variant", "round_to", "MACs kept", "fp32 p50 ms", "fp32 speed-up", "int8 p50 ms", "int8 speed-up"], rows,
         notes=(f"Checkpoint {args.checkpoint}; batch 1, 1 thread; all artifacts of a precision timed in "
                f"alternation, {rounds} rounds of 20 runs, median of the round medians; int8: ONNX Runtime static per-channel QDQ. No fine-tuning (latency depends on "
                f"shapes only). Wall time {time.perf_counter() - t0:.0f} s."))
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
