"""Parity: does an exported artifact compute what the PyTorch model computes?

Both run on the same samples (real, normalised images), the model eagerly in fp32 and the
artifact in its runtime; their logits ``[N, classes]`` are compared. The pass criteria
depend on the artifact's precision (:data:`PARITY_THRESHOLDS`, the one table of defaults):

=========  =======  =======  ===========  =================
precision  rtol     atol     mean cosine  top-1 agreement
=========  =======  =======  ===========  =================
fp32       1e-5     1e-4     --           100 % (ties excused)
fp16       1e-2     0        >= 0.9995    >= 99 %
bf16       4e-2     0        >= 0.999     >= 98 %
int8       --       --       >= 0.98      >= 90 %
mixed      --       --       >= 0.98      >= 90 %
=========  =======  =======  ===========  =================

The closeness criterion is relative to the logits' scale, as ``numpy.allclose`` is to
each value: ``max |artifact - eager| <= atol + rtol * max |eager|``. An export only
reorders float operations (fused conv+BN, other GEMM kernels), so its error is rounding
noise that grows with the size of the logits: efficientnet_b0's logits near -100 differ by
1.2e-4 (relative 1.2e-6, top-1 100 %) in an exact ONNX export, which a fixed absolute bound
of 1e-4 rejected. ``atol`` 1e-4 keeps the old bound for logits of order 1 (room for deep
nets such as resnet56); ``rtol`` 1e-5 is ~100 float32 units in the last place of the
largest logit, still far below any real change. Half precision has an 11-bit (fp16) or
8-bit (bf16) significand, so its error is bounded by ``rtol`` alone. int8 changes the
function on purpose; a faithful int8 model keeps its logits' direction (cosine) and nearly
all its decisions, and accuracy on real data is reported separately.

Top-1 agreement: a sample whose eager top-two logits are closer than twice the allowed
difference is a tie that rounding may legitimately break, so a different arg-max there is
not counted against the floor (``top1_ties`` in the report says how many were excused).

Override the defaults with ``tolerance=`` (``export_model``, ``verify_parity``,
``compare_runtimes``), a dict ``{"parity": {"rtol": ..., "atol": ...}}`` inside an export
config dict, or ``edgeopt export --rtol/--atol`` and ``edgeopt bench --compare --rtol/--atol``.
``max_abs`` / ``max_rel`` remain available as extra, absolute or scale-relative, bounds.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from edgeopt.errors import ConfigError, ExportMismatchError


@dataclasses.dataclass(frozen=True)
class ParityThresholds:
    """Pass criteria of a parity check; a None field is not checked.

    Attributes:
        rtol: relative tolerance: with ``atol``, ``max |artifact - eager| <= atol + rtol *
            max |eager|`` (None with ``atol`` None: not checked; a None half counts as 0).
        atol: absolute tolerance of the same criterion.
        max_abs: an extra bound on ``max |artifact - eager|`` alone.
        max_rel: an extra bound on ``max |artifact - eager| / max |eager|``.
        min_cosine: smallest allowed mean (over samples) cosine similarity of logit rows.
        min_top1: smallest allowed fraction of samples with the same arg-max class (ties
            within the tolerance excused, see the module docstring).

    Example:
        >>> t = ParityThresholds.for_precision("fp32")
        >>> t.rtol, t.atol, t.allowed_abs_diff(100.0)
        (1e-05, 0.0001, 0.0011)
    """

    rtol: float | None = None
    atol: float | None = None
    max_abs: float | None = None
    max_rel: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None

    def allowed_abs_diff(self, scale: float) -> float | None:
        """``atol + rtol * scale`` (``scale`` = max |eager logit|), or None when neither is set."""
        if self.rtol is None and self.atol is None:
            return None
        return round((self.atol or 0.0) + (self.rtol or 0.0) * float(scale), 12)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
                raise ConfigError(f"ParityThresholds.{f.name}={v!r} must be a number >= 0 or None")
        for name in ("min_cosine", "min_top1"):
            v = getattr(self, name)
            if v is not None and v > 1:
                raise ConfigError(f"ParityThresholds.{name}={v!r} must be <= 1")

    @classmethod
    def for_precision(cls, precision: str) -> ParityThresholds:
        """The default thresholds of a precision (see the module docstring)."""
        try:
            return PARITY_THRESHOLDS[precision]
        except KeyError:
            raise ConfigError(
                f"no parity thresholds for precision {precision!r}; known: {', '.join(PARITY_THRESHOLDS)}"
            ) from None

    def to_dict(self) -> dict[str, float | None]:
        return dataclasses.asdict(self)


#: the default pass criteria of each precision (the table in the module docstring)
PARITY_THRESHOLDS: dict[str, ParityThresholds] = {
    "fp32": ParityThresholds(rtol=1e-5, atol=1e-4, min_top1=1.0),
    "fp16": ParityThresholds(rtol=1e-2, atol=0.0, min_cosine=0.9995, min_top1=0.99),
    "bf16": ParityThresholds(rtol=4e-2, atol=0.0, min_cosine=0.999, min_top1=0.98),
    "int8": ParityThresholds(min_cosine=0.98, min_top1=0.90),
    "mixed": ParityThresholds(min_cosine=0.98, min_top1=0.90),
}


@dataclasses.dataclass
class ParityReport:
    """Outcome of comparing an artifact's logits with the eager model's.

    ``to_dict()`` is what goes into ``results.json`` (``row["parity"]``).
    """

    passed: bool
    n_samples: int
    max_abs_diff: float
    mean_abs_diff: float
    max_rel_diff: float  # max |a - b| / max |b|, b = eager logits
    cosine_similarity: float  # mean over samples of cos(a_i, b_i)
    min_cosine_similarity: float
    top1_agreement: float  # fraction in [0, 1]
    worst_sample: int  # sample index holding the largest |a - b|
    worst_class: int  # its logit index
    worst_eager: float  # the eager logit there
    worst_artifact: float  # the artifact's logit there
    thresholds: dict[str, float | None]
    precision: str
    runtime: str
    format: str
    inputs: str = "real"  # "real" samples, or "random" (normal noise of the input shape)
    failures: list[str] = dataclasses.field(default_factory=list)
    logit_scale: float = 0.0  # max |eager logit|: what rtol is relative to
    allowed_abs_diff: float | None = None  # atol + rtol * logit_scale (None: not checked)
    top1_ties: int = 0  # arg-max differences excused as ties within the tolerance
    path: str = ""  # the artifact's file

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line: the numbers and, on failure, what failed and where."""
        allowed = "" if self.allowed_abs_diff is None else f" (allowed {self.allowed_abs_diff:.3g})"
        ties = f" ({self.top1_ties} tie(s) within tolerance excused)" if self.top1_ties else ""
        head = (
            f"{self.format} ({self.precision}, {self.runtime}) vs PyTorch on {self.n_samples} "
            f"{self.inputs} samples: max abs diff {self.max_abs_diff:.3g}{allowed}, relative to the "
            f"logits' scale {self.max_rel_diff:.3g} (max |logit| {self.logit_scale:.3g}), cosine "
            f"{self.cosine_similarity:.6f}, top-1 agreement {100 * self.top1_agreement:.2f}%{ties}"
        )
        if self.passed:
            return head
        return (
            f"{head}; FAILED: {'; '.join(self.failures)}; worst output: sample {self.worst_sample}, "
            f"class {self.worst_class}: PyTorch {self.worst_eager:.6g} vs {self.format} "
            f"{self.worst_artifact:.6g} (diff {abs(self.worst_artifact - self.worst_eager):.3g})"
        )

    def raise_if_failed(self) -> ParityReport:
        """Raise ExportMismatchError (naming the worst output) unless the check passed."""
        if not self.passed:
            raise ExportMismatchError(self.summary())
        return self


