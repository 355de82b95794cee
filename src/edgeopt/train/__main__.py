"""``python -m edgeopt.train``: a minimal command line over :func:`run_training`.

Every TrainConfig field is a flag (``--batch-size 64``, ``--precision bf16``,
``--resume``, ``--no-progress``), so tests and ``torchrun -m edgeopt.train`` work before
(and beside) the full ``edgeopt`` CLI. Errors print one line and exit with status 2.

Example:
    python -m edgeopt.train --model simple_cnn --data digits --epochs 3 --out-dir runs/cnn
    torchrun --standalone --nproc_per_node 2 -m edgeopt.train --model simple_cnn --data digits
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

from edgeopt.errors import EdgeoptError
from edgeopt.train.config import TrainConfig


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edgeopt.train", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model name (simple_cnn, mobilenetv2, tv:NAME, ...)")
    p.add_argument("--data", required=True, help="dataset name (digits, synthetic, cifar10, ...)")
    p.add_argument("--data-root", default=None, help="folder of the dataset files")
    p.add_argument("--model-kwargs", default=None, help='architecture arguments as JSON, e.g. \'{"width_mult": 0.5}\'')
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        if base is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            p.add_argument(flag, type=base, default=None, metavar=f.name.upper())
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, train, print a JSON summary on stdout; return the exit status."""
    args = _parser().parse_args(argv)
    from edgeopt.train.api import run_training

    try:
        overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                     if getattr(args, f.name) is not None}
        config = TrainConfig.from_dict(overrides)
        kwargs = json.loads(args.model_kwargs) if args.model_kwargs else None
        result = run_training(args.model, args.data, config, model_kwargs=kwargs,
                              data_root=args.data_root)
    except EdgeoptError as exc:
        print(exc.one_line(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        from edgeopt.errors import interrupt_note

        print(interrupt_note(exc) or "interrupted before training started; nothing was written",
              file=sys.stderr, flush=True)
        return 130
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"epochs": len(result.history), "best_val_acc": result.best_metric,
                          "metrics": result.metrics,
                          "last": str(result.last_path) if result.last_path else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
