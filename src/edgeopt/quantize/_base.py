"""The quantization backend registry and :func:`quantize`, the one entry point.

A backend turns a float model into an int8 **artifact** a Runner loads (QDQ ONNX,
TorchScript, .tflite) and a **fake-quant PyTorch reference** computing with the
artifact's own scales. :func:`quantize` then runs both on held-out images and records
their top-1 agreement, so an int8 file that silently computes something else is caught.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeopt.errors import ConfigError, MissingDependencyError
from edgeopt.quantize.config import QuantConfig
from edgeopt.registry import Registry


@dataclasses.dataclass
class Built:
    """What a backend's ``build`` returns."""

    artifact: Any  # edgeopt.artifact.Artifact
    reference: nn.Module | None  # fake-quant PyTorch model with the artifact's qparams
    float_layers: list[str] = dataclasses.field(default_factory=list)  # layers left float
    warnings: list[str] = dataclasses.field(default_factory=list)
    qparams: dict[str, Any] = dataclasses.field(default_factory=dict)  # layer -> weight/input qparams
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@functools.cache
def cpu_vnni() -> bool | None:
    """Whether this CPU has VNNI int8 dot-product instructions (uint8 x int8 products summed
    in 32 bits; without them fbgemm sums pairs in saturating 16 bits), from the ``flags`` of
    Linux /proc/cpuinfo, read once per process; None when unknown.

    Example:
        >>> cpu_vnni() in (True, False, None)
        True
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.partition(":")[2].split()}
    if not flags:
        return None
    return bool(flags & {"avx512_vnni", "avx512vnni", "avx_vnni", "amx_int8", "avx_vnni_int8"})


def cpu_has_vnni() -> bool:
    """:func:`cpu_vnni` as a bool: without /proc/cpuinfo, assume a modern CPU with VNNI (the
    user can set reduce_range); a cpuinfo without x86 ``flags`` (ARM) has none."""
    v = cpu_vnni()
    return v if v is not None else not Path("/proc/cpuinfo").is_file()


def reduce_range_for(cfg: QuantConfig) -> bool:
    """7-bit weights/activations for x86 int8 kernels: ``cfg.reduce_range``, or when that is
    None, on exactly when this CPU lacks VNNI (see QuantConfig.reduce_range)."""
    return cfg.reduce_range if cfg.reduce_range is not None else not cpu_has_vnni()


@dataclasses.dataclass(frozen=True)
class QuantBackend:
    """One int8 backend.

    ``build(model, config, calibration, out_path, keep_float, data) -> Built``: ``model``
    is the float model in eval mode carrying its ModelSpec, ``calibration`` normalised
    training images, ``keep_float`` the resolved layer names to leave float, ``data`` the
    DataModule (QAT trains on it).
    """

    name: str
    methods: tuple[str, ...]
    suffix: str | Callable[[QuantConfig], str]  # the file suffix, or a function of the config
    build: Callable[..., Built]
    available: Callable[[], str | None]

    def suffix_for(self, cfg: QuantConfig) -> str:
        """The artifact's file suffix under ``cfg`` (e.g. torch: ``.torchscript`` or ``.pt2``)."""
        return self.suffix(cfg) if callable(self.suffix) else self.suffix


#: backend name -> module holding its ``BACKEND`` (imported on first use: each backend's
#: package is heavy and optional)
QUANT_BACKENDS: Registry = Registry("quantization backend")
QUANT_BACKENDS.add("onnxruntime", "edgeopt.quantize.onnxruntime_backend",
                   help="QDQ ONNX through onnxruntime.quantization (default): static, dynamic, qat")
QUANT_BACKENDS.add("torch", "edgeopt.quantize.torch_backend",
                   help="PyTorch int8 kernels: torch.ao FX (x86/fbgemm/qnnpack, TorchScript file) "
                        "or torchao PT2E (pt2e-x86, torch.export file)")
QUANT_BACKENDS.add("litert", "edgeopt.quantize.litert_backend",
                   help="int8 .tflite through litert-torch's PT2E quantizer (extra 'tflite')")


def get_backend(name: str) -> QuantBackend:
    """The :class:`QuantBackend` called ``name`` (its module is imported now)."""
    import importlib

    return importlib.import_module(QUANT_BACKENDS.get(name)).BACKEND


def list_backends() -> list[str]:
    """Names of the quantization backends.

    Example:
        >>> list_backends()
        ['litert', 'onnxruntime', 'torch']
    """
    return QUANT_BACKENDS.names()


