"""Bring your own model: torchvision and timm architectures through every export and int8 backend.

What a user with a model trained elsewhere does, for each architecture:

1. **trained elsewhere**: plain PyTorch code (not edgeopt's Trainer) trains it on a subset of
   the CIFAR-10 JPEG copy at 32x32 with ImageNet normalisation until it predicts more than one
   class, and saves ``{"state_dict": {"module.<name>": tensor}}`` as DataParallel code does;
2. ``edgeopt import`` (:func:`edgeopt.models.importing.import_weights`) with
   ``--preset imagenet --input-size 32 --data imagefolder:...`` -> an edgeopt checkpoint;
3. every export format through ``edgeopt export`` (:func:`edgeopt.jobs.export_path`),
   each checked against PyTorch on real test images (parity relative to the logits' scale,
   top-1 agreement), and every int8 backend through ``edgeopt quantize``
   (:func:`edgeopt.quantize.jobs.quantize_checkpoint`), each checked against its fake-quant
   reference (top-1 agreement on held-out images).

A cell is ``ok`` with its figure, ``ok (warning)`` when edgeopt printed and recorded a warning
(the reason is in the notes), ``unsupported: <edgeopt's one-line error>``, or ``BUG: <exception>``
for anything that is not one of edgeopt's own errors (a traceback a user would have seen).
Cells are cached in ``runs/bench/byom/cells.json``: a re-run skips finished cells (``--force``
redoes them), so the table can be built over several sessions.

Usage:
    python bench/byom.py --data imagefolder:../shared/data/cifar10-jpeg
    python bench/byom.py --data imagefolder:../shared/data/cifar10-jpeg --models tv:resnet18 --ops onnx
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save

MODELS = [
    "tv:resnet18", "tv:mobilenet_v3_small", "tv:shufflenet_v2_x1_0", "tv:squeezenet1_1", "tv:efficientnet_b0",
    "tv:mnasnet0_5", "tv:regnet_y_400mf", "tv:convnext_tiny",
    "timm.models:efficientnet_lite0", "timm.models:mobilenetv3_large_100", "timm.models:ghostnet_100",
]
EXPORTS = ["onnx", "tflite", "openvino", "torchscript", "coreml"]
QUANTS = {"int8 onnxruntime": {"backend": "onnxruntime"}, "int8 torch x86": {"backend": "torch", "engine": "x86"},
          "int8 litert": {"backend": "litert"}}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _short(name: str) -> str:
    return name.split(":")[-1]


def train_elsewhere(name: str, data, out: Path, *, images: int, epochs: int, max_epochs: int, seed: int = 0) -> dict:
    """Plain PyTorch training with ImageNet normalisation; a DataParallel-style .pth file."""
    import dataclasses

    import torch

    from edgeopt.data import data_for_model
    from edgeopt.models import create_model

    pth = out / f"{_short(name)}.pth"
    info_path = out / f"{_short(name)}.train.json"
    if pth.is_file() and info_path.is_file():
        return json.loads(info_path.read_text())
    spec = dataclasses.replace(data.spec, mean=IMAGENET[0], std=IMAGENET[1])
    dm = data_for_model(data, spec)
    g = torch.Generator().manual_seed(seed)
    train = dm.train.subset(torch.randperm(len(dm.train), generator=g)[:images])
    x_test, y_test = dm.samples(1000, split="test")
    t0 = time.perf_counter()

    def batches():
        order = torch.randperm(len(train), generator=g)
        for i in range(0, len(order), 64):
            sel = order[i:i + 64]
            yield dm.normalize(dm.augment(train.images[sel], g)), train.labels[sel]

    def check(model) -> tuple[int, float]:
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(x_test[i:i + 250]).argmax(1) for i in range(0, len(x_test), 250)])
        return int(pred.unique().numel()), float((pred == y_test).double().mean())

    # SqueezeNet's final conv + ReLU dies at a large step size (all logits 0: one class) and
    # MNASNet's BatchNorm momentum (3e-4) leaves its running statistics near their initial
    # values after one short epoch. A model that predicts one class gets its BN statistics
    # re-estimated on training batches (precise BN); if it still does, training starts again
    # at a quarter of the step size. Models that train normally go through neither.
    lr, classes, acc, ep, restarts = 2e-3, 0, 0.0, 0, 0
    while True:
        torch.manual_seed(seed + restarts)
        model = create_model(name, spec)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
        ep = 0
        while ep < max_epochs and (ep < epochs or classes <= 1):
            model.train()
            for x, y in batches():
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            ep += 1
            classes, acc = check(model)
            if classes <= 1:  # BN statistics that lag the weights (MNASNet): re-estimate them
                _precise_bn(model, batches())
                classes, acc = check(model)
            print(f"[byom] {name}: lr {lr:g}, epoch {ep}, test top-1 {100 * acc:.1f}% on 1000, "
                  f"{classes} classes predicted", file=sys.stderr, flush=True)
            if classes <= 1 and ep >= epochs:
                break
        if classes > 1 or restarts >= 3:
            break
        restarts, lr = restarts + 1, lr / 4
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": ep}, pth)
    if classes <= 1:
        raise RuntimeError(f"{name} still predicts one class after {ep} epochs: train it longer (--max-epochs)")
    info = {"epochs": ep, "images": images, "lr": lr, "restarts": restarts, "test_acc_1000": acc,
            "classes_predicted": classes,
            "seconds": round(time.perf_counter() - t0, 1)}
    info_path.write_text(json.dumps(info))
    return info


def _precise_bn(model, batches, n: int = 50) -> None:
    """Re-estimate every BatchNorm's running statistics as a plain average over ``n`` batches."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for i, (x, _) in enumerate(batches):
            if i >= n:
                break
            model(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom


def run_cell(op: str, ckpt: Path, out: Path) -> dict:
    from edgeopt.errors import EdgeoptError

    t0 = time.perf_counter()
    try:
        if op in EXPORTS:
            from edgeopt.jobs import export_path

            res = export_path(ckpt, op)  # beside the checkpoint, with the format's own suffix
            p = res.parity.to_dict() if res.parity is not None else {}
            cell = {"status": "ok", "agreement": p.get("top1_agreement"), "parity": p,
                    "warnings": list(p.get("warnings") or [])}
        else:
            from edgeopt.quantize import QuantConfig
            from edgeopt.quantize.jobs import quantize_checkpoint

            s = quantize_checkpoint(ckpt, QuantConfig(**QUANTS[op]), out / op.replace(" ", "_"),
                                    evaluate=False, histograms=False, progress=False)
            q = s["quantization"]
            agr = (q.get("agreement") or {}).get("top1_agreement")
            cell = {"status": "ok", "agreement": agr, "warnings": list(q.get("warnings") or []),
                    "float_layers": q.get("float_layers")}
    except EdgeoptError as exc:
        cell = {"status": "unsupported", "reason": exc.one_line()}
    except Exception as exc:  # noqa: BLE001 - a traceback a user would see: the table says BUG
        traceback.print_exc()
        cell = {"status": "bug", "reason": f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"}
    cell["seconds"] = round(time.perf_counter() - t0, 1)
    return cell


def _text(cell: dict | None) -> str:
    if cell is None:
        return "not run"
    if cell["status"] == "ok":
        agr = cell.get("agreement")
        fig = "ok" if agr is None else f"ok {100 * agr:.1f}%"
        return fig + (" (warning)" if cell.get("warnings") else "")
    if cell["status"] == "unsupported":
        return "unsupported: " + cell["reason"].replace("|", "/")[:160]
    return "BUG: " + cell["reason"].replace("|", "/")[:160]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="e.g. imagefolder:../shared/data/cifar10-jpeg")
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--ops", nargs="*", default=EXPORTS + list(QUANTS))
    ap.add_argument("--train-images", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=1, help="epochs of 'elsewhere' training (more if one class)")
    ap.add_argument("--max-epochs", type=int, default=8)
    ap.add_argument("--out-dir", default="runs/bench/byom")
    ap.add_argument("--force", action="store_true", help="redo cells already in the cache")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report-only", action="store_true", help="rewrite the table from the cache, run nothing")
    args = ap.parse_args()

    import torch

    from edgeopt.data import get_dataset
    from edgeopt.models import allow_model_code
    from edgeopt.models.importing import ImportConfig, import_weights

    torch.set_num_threads(args.threads)
    allow_model_code("timm")  # the user names timm's factories (as --model on the command line would)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = out / "cells.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    data = get_dataset(args.data)
    t0 = time.perf_counter()
    for name in [] if args.report_only else args.models:
        mdir = out / _short(name)
        mdir.mkdir(exist_ok=True)
        entry = cache.setdefault(name, {"cells": {}})
        try:
            entry["train"] = train_elsewhere(name, data, mdir, images=args.train_images, epochs=args.epochs,
                                             max_epochs=args.max_epochs)
            rep = import_weights(mdir / f"{_short(name)}.pth", mdir / "imported",
                                 ImportConfig(model=name, preset="imagenet", input_size=(32,), data=args.data),
                                 check=True, check_samples=2000)
            entry["import"] = {"accuracy": rep.accuracy, "samples": rep.accuracy_samples, "missing": rep.missing,
                               "unexpected": rep.unexpected, "mismatched": rep.mismatched}
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            entry["import"] = {"error": f"{type(exc).__name__}: {exc}"}
            cache_path.write_text(json.dumps(cache, indent=1))
            continue
        for op in args.ops:
            if op in entry["cells"] and not args.force:
                continue
            print(f"[byom] {name}: {op}", file=sys.stderr, flush=True)
            entry["cells"][op] = run_cell(op, rep.path, mdir)
            print(f"[byom] {name}: {op}: {_text(entry['cells'][op])}", file=sys.stderr, flush=True)
            cache_path.write_text(json.dumps(cache, indent=1))  # resume from here after a crash

    if args.report_only:  # the table records the command that measured its cells, not this re-render
        sys.argv = [a for a in sys.argv if a != "--report-only"]
    ops = EXPORTS + list(QUANTS)
    rows, notes = [], []
    for name in MODELS:
        e = cache.get(name)
        if not e:
            continue
        tr, im = e.get("train") or {}, e.get("import") or {}
        trained = (f"{tr.get('epochs')} ep, {100 * im['accuracy']:.1f}%, {tr.get('classes_predicted')} classes"
                   if im.get("accuracy") is not None else "import failed: " + str(im.get("error", ""))[:120])
        rows.append([name, trained] + [_text(e["cells"].get(op)) for op in ops])
        for op in ops:
            for w in (e["cells"].get(op) or {}).get("warnings") or []:
                notes.append(f"- {name}, {op}: {w}")
    bugs = sum(r.startswith("BUG") for row in rows for r in row[2:])
    # the cells were measured over several runs (the cache): the work they took, summed
    work_s = sum((e.get("train") or {}).get("seconds", 0) + sum(c.get("seconds", 0) for c in e["cells"].values())
                 for e in cache.values())
    save(
        "byom_torchvision_timm", "Bring your own model: torchvision and timm architectures, every export and int8 backend",
        ["model", "trained elsewhere (test top-1, classes predicted)"] + ops, rows,
        notes=("Each model was trained by plain PyTorch code (ImageNet normalisation, 32x32 CIFAR-10 JPEG images, "
               f"{args.train_images} training images, AdamW, lr 2e-3; a model predicting one class had its BN "
               "statistics re-estimated, then restarted at a quarter of the step size: SqueezeNet at 5e-4) until it "
               "predicted more than one class, saved as a "
               "DataParallel-style .pth, and brought in with `edgeopt import --preset imagenet --input-size 32`. "
               "Export cells: top-1 agreement with PyTorch on 256 test images (parity judged relative to the logits' "
               "scale). int8 cells: top-1 agreement of the artifact with its fake-quant reference on held-out "
               f"images. {bugs} cell(s) are tracebacks (BUG). Training and cells took {work_s / 60:.0f} min "
               f"in all (cached across runs; this run {time.perf_counter() - t0:.0f} s).\n\nWarnings printed and recorded:\n" + ("\n".join(notes) or "- none")),
        extra={"cells": cache},
    )
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
