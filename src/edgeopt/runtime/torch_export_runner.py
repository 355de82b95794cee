"""The ``torch_export`` runtime: a ``.pt2`` file from ``torch.export.save``, compiled by inductor.

The torch quantization backend writes these for engine ``pt2e-x86`` (torchao PT2E). A PT2E
int8 graph is quantize/dequantize ops around float convs: run as is it computes in float
(slower than fp32). Inductor's freezing passes, with torchao's X86 patterns registered,
fuse each dequantize -> conv -> quantize into one oneDNN int8 kernel; so by default the
program is compiled on the first ``predict`` (``torch.compile``, ``freezing=True`` for
the compile only) and that compiled module is what runs and is timed.
``compile=False`` runs the exported graph eagerly (a debugging aid, not a deployment).

The batch dimension of the file is dynamic, but the compile is static per batch size
(``dynamic=False``): on torch 2.14.1 a dynamic-shape compile of the int8 conv lowering
fails a stride assertion at run time. Each new batch size compiles once (seconds);
benchmarks run one batch size after warm-up, so they time the compiled kernels.

Security: ``torch.export.load`` is *not* a safe loader, checked on torch 2.14.1: it
unpickles weights and constants flagged ``use_pickle`` (``torch.load(weights_only=False)``),
falls back to an unrestricted ``torch.load`` when the sample inputs fail a weights-only
load, runs the archive's ``guards_code`` as Python, evaluates symbolic shapes with
``sympy.sympify`` (``eval``), resolves any ``torch.*`` callable named in the graph, and
``dlopen``s AOTInductor libraries. This runner reads the file once into memory, refuses
every one of those constructs (:func:`unsafe_reason`), and hands ``torch.export.load``
the very bytes it checked. The files edgeopt writes use none of them; still, load only
``.pt2`` files you built or trust, as for any model program.
"""

from __future__ import annotations

import io
import json
import re
import warnings
import zipfile
from typing import Any

import numpy as np

from edgeopt._backends import SPEC_EXTRA_FILE
from edgeopt.errors import ArtifactError, MissingDependencyError, brief
from edgeopt.runtime._base import RUNNERS, TorchVersionMixin, bind_target, check_batch

#: sympy names torch.export writes into symbolic shape expressions
_SYM_NAMES = {"Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "floor", "ceiling", "oo", "int_oo",
              "positive", "integer", "nonnegative", "True", "False", "Max", "Min",
              "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt",
              "FloorToInt", "CeilDiv", "TruncToInt", "IntTrueDiv", "FloatTrueDiv", "Abs", "Eq", "Ne",
              "Le", "Lt", "Ge", "Gt", "And", "Or", "Not"}
_SYM_TOKEN = re.compile(r"'[a-z]\d+'|[A-Za-z_]\w*|\d+|[-+*/%(),=<>!&|~ .]")


def _expr_ok(expr: str) -> bool:
    """A symbolic shape expression made only of symbols, numbers, operators and sympy names."""
    pos = 0
    while pos < len(expr):
        m = _SYM_TOKEN.match(expr, pos)
        if m is None:
            return False
        tok = m.group(0)
        if tok[0].isalpha() or tok[0] == "_":
            if tok not in _SYM_NAMES and not re.fullmatch(r"[a-z]\d+", tok):
                return False
        elif tok == "." and not (pos > 0 and expr[pos - 1].isdigit()):  # decimal points only
            return False
        pos = m.end()
    return True


def _target_ok(target: str) -> bool:
    """A graph node target that torch's deserializer resolves to an operator, nothing else."""
    import operator

    import torch
    from torch._export.serde.serialize import _SYM_OPS

    if target.startswith("torch.ops."):
        obj: Any = torch
        for part in target.split(".")[1:]:
            obj = getattr(obj, part, None)
            if obj is None:
                return False
        return isinstance(obj, (torch._ops.OpOverload, torch._ops.HigherOrderOperator))
    root, _, rest = target.partition(".")
    mod = {"_operator": operator, "math": __import__("math"), "torch": torch}.get(root)
    obj = mod
    for part in rest.split(".") if rest else ():
        obj = getattr(obj, part, None) if obj is not None else None
    return obj is not None and (obj in _SYM_OPS or obj is operator.getitem)


