"""A real training run through `edgeopt train`'s API, recorded with its accuracy and images/s.

Usage: python bench/train_run.py --model mobilenetv2 --data imagefolder:../shared/data/cifar10-jpeg --epochs 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenetv2")
    ap.add_argument("--data", default="imagefolder:../shared/data/cifar10-jpeg")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from edgeopt.pipeline import DataConfig, ModelConfig, TrainJob, train_job
    from edgeopt.train import TrainConfig

    with tempfile.TemporaryDirectory() as d:
        job = TrainJob(
            data=DataConfig(name=args.data), model=ModelConfig(name=args.model),
            train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, augment=True,
                              threads=args.threads, out_dir=d, progress=False),
        )
        t0 = time.perf_counter()
        result = train_job(job)
        wall = time.perf_counter() - t0
    rows = [[args.model, args.data.split("/")[-1], h["epoch"], f"{100 * h['train_acc']:.2f}",
             f"{100 * h['val_acc']:.2f}", f"{h['images_per_s']:.0f}", f"{h['seconds']:.0f}"] for h in result.history]
    test = result.metrics.get("test_acc")
    save(
        f"train_run_{args.model}_{args.data.split('/')[-1]}",
        f"Training run: {args.model} on {args.data.split('/')[-1]} ({args.epochs} epoch(s), batch {args.batch_size}, "
        f"{args.threads} threads, augmentation on)",
        ["model", "data", "epoch", "train acc %", "val acc %", "train images/s", "epoch s"],
        rows,
        notes=f"Test accuracy of the final model: {100 * test:.2f} %; wall time {wall:.0f} s including data loading "
              "and evaluation. SGD momentum 0.9, cosine schedule, lr {args.lr}, weight decay 5e-4.".replace(
                  "{args.lr}", str(args.lr)),
    )
    print(rows, test)


if __name__ == "__main__":
    main()
