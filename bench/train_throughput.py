"""Training throughput: edgeopt's Trainer against a plain hand-written PyTorch loop.

Same model, same data, same batch size, optimizer (SGD, momentum 0.9, weight decay 5e-4),
fp32, no augmentation, same thread count, one process. The plain loop is what a user
writes by hand: a ``TensorDataset`` of the (already normalised) images, a shuffling
``DataLoader``, forward, cross-entropy, backward, step, with ``loss.item()`` each step.
Both are warmed up, then run alternately ``--repeats`` times; the table gives the median
images/s of each and their ratio (Trainer / plain, >= 1.0 means the Trainer is not slower).

Usage: python bench/train_throughput.py [--model simple_cnn] [--data fashion-mnist] [--steps 150]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save  # noqa: E402


def plain_loop(model, x, y, batch_size: int, steps: int, lr: float) -> float:
    """The hand-written baseline; returns images/s over ``steps`` steps."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, drop_last=True)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    done = 0
    t0 = time.perf_counter()
    while done < steps:
        for xb, yb in loader:
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            loss.item()  # what a hand-written loop logs each step
            done += 1
            if done == steps:
                break
    return steps * batch_size / (time.perf_counter() - t0)


def trainer_run(model, data, batch_size: int, steps: int, lr: float, threads: int) -> float:
    from edgeopt.train import TrainConfig, Trainer

    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig(epochs=1, batch_size=batch_size, lr=lr, schedule="constant", max_steps_per_epoch=steps,
                          augment=False, progress=False, out_dir=d, threads=threads, seed=0)
        result = Trainer(cfg).fit(model, data)
    return float(result.history[-1]["images_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="simple_cnn")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.01)
    args = ap.parse_args()

    import torch

    from edgeopt.data import get_dataset
    from edgeopt.models import create_model

    torch.set_num_threads(args.threads)
    data = get_dataset(args.data)
    x = data.normalize(data.train.images)
    y = data.train.labels

    def fresh():
        torch.manual_seed(0)
        return create_model(args.model, data.spec)

    # warm-up (allocator, kernels) for both, untimed
    plain_loop(fresh(), x, y, args.batch_size, 10, args.lr)
    trainer_run(fresh(), data, args.batch_size, 10, args.lr, args.threads)
    plain, trainer = [], []
    for _ in range(args.repeats):
        plain.append(plain_loop(fresh(), x, y, args.batch_size, args.steps, args.lr))
        trainer.append(trainer_run(fresh(), data, args.batch_size, args.steps, args.lr, args.threads))
    p, t = statistics.median(plain), statistics.median(trainer)
    rows = [[args.model, args.data, args.batch_size, args.threads, f"{p:.0f}", f"{t:.0f}", f"{t / p:.3f}"]]
    save(
        f"train_throughput_{args.model}_{args.data}",
        f"Training throughput: Trainer vs a plain PyTorch loop ({args.model} on {args.data})",
        ["model", "data", "batch", "threads", "plain loop img/s", "Trainer img/s", "ratio Trainer/plain"],
        rows,
        notes=f"Median of {args.repeats} alternating runs of {args.steps} steps each, after an untimed warm-up; "
              f"plain runs: {[round(v) for v in plain]}, Trainer runs: {[round(v) for v in trainer]}.",
    )
    print(rows[0])


if __name__ == "__main__":
    main()
