"""``import_weights``: a checkpoint trained elsewhere -> an edgeopt checkpoint, in one call.

A user with ``resnet20.th`` or ``model.pth`` (a state_dict, perhaps nested under
``state_dict`` / ``model``, perhaps with ``module.`` prefixes) and the model's architecture
gets an edgeopt checkpoint (safetensors + sidecar with the ModelSpec) that every later
command reads without further arguments:

1. the ModelSpec is built from what the user says: a preset (``imagenet``, ``cifar10``),
   explicit ``mean`` / ``std`` / ``classes`` / ``input_size``, and/or a dataset to take the
   input shape and class names from. Explicit values win over the preset, the preset over
   the dataset's own statistics (a model is fed the way it was trained, never the data's guess);
2. the file is read with safetensors or ``torch.load(weights_only=True)``: nothing in it
   runs; prefixes are stripped; a registered converter maps another layout of the same
   architecture (e.g. CIFAR ResNets with option-A shortcuts) when it applies;
3. missing, unexpected and shape-mismatched tensors are reported; any of them is an error
   unless ``strict=False`` (then the model keeps its initial values there, and the report
   and sidecar say so);
4. the checkpoint is written atomically, its lineage starting with an ``import`` step that
   records the source file and its SHA-256; optionally its accuracy is measured on data.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeopt.config import Config
from edgeopt.errors import ConfigError, ModelLoadError
from edgeopt.models.checkpoint import _sha256
from edgeopt.models.weights import compare_state, read_state_dict
from edgeopt.spec import ModelSpec

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

#: Preprocessing presets: (mean, std, input (C, H, W), class names, dataset name).
#: ImageNet: torchvision's and timm's default normalisation at 224x224 (1000 classes, names
#: not bundled). CIFAR-10: the per-channel statistics of its training set, as used by most
#: public CIFAR code (some, e.g. the common ResNet-20 .th files, use ImageNet's: say so with
#: --preset imagenet --input-size 32 --data cifar10).
PRESETS: dict[str, dict[str, Any]] = {
    "imagenet": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "input_shape": (3, 224, 224),
                 "classes": (), "num_classes": 1000, "dataset": ""},
    "cifar10": {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616), "input_shape": (3, 32, 32),
                "classes": CIFAR10_CLASSES, "num_classes": 10, "dataset": "cifar10"},
}


@dataclasses.dataclass(frozen=True)
class ImportConfig(Config):
    """What to import a state_dict as (``edgeopt import --help`` shows the same fields).

    Example:
        >>> ImportConfig(model="resnet20", preset="cifar10").spec().num_classes
        10
    """

    model: str = ""  # zoo name, tv:NAME, or package.module:factory (named by the user); none for ONNX
    kwargs: dict = dataclasses.field(default_factory=dict)
    preset: str | None = None  # imagenet | cifar10
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    classes: tuple[str, ...] | None = None  # class names, in the model's label order
    num_classes: int | None = None
    input_size: tuple[int, ...] | None = None  # (H, W) or (S,)
    channels: int | None = None
    data: str | None = None  # a dataset to take input shape / classes (and dataset name) from
    data_root: str | None = None
    convert: str = "auto"  # auto | none | a registered converter name
    strict: bool = True

    def validate(self) -> None:
        if self.preset is not None:
            self._check_choice("preset", PRESETS)
        if self.convert not in ("auto", "none"):
            from edgeopt.models.converters import CONVERTERS

            CONVERTERS.get(self.convert)  # an unknown name lists the choices
        if self.input_size is not None and (len(self.input_size) not in (1, 2) or min(self.input_size) < 1):
            raise ConfigError(f"ImportConfig.input_size must be S or H,W (> 0), got {self.input_size}")
        if self.num_classes is not None:
            self._check_range("num_classes", 1, None)
        if self.channels is not None:
            self._check_range("channels", 1, None)

    def spec(self, data: Any = None) -> ModelSpec:
        """The ModelSpec the imported model gets (``data``: the loaded dataset, if any)."""
        p = PRESETS.get(self.preset or "", {})
        dspec = data.spec if data is not None else None
        shape = list(p.get("input_shape") or (dspec.input_shape if dspec else (3, 224, 224)))
        if dspec is not None:
            shape = list(dspec.input_shape)
        if self.channels is not None:
            shape[0] = self.channels
        if self.input_size is not None:
            shape[1:] = list(self.input_size) * (2 if len(self.input_size) == 1 else 1)
        classes = self.classes if self.classes is not None else (
            dspec.class_names if dspec is not None else tuple(p.get("classes", ())))
        num = self.num_classes or len(classes) or (dspec.num_classes if dspec else p.get("num_classes"))
        if not num:
            raise ConfigError("say how many classes the model has: --classes, --num-classes, --preset or --data")
        if classes and len(classes) != num:
            raise ConfigError(f"{len(classes)} class names for {num} classes")
        mean = self.mean or p.get("mean") or (dspec.mean if dspec is not None else None)
        std = self.std or p.get("std") or (dspec.std if dspec is not None else None)
        if mean is None or std is None:
            raise ConfigError(
                "say how the model's inputs were normalised: --mean and --std, or --preset imagenet|cifar10 "
                "(the dataset's own statistics are used only when you give --data and no preset)")
        c = shape[0]
        mean, std = tuple(mean), tuple(std)
        if len(mean) == 1 and c > 1:
            mean, std = mean * c, std * (c if len(std) == 1 else 1)
        dataset = (data.name if data is not None else p.get("dataset", "")) or ""
        return ModelSpec(tuple(shape), int(num), mean, std, tuple(classes), dataset)  # type: ignore[arg-type]


@dataclasses.dataclass
class ImportReport:
    """What :func:`import_weights` did: the checkpoint, and every tensor it could not place."""

    path: Path
    source: str
    model: str
    spec: dict
    tensors: int
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]  # "name: file [shape] vs model [shape]"
    converted: list[str]
    accuracy: float | None = None
    accuracy_samples: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        return d


def _compare(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """The report's lists: missing and unexpected names, and "name: file [shape] vs model [shape]"."""
    missing, unexpected, other = compare_state(model, state)
    own = model.state_dict()
    return missing, unexpected, [f"{k}: file {list(state[k].shape)} vs model {list(own[k].shape)}" for k in other]