@dataclasses.dataclass
class QuantResult:
    """What :func:`quantize` returns."""

    artifact: Any
    reference: nn.Module | None
    config: QuantConfig
    float_layers: list[str]
    warnings: list[str]
    agreement: dict[str, Any] | None
    qparams: dict[str, Any]
    seconds: float
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": str(self.artifact.path),
            "format": self.artifact.format,
            "precision": self.artifact.precision,
            "config": self.config.to_dict(),
            "float_layers": list(self.float_layers),
            "warnings": list(self.warnings),
            "agreement": self.agreement,
            "seconds": round(self.seconds, 2),
            **{k: v for k, v in self.meta.items() if k not in ("qparams",)},
        }


#: top-1 agreement of an int8 artifact with its fake-quant reference below which
#: :func:`quantize` warns: the reference (and what is derived from it: the histograms, the
#: sensitivity scan) then does not describe what the file computes.
AGREEMENT_FLOOR = 0.99


def top1_agreement(reference: nn.Module, artifact: Any, samples: torch.Tensor, threads: int = 1,
                   labels: torch.Tensor | None = None) -> dict[str, Any]:
    """Top-1 agreement of ``artifact`` (run by its Runner) and ``reference`` on ``samples``.

    Returns ``{"samples", "top1_agreement", "max_abs_diff", "mean_abs_diff"}``, plus
    ``"artifact_top1"`` (the artifact's accuracy) when ``labels`` are given.
    """
    from edgeopt.runtime import get_runner

    runner = get_runner(artifact, threads=threads)
    x = samples.detach().float()
    got = np.concatenate([runner.predict(x[i:i + 64].numpy()) for i in range(0, len(x), 64)])
    with torch.no_grad():
        reference.eval()
        want = torch.cat([reference(x[i:i + 64]) for i in range(0, len(x), 64)]).float().numpy()
    diff = np.abs(got - want)
    out = {
        "samples": len(x),
        "top1_agreement": float((got.argmax(1) == want.argmax(1)).mean()),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
    }
    if labels is not None:
        out["artifact_top1"] = float((got.argmax(1) == labels.numpy()).mean())
    return out


def _unmodelled(meta: dict[str, Any]) -> str | Callable[[], str]:
    """What a backend knows about why its reference differs from the file, as a clause for
    the warning: the requantized tensors the reference does not simulate, how well the file
    agrees with its own QDQ graph (so whether the gap is the file's or the reference's), and
    where the file departs from the reference op by op.

    The last one costs runs of both, so a backend leaves it in ``meta["divergence"]`` as an
    object with ``locate() -> str`` (litert: :class:`~edgeopt.quantize.litert_divergence.DivergenceLocator`);
    the clause is then a callable that :func:`agreement_warning` calls only below the floor.
    """
    out = ""
    names = list((meta.get("reference_requantizes") or {}).get("not_simulated") or [])
    if names:
        ops = sorted({n.rstrip("/").split("/")[-1].split("_output")[0].rstrip("_0123456789") or n for n in names})
        out += (f"; the file requantizes {len(names)} tensor(s) the reference does not simulate "
                f"(outputs of {', '.join(ops[:6])}{', ...' if len(ops) > 6 else ''}), e.g. {names[0]}")
    graph = meta.get("qdq_graph_agreement")
    if graph:
        a = 100 * graph["top1_agreement"]
        out += (f"; the file agrees {a:.1f} % with its own QDQ graph run op by op, so the gap is in the "
                f"reference, which does not model some of the file's quantization" if a >= 99 else
                f"; the file agrees only {a:.1f} % with its own QDQ graph run op by op: ONNX Runtime's "
                f"fused int8 kernels compute something else than the graph says")
    for note in meta.get("reference_notes") or []:
        out += f"; {note}"
    nodes = (meta.get("reference_divergence") or {}).get("nodes") or []
    if nodes:  # torch: the calibration check located where the int8 model parts from its reference
        n = nodes[0]
        out += (f"; on calibration images the int8 model already parts from it at {n.get('layer') or n.get('node')} "
                f"({n.get('op')}, {100 * float(n.get('codes_off') or 0):.2g} % of its codes off by up to "
                f"{n.get('max_lsb')} LSB: {n.get('reason')}), rounding this model amplifies")
    locator = meta.get("divergence")
    if callable(getattr(locator, "locate", None)):
        static = out
        return lambda: static + locator.locate()
    return out


