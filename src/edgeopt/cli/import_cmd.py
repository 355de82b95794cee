"""``edgeopt import``: a model trained elsewhere (state_dict or ONNX) -> an edgeopt checkpoint or artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeopt.cli._common import drop_none, dump_config, emit_json, parse_kv
from edgeopt.cli.app import ConfigOpt, DataOpt, DataRootOpt, DumpOpt, JsonOpt, _trust, app


# ---------------------------------------------------------------------------------- import
def _floats(text: str | None, what: str):
    from edgeopt.errors import ConfigError

    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ConfigError(f"{what} takes numbers separated by commas, e.g. 0.485,0.456,0.406; got '{text}'") from None


def _class_names(text: str | None):
    if text is None:
        return None
    p = Path(text)
    if p.is_file():  # one name per line
        return tuple(line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip())
    return tuple(c.strip() for c in text.split(",") if c.strip())


@app.command("import")
def import_cmd(
    source: Annotated[Path, typer.Argument(help="Weights trained elsewhere: .pth/.pt/.th/.bin (a state_dict, also nested under 'state_dict' or 'model', 'module.' prefixes stripped; read weights-only) or .safetensors; or a whole model as .onnx (then no --model).")],
    model: Annotated[Optional[str], typer.Option(help="The architecture of a state_dict: a zoo name (`edgeopt models`), tv:NAME, or your package.module:factory (naming it here allows that code).")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Preprocessing the model was trained with: imagenet (mean/std, 224x224, 1000 classes) or cifar10 (its mean/std, 32x32, its 10 classes).")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Per-channel mean on the 0..1 scale, e.g. 0.485,0.456,0.406 (overrides the preset).")] = None,
    std: Annotated[Optional[str], typer.Option(help="Per-channel std on the 0..1 scale, e.g. 0.229,0.224,0.225.")] = None,
    classes: Annotated[Optional[str], typer.Option(help="Class names in label order: a,b,c or a file with one per line.")] = None,
    num_classes: Annotated[Optional[int], typer.Option(help="Number of classes when there are no names.")] = None,
    input_size: Annotated[Optional[str], typer.Option(help="Input size S or H,W (default: the data's or the preset's).")] = None,
    channels: Annotated[Optional[int], typer.Option(help="Input channels (default: the data's or the preset's).")] = None,
    data: DataOpt = None,
    data_root: DataRootOpt = None,
    model_arg: Annotated[Optional[list[str]], typer.Option("--model-arg", help="Architecture argument key=value (repeatable).")] = None,
    convert: Annotated[str, typer.Option(help="auto (apply a registered converter whose layout matches), none, or a converter name, e.g. cifar-resnet-option-a.")] = "auto",
    strict: Annotated[bool, typer.Option("--strict/--no-strict", help="Refuse weights with missing, unexpected or mis-shaped tensors (default), or keep the model's initial values there and report them.")] = True,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Measure top-1 accuracy on the test split of --data (or the preset's dataset), with the model's own preprocessing.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Checkpoint to write (default: NAME.safetensors + NAME.json beside the source).")] = None,
    config: ConfigOpt = None,
    dump: DumpOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Import a model trained elsewhere as an edgeopt checkpoint (or ONNX artifact) that every command reads.

    The file is read without running any code in it. Say how the model's inputs were
    normalised (--preset or --mean/--std) and which classes it predicts (--classes, --data or
    the preset): every later command feeds it exactly that way.

    Example: edgeopt import resnet20.th --model resnet20 --preset imagenet --input-size 32 --data cifar10 --check
    """
    from edgeopt.config import load_mapping
    from edgeopt.models.importing import ImportConfig, import_weights

    _trust(False, model)
    d = dict(load_mapping(config)) if config is not None else {}
    size = _floats(input_size, "--input-size")
    d.update(drop_none(dict(
        model=model, preset=preset, mean=_floats(mean, "--mean"), std=_floats(std, "--std"),
        classes=_class_names(classes), num_classes=num_classes, channels=channels, data=data, data_root=data_root,
        input_size=tuple(int(v) for v in size) if size else None, convert=convert, strict=strict,
    )))
    if model_arg:
        d["kwargs"] = {**d.get("kwargs", {}), **parse_kv(model_arg)}
    cfg = ImportConfig.from_dict(d)
    if dump:
        dump_config(cfg)
        return
    stem = source.name.split(".")[0] or "model"
    if source.suffix.lower() == ".onnx":  # the sidecar goes beside the file unless --out copies it
        target = out
    else:
        target = out if out is not None else source.with_name(f"{stem}.safetensors")
        if target.resolve() == source.resolve():  # never overwrite the file being imported
            target = source.with_name(f"{stem}_edgeopt.safetensors")
    rep = import_weights(source, target, cfg, check=check)
    if json_out:
        emit_json(rep.to_dict())
        return
    spec = rep.spec
    print(f"wrote {rep.path} ({rep.model}, {rep.tensors} tensors; input {tuple(spec['input_shape'])}, "
          f"{spec['num_classes']} classes, mean {tuple(spec['mean'])}, std {tuple(spec['std'])})")
    for line in rep.converted:
        print(f"converted: {line}")
    for what in ("missing", "unexpected", "mismatched"):
        items = getattr(rep, what)
        if items:
            print(f"{what} ({len(items)}, model keeps its initial values): {', '.join(items[:8])}"
                  + (" ..." if len(items) > 8 else ""))
    if rep.accuracy is not None:
        print(f"top-1 accuracy {100 * rep.accuracy:.2f}% on {rep.accuracy_samples} test images")