def _load_data(cfg: ImportConfig) -> Any:
    """The dataset the import takes shapes/classes from (``cfg.data``), or None."""
    if not cfg.data:
        return None
    from edgeopt.data import get_dataset

    return get_dataset(cfg.data, root=cfg.data_root)


def import_weights(source: str | Path, out: str | Path, cfg: ImportConfig, *, check: bool = False,
                   check_samples: int = 10_000) -> ImportReport:
    """Import a state_dict trained elsewhere as an edgeopt checkpoint.

    Args:
        source: the weights file (``.pth``, ``.pt``, ``.th``, ``.bin``, ``.safetensors``).
        out: the checkpoint to write (``NAME`` or ``NAME.safetensors``).
        cfg: architecture and preprocessing (:class:`ImportConfig`). The architecture is
            named by the caller, so a ``package.module:factory`` is allowed here.
        check: measure top-1 accuracy on the test split of ``cfg.data`` (or the preset's
            dataset), fed with the imported model's own preprocessing.
        check_samples: at most this many test images for the check.

    Returns:
        An :class:`ImportReport`; its ``path`` is the written checkpoint.

    Raises:
        ModelLoadError: unreadable file, a file that needs code, or tensors that do not fit
            (with ``strict``); the message names the first ones.
        ConfigError: missing or inconsistent preprocessing, unknown model or converter.

    Example:
        >>> rep = import_weights("resnet20.th", "runs/r20", ImportConfig(model="resnet20", preset="cifar10"))  # doctest: +SKIP
        >>> rep.missing, rep.converted[:1]  # doctest: +SKIP
        ([], ['renamed linear.* -> fc.*'])
    """
    from edgeopt.models.checkpoint import save_checkpoint
    from edgeopt.models.converters import CONVERTERS
    from edgeopt.models.factory import create_model
    from edgeopt.models.weights import _strip_prefixes, with_versions

    src = Path(source)
    if src.suffix.lower() == ".onnx":
        return import_onnx(src, out, cfg, check=check, check_samples=check_samples)
    if not cfg.model:
        raise ConfigError("say which architecture the weights are for: --model NAME (a zoo name, tv:NAME "
                          "or package.module:factory)")
    data = _load_data(cfg)
    spec = cfg.spec(data)
    state = read_state_dict(src)
    model = create_model(cfg.model, spec, **cfg.kwargs)
    state = _strip_prefixes(state, model)

    converted: list[str] = []
    names = CONVERTERS.names() if cfg.convert == "auto" else ([] if cfg.convert == "none" else [cfg.convert])
    for name in names:
        conv = CONVERTERS.get(name)
        if cfg.convert == "auto" and not conv.applies(state, model):
            continue
        state, notes = conv.convert(state, model)
        converted += [f"{name}: {n}" for n in notes]

    missing, unexpected, mismatched = _compare(model, state)
    problems = [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected] + mismatched
    if problems and cfg.strict:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise ModelLoadError(
            f"{src.name} does not fit '{cfg.model}' ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(mismatched)} of another shape: {shown}); check --model, --model-arg and the number of "
            f"classes, or pass --no-strict to keep the model's initial values for what does not fit")
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    model.load_state_dict(with_versions(fitting, model), strict=False)
    model.eval()

    report = ImportReport(
        path=Path(), source=str(src), model=cfg.model, spec=spec.to_dict(), tensors=len(fitting),
        missing=missing, unexpected=unexpected, mismatched=mismatched, converted=converted,
    )
    step = {"step": "import", "source": src.name, "sha256": _sha256(src), "model": cfg.model,
            "converted": converted, "missing": len(missing), "unexpected": len(unexpected),
            "mismatched": len(mismatched)}
    if check:
        report.accuracy, report.accuracy_samples = _check_accuracy(model, spec, data, cfg, check_samples)
    metrics = {"import_test_acc": report.accuracy} if report.accuracy is not None else {}
    report.path = save_checkpoint(out, model, lineage=[step], metrics=metrics,
                                  extra={"import": {k: v for k, v in report.to_dict().items() if k != "path"}})
    return report