def _walk(obj: Any, visit) -> None:
    if isinstance(obj, dict):
        visit(obj)
        for v in obj.values():
            _walk(v, visit)
    elif isinstance(obj, list):
        for v in obj:
            _walk(v, visit)


def _graph_problems(model: dict) -> list[str]:
    """Node targets that are not torch operators, shape expressions that are not arithmetic."""
    problems: list[str] = []

    def visit(d: dict) -> None:
        t = d.get("target")
        if isinstance(t, str) and "inputs" in d and not _target_ok(t):
            problems.append(f"its graph calls {t!r}, not a torch operator")
        e = d.get("expr_str")
        if isinstance(e, str) and not _expr_ok(e):
            problems.append(f"its shape expression {e[:60]!r} is not plain arithmetic")

    _walk(model, visit)
    return problems


def unsafe_reason(data: bytes) -> str | None:
    """Why ``torch.export.load`` could run code from this ``.pt2`` archive; None if it cannot.

    Refused: AOTInductor libraries, legacy pickled weight/constant files, pickled payloads,
    custom or opaque objects, sample inputs that need a full unpickler, ``guards_code``,
    symbolic expressions beyond symbols/numbers/operators, and graph targets that are not
    torch operators.

    Raises:
        zipfile.BadZipFile, ValueError, KeyError: the archive is malformed (the caller
            turns these into ArtifactError).

    Example:
        >>> import torch
        >>> buf = io.BytesIO()
        >>> torch.export.save(torch.export.export(torch.nn.Linear(2, 1), (torch.zeros(1, 2),)), buf)
        >>> unsafe_reason(buf.getvalue()) is None
        True
    """
    import torch

    zf = zipfile.ZipFile(io.BytesIO(data))
    names = zf.namelist()
    rel = {n.split("/", 1)[1]: n for n in names if "/" in n}
    for r in rel:
        if r.startswith("data/aotinductor/"):
            return "it holds AOTInductor shared libraries"
        if r.startswith(("data/weights/", "data/constants/")) and r.endswith(".pt"):
            return f"it holds a legacy pickled file {r}"
    for r, full in rel.items():
        if r.endswith(("_weights_config.json", "_constants_config.json")):
            cfg = json.loads(zf.read(full)).get("config") or {}
            for fqn, meta in cfg.items():
                if meta.get("use_pickle"):
                    return f"its payload '{fqn}' is pickled"
                if not str(meta.get("path_name", "")).startswith(("weight_", "tensor_")):
                    return f"its constant '{fqn}' is a custom object ({meta.get('path_name')})"
        elif r.startswith("data/sample_inputs/"):
            try:
                torch.load(io.BytesIO(zf.read(full)), weights_only=True)
            except Exception:  # noqa: BLE001 - torch.export.load would retry with a full unpickler
                return f"its sample inputs {r} are not a weights-only file"
        elif r.startswith("models/") and r.endswith(".json"):
            model = json.loads(zf.read(full))
            if model.get("guards_code"):
                return "it carries guards_code (Python run on load)"
            problems = _graph_problems(model)
            bad_keys = [k for k in (model.get("range_constraints") or {}) if not _expr_ok(str(k))]
            if bad_keys:
                problems.append(f"its range constraint {bad_keys[0][:60]!r} is not plain arithmetic")
            if problems:
                return problems[0]
    return None


def _register_ops() -> None:
    """Register the ``quantized_decomposed`` ops a PT2E graph calls (else loading fails)."""
    try:
        import torch.ao.quantization.fx._decomposed  # noqa: F401
    except ImportError:  # pragma: no cover - torch without torch.ao: torchao registers them
        import torchao.quantization.pt2e  # noqa: F401


@RUNNERS.register("torch_export", help="torch.export .pt2 program, compiled with inductor on first predict "
                                       "(PT2E int8 from the torch backend, engine pt2e-x86)")
