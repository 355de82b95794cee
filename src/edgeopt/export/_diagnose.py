"""Turn an exporter's exception into a one-line UnsupportedModelError naming the layer.

Exporters report the failing *operator* (``aten.linalg_eig``) deep in a multi-page
message; users need the *layer* (``features.3.attn``). We read the operator name out of
the exception chain, then run the model once eagerly with hooks that record which module
was executing when that operator ran.
"""

from __future__ import annotations

import re
from typing import Any

from edgeopt.errors import UnsupportedModelError

# Patterns that carry the failing operator, in the exporters' wording:
#   dynamo:  "No ONNX function found for <OpOverload(op='aten.linalg_eig', overload='default')>"
#            "call_function[target=torch.ops.aten.linalg_eig.default]"
#   legacy:  "Exporting the operator 'aten::linalg_eigvals' to ONNX opset version 18 is not supported"
_OP_PATTERNS = (
    re.compile(r"op='([\w.:]+)'"),
    re.compile(r"operator '([\w.:]+)'"),
    re.compile(r"target=torch\.ops\.([\w.]+)"),
)
# torch.export names the user code it could not trace:
#   The following call raised this error:\n  File "m.py", line 10, in forward\n    if x.sum() > 0: ...
_CALL = re.compile(r'File "([^"]+)", line (\d+), in (\w+)\s*\n\s*(.+)')
_SUMMARY = re.compile(r"<class '([\w.]+)'>: ([^\n]+)")


def _chain(exc: BaseException) -> list[BaseException]:
    out, seen = [], set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def failing_op(exc: BaseException) -> str | None:
    """The operator an exporter could not convert, as ``name`` (no ``aten.`` / overload).

    Example:
        >>> failing_op(RuntimeError("Exporting the operator 'aten::fft_rfft2' to ONNX opset"))
        'fft_rfft2'
    """
    for e in _chain(exc):
        text = str(e)
        for pat in _OP_PATTERNS:
            m = pat.search(text)
            if m:
                name = m.group(1).replace("::", ".")
                parts = [p for p in name.split(".") if p]
                if parts and parts[0] in ("aten", "prims", "torch", "ops"):
                    parts = parts[1:]
                return parts[0] if parts else None
    return None


def locate_op(model: Any, example: Any, op: str) -> tuple[str, str] | None:
    """``(qualified module name, class name)`` of the innermost module that runs ``op``.

    Runs ``model(example)`` once under ``torch.no_grad`` with forward hooks keeping a
    stack of module names, and a dispatch mode plus a function mode recording the ops.
    """
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    stack: list[str] = [""]
    found: list[str] = []
    names = {id(m): n for n, m in model.named_modules()}

    def matches(name: str) -> bool:
        name = name.split("::")[-1].split(".")[0]
        return name == op or name.startswith(op) or op.startswith(name + "_") or op == name.lstrip("_")

    class _Dispatch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not found and matches(func._schema.name):
                found.append(stack[-1])
            return func(*args, **(kwargs or {}))

    class _Function(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if not found and matches(getattr(func, "__name__", "")):
                found.append(stack[-1])
            return func(*args, **(kwargs or {}))

    # Hooks must return None: a forward hook's return value would replace the output.
    def push(mod: Any, _inputs: Any) -> None:
        stack.append(names.get(id(mod), "?"))

    def pop(_mod: Any, _inputs: Any, _output: Any) -> None:
        stack.pop()

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(push))
        handles.append(m.register_forward_hook(pop))
    try:
        with torch.no_grad(), _Function(), _Dispatch():
            model(example)
    except Exception:  # noqa: BLE001, S110 - best effort; the exporter's error is what matters
        pass
    finally:
        for h in handles:
            h.remove()
    if not found:
        return None
    qual = found[0]
    mod = dict(model.named_modules()).get(qual, model)
    return qual, type(mod).__name__


def unsupported_model_error(
    exc: BaseException, model: Any, example: Any, *, fmt: str, exporter: str, opset: int
) -> UnsupportedModelError:
    """Build the one-line UnsupportedModelError for an exporter failure."""
    op = failing_op(exc)
    if op is not None:
        where = locate_op(model, example, op)
        if where is None:
            layer = "a layer of the model"
        elif where[0] == "":
            layer = f"the forward() of {where[1]} itself"
        else:
            layer = f"layer '{where[0]}' ({where[1]})"
        other = "dynamo=False" if exporter == "dynamo" else "dynamo=True"
        return UnsupportedModelError(
            f"cannot export {layer} to {fmt}: operator aten.{op} has no translation in opset {opset} "
            f"({exporter} exporter); replace that layer, or try OnnxExportConfig({other}) or another opset"
        )
    text = "\n".join(str(e) for e in _chain(exc))
    summary = _SUMMARY.search(text)
    call = _CALL.search(text)
    what = f"{summary.group(1).rsplit('.', 1)[-1]}: {summary.group(2).strip()}" if summary else (
        f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    )
    at = f" at {call.group(1)}:{call.group(2)} in {call.group(3)}: `{call.group(4).strip()}`" if call else ""
    hint = (
        "make that code traceable (no Python branches on tensor values, no batch-size constants); "
        "the legacy exporter (dynamo=False) would silently bake one branch into the graph"
        if exporter == "dynamo"
        else "make that code traceable or try OnnxExportConfig(dynamo=True)"
    )
    return UnsupportedModelError(f"cannot export the model to {fmt} ({exporter} exporter): {what}{at}; {hint}")