def import_onnx(source: str | Path, out: str | Path | None, cfg: ImportConfig, *, check: bool = False,
                check_samples: int = 10_000) -> ImportReport:
    """An ONNX classifier from elsewhere -> an edgeopt artifact (the file + its sidecar).

    The graph gives the input shape and the number of classes; ``cfg`` says how inputs are
    normalised and what the classes are called, which no ONNX file records. eval, bench and
    the runtimes then use that spec. The file is copied to ``out`` (``.onnx``) when given,
    else the sidecar is written beside it.

    Raises:
        ArtifactError: not a readable single-input NCHW classifier.
        ConfigError: the preprocessing is not given, or disagrees with the graph.
    """
    import shutil

    import onnx

    from edgeopt._io import write_with_atomic
    from edgeopt.artifact import Artifact, _precision_of, _spec_from_onnx_shapes
    from edgeopt.errors import ArtifactError, brief
    src = Path(source)
    try:
        proto = onnx.load(str(src), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... on a damaged file
        raise ArtifactError(f"{src} is not a readable ONNX model ({brief(exc, 200)})") from None
    graph = _spec_from_onnx_shapes(proto, src)
    data = _load_data(cfg)
    spec = cfg.replace(channels=cfg.channels or graph.channels, input_size=cfg.input_size or graph.input_shape[1:],
                       num_classes=cfg.num_classes or (None if cfg.classes else graph.num_classes)).spec(data)
    if spec.input_shape != graph.input_shape or spec.num_classes != graph.num_classes:
        raise ConfigError(
            f"{src.name} takes {graph.input_shape} and gives {graph.num_classes} classes, but the import says "
            f"{spec.input_shape} and {spec.num_classes}; use data (or --input-size/--classes) that fit the file")
    target = Path(out) if out is not None else src
    if target.suffix.lower() != ".onnx":
        target = target.with_name(target.name + ".onnx")
    if target.resolve() != src.resolve():
        write_with_atomic(target, lambda tmp: shutil.copyfile(src, tmp))
    step = {"step": "import", "source": src.name, "sha256": _sha256(src), "format": "onnx"}
    art = Artifact(target, "onnx", spec, _precision_of(proto), {"lineage": [step]})
    report = ImportReport(path=target, source=str(src), model="onnx", spec=spec.to_dict(),
                          tensors=len(proto.graph.initializer), missing=[], unexpected=[], mismatched=[], converted=[])
    if check:
        from edgeopt.runtime import get_runner

        art.save_sidecar()
        runner = get_runner(Artifact.load(target))
        report.accuracy, report.accuracy_samples = _check_accuracy(
            lambda b: runner.predict(b.numpy()), spec, data, cfg, check_samples)
        art.meta["metrics"] = {"import_test_acc": report.accuracy}
    art.save_sidecar()
    return report


def _check_accuracy(model: Any, spec: ModelSpec, data: Any, cfg: ImportConfig, n: int) -> tuple[float, int]:
    """Top-1 of ``model`` (a module or a predict function) on the test split, fed with ``spec``."""
    from edgeopt.data import data_for_model, get_dataset

    if data is None:
        if not spec.dataset:
            raise ConfigError("the accuracy check needs data: --data NAME (or a preset that names a dataset)")
        data = get_dataset(spec.dataset, root=cfg.data_root)
    dm = data_for_model(data, spec, where=cfg.model or "the imported model")
    x, y = dm.samples(n, split="test")
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), 256):
            logits = torch.as_tensor(model(x[i:i + 256]))
            correct += int((logits.argmax(1) == y[i:i + 256]).sum())
    return correct / max(1, len(y)), len(y)