class TorchExportRunner(TorchVersionMixin):
    """Run a ``.pt2`` torch.export artifact: checked, loaded, compiled on first ``predict``.

    Args:
        target: an Artifact of format ``"torch_export"``.
        threads: intra-op threads inside ``predict`` (the compiled kernels' OpenMP threads too).
        compile: compile with inductor (``freezing=True``) on the first ``predict`` of each
            batch size; False runs the exported graph eagerly.

    Raises:
        ArtifactError: the file is corrupt, truncated, not a torch.export archive, holds
            constructs that would run code on load, or disagrees with its sidecar.
        MissingDependencyError: ``compile=True`` without torchao, whose X86 patterns lower
            the int8 graph (without them inductor would compile the float fake-quant ops).

    Example:
        >>> runner = TorchExportRunner(Artifact.load("model.pt2"), threads=1)  # doctest: +SKIP
        >>> runner.predict(np.zeros((4, 1, 8, 8), np.float32)).shape  # doctest: +SKIP
        (4, 10)
    """

    name = "torch_export"
    formats = ("torch_export",)

    def __init__(self, target: Any, threads: int | None = None, compile: bool = True) -> None:
        import torch

        bind_target(self, target, target.spec, threads)
        path = target.path
        self.compile = bool(compile)
        self._compiled: Any = None
        try:
            data = path.read_bytes()
            reason = unsafe_reason(data)
        except (OSError, zipfile.BadZipFile, ValueError, KeyError, UnicodeDecodeError) as exc:
            msg = brief(exc, 200)
            raise ArtifactError(
                f"{path} is not a readable torch.export archive ({type(exc).__name__}: {msg}); rebuild it"
            ) from None
        if reason is not None:
            raise ArtifactError(f"refusing to load {path}: {reason}, so loading it could run code; "
                                f"rebuild it with edgeopt")
        _register_ops()
        extra = {SPEC_EXTRA_FILE: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ep = torch.export.load(io.BytesIO(data), extra_files=extra)
            self.module = ep.module()
        except Exception as exc:  # noqa: BLE001 - the deserializer raises many types on bad files
            msg = brief(exc)
            raise ArtifactError(
                f"torch.export.load cannot load {path} ({type(exc).__name__}: {msg}); the file is corrupt, "
                f"truncated or from another torch version: rebuild it"
            ) from None
        if extra[SPEC_EXTRA_FILE]:
            try:
                embedded = tuple(json.loads(extra[SPEC_EXTRA_FILE]).get("input_shape") or ())
            except (ValueError, AttributeError):
                embedded = ()
            if embedded and embedded != self.input_shape:
                raise ArtifactError(
                    f"{path} was built for input {list(embedded)} but its sidecar says (C, H, W) = "
                    f"{self.input_shape}; the sidecar belongs to another file"
                )
        if self.compile:
            try:  # torchao's X86 inductor passes: dequantize -> conv -> quantize becomes one int8 kernel
                import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401
            except ImportError as exc:
                raise MissingDependencyError(
                    f"the torch_export runner lowers PT2E int8 graphs with torchao's inductor passes: "
                    f"pip install torchao, or run it with compile=False ({exc})"
                ) from None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 NCHW ``[N, C, H, W]`` -> float32 logits ``[N, classes]``.

        The first call with a new batch size compiles (``compile=True``); time after warm-up.

        Raises:
            ArtifactError: the batch does not fit, or the program fails or does not compile.
        """
        import torch

        x = check_batch(batch, self.input_shape, f"the torch.export artifact {self.artifact.path.name}")
        before = torch.get_num_threads()
        try:
            if before != self.threads:
                torch.set_num_threads(self.threads)
            with torch.no_grad():
                if self.compile:
                    import torch._inductor.config as inductor_config

                    if self._compiled is None:
                        self._compiled = torch.compile(self.module, dynamic=False)
                    # freezing: weights become constants, which the int8 weight-prepack passes need
                    with inductor_config.patch(freezing=True):
                        out = self._compiled(torch.from_numpy(x))
                else:
                    out = self.module(torch.from_numpy(x))
        except Exception as exc:  # noqa: BLE001 - a compile or kernel error is one long message
            msg = brief(exc)
            how = "compiled " if self.compile else ""
            raise ArtifactError(f"the {how}torch.export program {self.artifact.path.name} failed: {msg}") from None
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.detach().float().cpu().numpy()