def agreement_warning(agreement: dict[str, Any], cfg: QuantConfig, floor: float = AGREEMENT_FLOOR,
                      why: str | Callable[[], str] = "") -> str | None:
    """The warning for an artifact that agrees with its reference on fewer than ``floor`` of
    top-1 predictions, or None. ``why`` (a clause, or a callable returning one, called only
    below the floor; one that fails adds nothing) says what the reference does not model.

    Example:
        >>> agreement_warning({"samples": 512, "top1_agreement": 0.93}, QuantConfig(backend="litert"))[:52]
        'the litert int8 artifact agrees with its fake-quant '
    """
    a = agreement.get("top1_agreement")
    if a is None or a >= floor:
        return None
    if callable(why):
        try:
            why = why()
        except Exception:  # noqa: BLE001 - a diagnosis that fails is no clause, never an error
            why = ""
    engine = f" ({cfg.engine})" if cfg.backend == "torch" else ""
    return (
        f"the {cfg.backend}{engine} int8 artifact agrees with its fake-quant PyTorch reference on only "
        f"{100 * a:.2f} % of top-1 predictions ({agreement.get('samples')} held-out images; floor "
        f"{100 * floor:g} %; max |logit diff| {agreement.get('max_abs_diff', float('nan')):.3g}): the file "
        f"computes something its reference does not model{why}, so the reference's ranges, histograms and "
        f"sensitivity figures do not describe the file (its accuracy and latency are still measured on "
        f"the file itself)"
    )


def accuracy_warning(float_top1: float, int8_top1: float, n: int, split: str, cfg: QuantConfig) -> str | None:
    """The warning for an artifact that loses more than ``cfg.accuracy_margin`` points of
    top-1 against the float model on held-out images, or None.

    Example:
        >>> accuracy_warning(0.81, 0.775, 512, "val", QuantConfig(calibration="entropy"))[:60]
        'int8 (static, calibration entropy) loses 3.50 points of top-'
    """
    drop = 100 * (float_top1 - int8_top1)
    if not drop > cfg.accuracy_margin:
        return None
    how = f"{cfg.method}, calibration {cfg.calibration}" if cfg.method == "static" else cfg.method
    if cfg.method == "static" and cfg.calibration == "percentile":
        hint = f"try --calibration minmax (the default) or a higher --percentile (99.99; this run kept {cfg.percentile:g})"
    elif cfg.method == "static" and cfg.calibration != "minmax":
        hint = "try --calibration minmax (the default) or percentile"
    elif cfg.method == "static":
        hint = "try --calibration percentile, --method qat or --max-drop (layers kept float)"
    else:
        hint = "try --max-drop (layers kept float)" if cfg.method == "qat" else "try --method static"
    return (
        f"int8 ({how}) loses {drop:.2f} points of top-1 against fp32 on {n} held-out {split} images "
        f"(fp32 {100 * float_top1:.2f} %, int8 {100 * int8_top1:.2f} %; margin {cfg.accuracy_margin:g}): {hint}"
    )


