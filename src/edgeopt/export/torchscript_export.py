"""TorchScript export: one ``.torchscript`` archive, frozen, with the ModelSpec inside.

What is written, and why (checked on torch 2.14.1):

* ``method="trace"`` (default) records the ops of one run on the spec's example input;
  ``method="script"`` compiles ``forward`` from its Python source, so data-dependent
  control flow survives. A trace that would bake a Python branch on a tensor value
  into the graph (torch's ``TracerWarning`` "Converting a tensor to a Python boolean")
  is refused with an :class:`~edgeopt.errors.UnsupportedModelError` naming the layer,
  instead of writing a file that is only right for some inputs.
* ``freeze=True`` (default) runs ``torch.jit.freeze`` on the eval-mode module: weights
  become constants, Conv+BatchNorm are folded and dropout is removed, which is what a
  deployed model wants.
* ``optimize_for_mobile=True`` runs ``torch.utils.mobile_optimizer.optimize_for_mobile``.
  That pass is XNNPACK-only: on a torch build without XNNPACK (e.g. the CUDA 13 wheel
  of torch 2.14.1 used here) it fails with an internal assert, so edgeopt probes for
  it and raises a one-line :class:`~edgeopt.errors.MissingDependencyError` instead.
  The optimised module is still saved with ``torch.jit.save`` (the full interpreter
  that edgeopt's ``torchscript`` runner measures); edgeopt does not write ``.ptl``
  files for the lite interpreter: PyTorch Mobile is superseded by ExecuTorch, and a
  file that no runner here could measure would break the "measured on the real
  artifact" rule.
* ``torch.jit.trace`` / ``script`` / ``freeze`` emit ``FutureWarning: ... is
  deprecated`` in torch 2.14 (TorchScript is in maintenance mode). They still work and
  TorchScript is still what many C++ / LibTorch deployments load, so edgeopt keeps the
  format and silences those warnings during export.

Suffix ``.torchscript`` (as Ultralytics uses), not ``.pt``: a ``.pt`` file in this project
is a weights-only ``torch.load`` file, and ``Artifact.load`` detects the format from the
suffix alone, so the two must not share one. ``edgeopt export --to torchscript`` writes
``NAME.torchscript`` beside the checkpoint.

The ModelSpec is embedded in the archive as the extra file ``edgeopt_spec.json`` (read
back without executing the archive), and the usual sidecar ``FILE.edgeopt.json`` is
written by :func:`edgeopt.export.export_model`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeopt._backends import SPEC_EXTRA_FILE
from edgeopt._io import write_with_atomic
from edgeopt.config import Config
from edgeopt.errors import (
    ArtifactError,
    EdgeoptError,
    MissingDependencyError,
    UnsupportedModelError,
)
from edgeopt.spec import ModelSpec

SUFFIX = ".torchscript"


@dataclasses.dataclass(frozen=True)
class TorchScriptExportConfig(Config):
    """How to export to TorchScript.

    Attributes:
        method: ``"trace"`` (records one run; fast, works for any model without
            tensor-dependent Python control flow) or ``"script"`` (compiles the source;
            keeps control flow, but refuses Python TorchScript cannot type).
        freeze: ``torch.jit.freeze``: inline weights, fold Conv+BN, drop dropout.
        optimize_for_mobile: run ``optimize_for_mobile`` (needs a torch built with
            XNNPACK; see the module docstring). Implies a frozen module.
        example_batch: batch size of the traced example (>= 2: batch 1 can hide a
            batch-size constant baked into a reshape).

    Example:
        >>> TorchScriptExportConfig(method="compile")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        edgeopt.errors.ConfigError: TorchScriptExportConfig.method='compile' must be one of trace, script
        >>> TorchScriptExportConfig(method="script").freeze
        True
    """

    method: str = "trace"
    freeze: bool = True
    optimize_for_mobile: bool = False
    example_batch: int = 2

    def validate(self) -> None:
        self._check_choice("method", ("trace", "script"))
        self._check_range("example_batch", 2, None)


def xnnpack_available() -> bool:
    """Whether this torch build can run ``optimize_for_mobile`` (it needs XNNPACK).

    Example:
        >>> isinstance(xnnpack_available(), bool)
        True
    """
    import torch

    # torch.backends.xnnpack is absent from builds without it; _is_xnnpack_enabled is
    # the switch the mobile optimizer itself asserts on.
    probe = getattr(torch._C, "_is_xnnpack_enabled", None)
    return bool(probe()) if probe is not None else False


@contextlib.contextmanager
def _module_stack(model: Any) -> Iterator[list[str]]:
    """Track which module is executing (innermost last) while the block runs ``model``.

    Forward post-hooks do not run when forward raises, so after an exception the list
    still ends with the module that raised.
    """
    stack: list[str] = []
    names = {id(m): n for n, m in model.named_modules()}

    def push(mod: Any, _inputs: Any) -> None:  # hooks return None: never replace values
        stack.append(names.get(id(mod), "?"))

    def pop(_mod: Any, _inputs: Any, _output: Any) -> None:
        if stack:
            stack.pop()

    handles = [h for m in model.modules() for h in (m.register_forward_pre_hook(push), m.register_forward_hook(pop))]
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


def _layer_label(model: Any, qual: str) -> str:
    if qual == "":
        return f"the forward() of {type(model).__name__} itself"
    mod = dict(model.named_modules()).get(qual)
    return f"layer '{qual}' ({type(mod).__name__})"


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def _trace(model: Any, example: Any) -> Any:
    import torch

    with _module_stack(model) as stack, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation FutureWarnings of torch.jit
        # A branch on a tensor value is baked into the trace: refuse it (see module doc).
        warnings.filterwarnings("error", message=".*Python boolean.*", category=torch.jit.TracerWarning)
        try:
            # check_trace=False: export_model compares with the eager model on real samples.
            return torch.jit.trace(model, (example,), check_trace=False)
        except EdgeoptError:
            raise
        except Exception as exc:  # noqa: BLE001 - every tracer failure becomes one line naming the layer
            where = _layer_label(model, stack[-1] if stack else "")
            if isinstance(exc, torch.jit.TracerWarning):
                raise UnsupportedModelError(
                    f"cannot trace {where} to torchscript: its Python code branches on a tensor value, "
                    f"which a trace would bake in for one input; use TorchScriptExportConfig(method='script') "
                    f"(edgeopt export --to torchscript --method script) or make the branch tensor-free"
                ) from None
            raise UnsupportedModelError(
                f"cannot trace {where} to torchscript ({type(exc).__name__}: {_first_line(exc)}); "
                f"try TorchScriptExportConfig(method='script') (edgeopt export --to torchscript --method script)"
            ) from None


def _scriptable(mod: Any) -> BaseException | None:
    import torch

    try:
        torch.jit.script(mod)
    except Exception as exc:  # noqa: BLE001
        return exc
    return None


def _script(model: Any) -> Any:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        err = _scriptable(model)
        if err is None:
            return torch.jit.script(model)
        # Name the layer: descend into the first child that fails on its own; the
        # deepest such module holds the code TorchScript cannot compile.
        qual, mod, exc = "", model, err
        while True:
            for name, child in mod.named_children():
                child_err = _scriptable(child)
                if child_err is not None:
                    qual, mod, exc = f"{qual}.{name}" if qual else name, child, child_err
                    break
            else:
                break
    raise UnsupportedModelError(
        f"cannot script {_layer_label(model, qual)} to torchscript ({type(exc).__name__}: {_first_line(exc)}); "
        f"make its forward() TorchScript-compatible or use TorchScriptExportConfig(method='trace')"
    )


def export_torchscript(
    model: Any, spec: ModelSpec, out_path: Path, cfg: TorchScriptExportConfig
) -> tuple[Any, dict[str, Any]]:
    """Trace or script ``model`` (in eval mode), freeze it and save it atomically.

    Returns:
        ``(script_module, meta)``: meta records method, freeze, optimize_for_mobile,
        export seconds and versions.

    Raises:
        UnsupportedModelError: the model cannot be traced or scripted (the layer is named).
        MissingDependencyError: ``optimize_for_mobile=True`` on a torch without XNNPACK.
    """
    import torch

    if cfg.optimize_for_mobile and not xnnpack_available():
        raise MissingDependencyError(
            f"TorchScript optimize_for_mobile needs a torch build with XNNPACK; torch {torch.__version__} here "
            f"has none (use the CPU wheel from pytorch.org), or export with optimize_for_mobile=False"
        )
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    example = spec.example_input(cfg.example_batch).to(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        module = _trace(model, example) if cfg.method == "trace" else _script(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                if cfg.freeze or cfg.optimize_for_mobile:
                    module = torch.jit.freeze(module.eval())
                if cfg.optimize_for_mobile:
                    from torch.utils.mobile_optimizer import optimize_for_mobile

                    module = optimize_for_mobile(module)
            except EdgeoptError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise UnsupportedModelError(
                    f"torch.jit.freeze/optimize_for_mobile failed on the {cfg.method}d model "
                    f"({type(exc).__name__}: {_first_line(exc)}); export with freeze=False"
                ) from None
    seconds = time.perf_counter() - t0
    extra = {SPEC_EXTRA_FILE: json.dumps(spec.to_dict())}

    def _save(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.save is deprecated"
            torch.jit.save(module, str(tmp), _extra_files=extra)

    write_with_atomic(out_path, _save)
    meta = {
        "exporter": f"torch.jit.{cfg.method}",
        "method": cfg.method,
        "frozen": bool(cfg.freeze or cfg.optimize_for_mobile),
        "optimize_for_mobile": cfg.optimize_for_mobile,
        "export_seconds": round(seconds, 3),
        "versions": {"torch": str(torch.__version__)},
        "config": cfg.to_dict(),
    }
    return module, meta


def read_embedded_spec(path: str | Path) -> ModelSpec | None:
    """The ModelSpec embedded in a ``.torchscript`` archive, read without loading its code.

    A TorchScript file is a zip archive; extra files live at ``<root>/extra/NAME``.

    Returns:
        The ModelSpec, or None when the archive has none (not written by edgeopt).

    Raises:
        ArtifactError: the file is not a readable zip archive (corrupt or truncated).

    Example:
        >>> read_embedded_spec("missing.torchscript")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        edgeopt.errors.ArtifactError: missing.torchscript is not a readable TorchScript archive ...
    """
    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith(f"/extra/{SPEC_EXTRA_FILE}")), None)
            if name is None:
                return None
            data = json.loads(zf.read(name).decode("utf-8"))
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(
            f"{path} is not a readable TorchScript archive ({type(exc).__name__}: {_first_line(exc)}); re-export it"
        ) from None
    return ModelSpec.from_dict(data)