def _as_samples(samples: Any) -> np.ndarray:
    """Tensor / ndarray ``[N, C, H, W]``, or an ``(x, y)`` pair from ``DataModule.samples``."""
    if isinstance(samples, (tuple, list)) and len(samples) == 2 and not np.isscalar(samples[0]):
        samples = samples[0]
    if hasattr(samples, "detach"):
        samples = samples.detach().cpu().numpy()
    return np.asarray(samples)


def _thresholds(tolerance: Any, precision: str) -> ParityThresholds:
    if tolerance is None:
        return ParityThresholds.for_precision(precision)
    if isinstance(tolerance, ParityThresholds):
        return tolerance
    if isinstance(tolerance, dict):
        # a dict overrides some criteria of the precision's defaults: {"rtol": 1e-4}
        fields = {f.name for f in dataclasses.fields(ParityThresholds)}
        unknown = sorted(set(tolerance) - fields)
        if unknown:
            raise ConfigError(f"bad parity tolerance key(s) {', '.join(map(str, unknown))}; "
                              f"valid: {', '.join(sorted(fields))}")
        return dataclasses.replace(ParityThresholds.for_precision(precision), **tolerance)
    if isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool):
        # a bare number overrides the absolute bound; the rest stays the precision's own
        return dataclasses.replace(ParityThresholds.for_precision(precision), max_abs=float(tolerance))
    raise ConfigError(f"parity tolerance must be None, a number, a dict or ParityThresholds, got {tolerance!r}")