def resolve_keep_float(model: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    from edgeopt.quantize.layers import match_layers, quantizable_layers

    return match_layers(quantizable_layers(model), patterns) if patterns else []


def quantize(
    model: nn.Module,
    config: QuantConfig | dict | None,
    data: Any,
    out_path: str | Path,
    *,
    verify: bool = True,
    progress: bool = True,
) -> QuantResult:
    """Quantize ``model`` to an int8 artifact for ``config.backend`` and check it.

    Args:
        model: a float ``nn.Module`` carrying its ModelSpec (``create_model``,
            ``load_checkpoint``); it is not modified.
        config: a :class:`QuantConfig`, a dict of its fields, or None (defaults).
        data: the DataModule: calibration images come from its training split, the
            agreement check uses its validation split, QAT trains on it.
        out_path: the artifact to write; the backend's suffix is added when missing.
        verify: compare the artifact with its fake-quant PyTorch reference on
            ``config.verify_samples`` held-out images (top-1 agreement in the result).
        progress: print what is happening on stderr.

    Returns:
        A :class:`QuantResult`: the artifact (sidecar records the config, the layers left
        float and the agreement), the reference, warnings.

    Raises:
        ConfigError: bad config, a method the backend does not offer, a keep_float
            pattern that matches no layer.
        MissingDependencyError: the backend's package is not installed (the message has
            the pip command).
        UnsupportedModelError: a layer the backend cannot quantize (the message names it).
        DataError: NaN/inf in the calibration images or the model's outputs.

    Example:
        >>> from edgeopt.data import get_dataset
        >>> from edgeopt.models import create_model
        >>> data = get_dataset("digits")
        >>> res = quantize(create_model("simple_cnn", data.spec), None, data, "/tmp/m_int8")  # doctest: +SKIP
        >>> res.artifact.precision  # doctest: +SKIP
        'int8'
    """
    from edgeopt.quantize.layers import check_finite
    from edgeopt.spec import get_spec

    cfg = config if isinstance(config, QuantConfig) else QuantConfig.from_dict(config or {})
    backend = get_backend(cfg.backend)
    if cfg.method not in backend.methods:
        raise ConfigError(
            f"the {cfg.backend} backend offers methods {', '.join(backend.methods)}, not '{cfg.method}'"
        )
    reason = backend.available()
    if reason is not None:
        raise MissingDependencyError(reason)
    from edgeopt._outputs import ensure_writable_file
    from edgeopt.data import data_for_model

    # a model without spec fails here, before any work; calibration, the agreement check and
    # the held-out check all see images normalised the model's way, never the dataset's
    data = data_for_model(data, get_spec(model))
    out = Path(out_path)
    suffix = backend.suffix_for(cfg)
    if out.suffix != suffix:
        out = out.with_name(out.name + suffix)
    ensure_writable_file(out, "output file", allow_dir=True)
    out.parent.mkdir(parents=True, exist_ok=True)

    if cfg.max_drop is not None:
        from edgeopt.quantize.sensitivity import auto_mixed_precision

        return auto_mixed_precision(model, cfg, data, out, verify=verify, progress=progress)

    t0 = time.perf_counter()
    model = model.eval()
    calibration = data.calibration(cfg.calibration_samples, seed=cfg.seed)
    check_finite(model, calibration)
    keep = resolve_keep_float(model, cfg.keep_float)
    _log(progress, f"quantizing ({cfg.method}, {cfg.backend}, calibration {cfg.calibration} on "
                   f"{len(calibration)} images{', keeping ' + str(len(keep)) + ' layer(s) float' if keep else ''})")
    from edgeopt.quantize.qat import PROGRESS

    token = PROGRESS.set(progress)  # QAT's Trainer follows quantize(progress=...)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            built = backend.build(model, cfg, calibration, out, keep, data)
    finally:
        PROGRESS.reset(token)
    agreement = None
    held_out = None
    warns = list(built.warnings)
    if verify and (built.reference is not None or cfg.accuracy_check):
        split = "val" if len(data.split("val")) else "test"
        samples, labels = data.samples(cfg.verify_samples, split=split, seed=cfg.seed + 1)
        if built.reference is not None:
            agreement = top1_agreement(built.reference, built.artifact, samples,
                                       labels=labels if cfg.accuracy_check else None)
            _log(progress, f"int8 artifact vs fake-quant reference: top-1 agreement "
                           f"{100 * agreement['top1_agreement']:.2f} % on {agreement['samples']} images")
            w = agreement_warning(agreement, cfg, why=_unmodelled(built.meta))
            if w:
                warns.append(w)
        if cfg.accuracy_check:
            held_out = _held_out_check(model, built.artifact, samples, labels, split, agreement)
            w = accuracy_warning(held_out["float_top1"], held_out["int8_top1"], held_out["samples"], split, cfg)
            if w:
                warns.append(w)
    built.warnings = warns
    if held_out is not None:
        built.meta["held_out_check"] = {**held_out, "margin": cfg.accuracy_margin}
    art = built.artifact
    art.meta["quantization"] = {
        **{k: v for k, v in cfg.to_dict().items() if not k.startswith("qat_") or cfg.method == "qat"},
        "float_layers": built.float_layers,
        "warnings": built.warnings,
        "agreement": agreement,
        **built.meta,
    }
    art.save_sidecar()
    for w in built.warnings:
        _log(progress, f"warning: {w}")
    return QuantResult(art, built.reference, cfg, built.float_layers, built.warnings, agreement,
                       built.qparams, time.perf_counter() - t0, dict(built.meta))


def _held_out_check(model: nn.Module, artifact: Any, samples: torch.Tensor, labels: torch.Tensor, split: str,
                    agreement: dict[str, Any] | None) -> dict[str, Any]:
    """Top-1 of the float model and of the int8 artifact on the same held-out images (the
    artifact's predictions are the agreement check's when it ran)."""
    with torch.no_grad():
        float_pred = torch.cat([model(samples[i:i + 64]) for i in range(0, len(samples), 64)]).argmax(1)
    float_top1 = float((float_pred == labels).double().mean())
    if agreement is not None and "artifact_top1" in agreement:
        int8_top1 = agreement["artifact_top1"]
    else:
        from edgeopt.runtime import get_runner

        r = get_runner(artifact, threads=1)
        pred = np.concatenate([r.predict(samples[i:i + 64].numpy()) for i in range(0, len(samples), 64)]).argmax(1)
        int8_top1 = float((pred == labels.numpy()).mean())
    return {"samples": len(samples), "split": split, "float_top1": round(float_top1, 5),
            "int8_top1": round(int8_top1, 5), "drop_points": round(100 * (float_top1 - int8_top1), 3)}


def _log(progress: bool, msg: str) -> None:
    if progress:
        import sys

        print(f"[edgeopt] {msg}", file=sys.stderr, flush=True)