def compare_logits(
    eager: np.ndarray,
    artifact_out: np.ndarray,
    thresholds: ParityThresholds,
    *,
    precision: str = "fp32",
    runtime: str = "",
    fmt: str = "",
    inputs: str = "real",
) -> ParityReport:
    """Compare two logit arrays ``[N, classes]`` and apply ``thresholds``.

    Example:
        >>> a = np.array([[1.0, 2.0], [3.0, 0.0]], np.float32)
        >>> r = compare_logits(a, a + 1e-6, ParityThresholds.for_precision("fp32"))
        >>> r.passed, r.top1_agreement
        (True, 1.0)
    """
    b = np.asarray(eager, dtype=np.float64)  # float64: the comparison itself adds no error
    a = np.asarray(artifact_out, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ExportMismatchError(
            f"the {fmt or 'artifact'} returns logits of shape {list(a.shape)}, PyTorch {list(b.shape)}"
        )
    n = a.shape[0]
    diff = np.abs(a - b)
    finite = bool(np.isfinite(a).all())
    if finite:
        flat = int(np.argmax(diff))
        max_abs = float(diff.max())
    else:  # a NaN/Inf output is the worst possible output
        flat = int(np.argmax(~np.isfinite(a)))
        max_abs = float("inf")
    ws, wc = divmod(flat, a.shape[1])
    scale = float(np.abs(b).max()) or 1.0
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    # A zero logit row has no direction: count it as agreeing when both rows are zero.
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where((na == 0) & (nb == 0), 1.0, (a * b).sum(1) / (na * nb))
    cos = np.nan_to_num(cos, nan=0.0)
    top1 = float((a.argmax(1) == b.argmax(1)).mean()) if finite else 0.0

    allowed = thresholds.allowed_abs_diff(float(np.abs(b).max()))
    agree = a.argmax(1) == b.argmax(1)
    ties = 0
    if finite and allowed is not None and not agree.all():
        # where the eager top two are closer than 2 x allowed, rounding may break the tie
        rows = np.arange(n)
        margin = b[rows, b.argmax(1)] - b[rows, a.argmax(1)]
        ties = int(((~agree) & (margin <= 2 * allowed)).sum())
    top1_checked = (float(agree.sum()) + ties) / n if finite else 0.0

    failures = []
    if not finite:
        failures.append("the artifact returned NaN or Inf")
    if allowed is not None and not max_abs <= allowed:
        failures.append(
            f"max abs diff {max_abs:.3g} > {allowed:.3g} = atol {thresholds.atol or 0:g} + rtol "
            f"{thresholds.rtol or 0:g} x max |logit| {float(np.abs(b).max()):.3g} (relative {max_abs / scale:.3g})"
        )
    if thresholds.max_abs is not None and not max_abs <= thresholds.max_abs:
        failures.append(f"max abs diff {max_abs:.3g} > {thresholds.max_abs:g}")
    if thresholds.max_rel is not None and not max_abs / scale <= thresholds.max_rel:
        failures.append(f"max rel diff {max_abs / scale:.3g} > {thresholds.max_rel:g}")
    if thresholds.min_cosine is not None and not float(cos.mean()) >= thresholds.min_cosine:
        failures.append(f"mean cosine {float(cos.mean()):.6f} < {thresholds.min_cosine:g}")
    if thresholds.min_top1 is not None and not top1_checked >= thresholds.min_top1:
        failures.append(f"top-1 agreement {100 * top1:.2f}% < {100 * thresholds.min_top1:g}%")
    return ParityReport(
        passed=not failures,
        n_samples=n,
        max_abs_diff=max_abs,
        mean_abs_diff=float(diff.mean()) if finite else float("inf"),
        max_rel_diff=max_abs / scale,
        cosine_similarity=float(cos.mean()),
        min_cosine_similarity=float(cos.min()),
        top1_agreement=top1,
        worst_sample=int(ws),
        worst_class=int(wc),
        worst_eager=float(b[ws, wc]),
        worst_artifact=float(a[ws, wc]),
        thresholds=thresholds.to_dict(),
        precision=precision,
        runtime=runtime,
        format=fmt,
        inputs=inputs,
        failures=failures,
        logit_scale=float(np.abs(b).max()),
        allowed_abs_diff=allowed,
        top1_ties=ties,
    )


def verify_parity(
    model: Any,
    artifact: Any,
    samples: Any,
    tolerance: Any = None,
    *,
    runtime: str | None = None,
    threads: int | None = None,
    batch_size: int = 64,
    inputs: str = "real",
) -> ParityReport:
    """Run ``model`` (eager, fp32) and ``artifact`` (in its runtime) on ``samples`` and compare.

    Args:
        model: the ``nn.Module`` the artifact came from (with its ModelSpec).
        artifact: an :class:`~edgeopt.artifact.Artifact` or its path.
        samples: normalised float32 images ``[N, C, H, W]`` (Tensor or ndarray), or the
            ``(x, y)`` pair ``DataModule.samples(n)`` returns. Use real images: random
            noise can hide a mismatch that only real activations trigger.
        tolerance: None (the thresholds of ``artifact.precision``), a number (overrides
            ``max_abs``), a dict overriding some of the precision's criteria
            (``{"rtol": 1e-4, "atol": 1e-5}``) or a :class:`ParityThresholds` (all of them).
        runtime: runtime for the artifact (default: its format's own).
        threads: threads of both runners.
        batch_size: samples per ``predict`` call.
        inputs: recorded in the report: ``"real"`` or ``"random"``.

    Returns:
        A :class:`ParityReport`; ``passed`` says whether all thresholds held. Call
        ``report.raise_if_failed()`` to turn a failure into ``ExportMismatchError``.

    Raises:
        ConfigError: bad tolerance or samples.
        ArtifactError: samples do not fit the artifact's input shape.

    Example:
        >>> from edgeopt.data import get_dataset  # doctest: +SKIP
        >>> x, _ = get_dataset("digits").samples(256)  # doctest: +SKIP
        >>> verify_parity(model, "model.onnx", x).passed  # doctest: +SKIP
        True
    """
    from edgeopt.artifact import Artifact
    from edgeopt.runtime import get_runner

    if not isinstance(artifact, Artifact):
        artifact = Artifact.load(artifact)
    thresholds = _thresholds(tolerance, artifact.precision)
    x = _as_samples(samples)
    if x.ndim != 4 or x.shape[0] == 0:
        raise ConfigError(f"parity samples must be a non-empty [N, C, H, W] batch, got shape {list(x.shape)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be an integer >= 1")
    eager = get_runner(model, "torch", threads=threads)
    art = get_runner(artifact, runtime, threads=threads)
    fixed = getattr(art, "fixed_batch", None)
    if fixed:  # a static-batch file takes exactly `fixed` images per call
        if x.shape[0] < fixed:
            raise ConfigError(f"the artifact takes batches of {fixed}; give at least {fixed} parity samples")
        batch_size = fixed
        x = x[: x.shape[0] - x.shape[0] % fixed]
    chunks = range(0, x.shape[0], batch_size)
    ref = np.concatenate([eager.predict(x[i : i + batch_size]) for i in chunks])
    out = np.concatenate([art.predict(x[i : i + batch_size]) for i in chunks])
    rep = compare_logits(
        ref, out, thresholds, precision=artifact.precision, runtime=art.name, fmt=artifact.format, inputs=inputs
    )
    rep.path = str(artifact.path)
    return rep
