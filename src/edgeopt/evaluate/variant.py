"""Evaluate one variant end to end: one row of ``results.json``.

The same code measures every variant (eager model, checkpoint, ONNX file, later TFLite
...), always through the Runner that would be deployed:

1. accuracy on the held-out split, through the Runner;
2. latency at batch 1 and throughput at a larger batch, through the Runner;
3. size of the artifact file (or of the module's state_dict when there is no file);
4. MACs and bytes moved, from the ``nn.Module`` the variant came from (when given);
5. peak memory, in a fresh child process that loads the artifact;
6. an energy estimate from MACs and bytes moved at the variant's precision.

Accuracy and batch-1 latency are the variant's reason to exist: if they fail, the error is
raised. The other stages record a one-line note and ``null`` instead of stopping a run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgeopt.errors import EdgeoptError
from edgeopt.evaluate.accuracy import evaluate_accuracy
from edgeopt.evaluate.energy import BYTES_PER_ELEMENT, estimate_energy, normalize_precision
from edgeopt.evaluate.latency import measure_latency, measure_throughput
from edgeopt.evaluate.macs import count_macs
from edgeopt.evaluate.memory import measure_peak_memory
from edgeopt.evaluate.results import new_variant
from edgeopt.evaluate.size import measure_size

_SUFFIX_FORMAT = {".onnx": "onnx", ".safetensors": "checkpoint", ".pt": "torch", ".pth": "torch",
                  ".tflite": "tflite", ".xml": "openvino", ".mlpackage": "coreml"}


def _is_module(obj: Any) -> bool:
    try:
        import torch

        return isinstance(obj, torch.nn.Module)
    except ImportError:  # pragma: no cover
        return False


def _describe(target: Any) -> tuple[str, str | None, str, list]:
    """(format, artifact path or None, precision, lineage) of a target, without loading it."""
    if _is_module(target):
        return "pytorch", None, "fp32", []
    if hasattr(target, "predict"):  # a ready Runner; it may know its artifact
        art = getattr(target, "artifact", None)
        if art is not None:
            return _describe(art)
        return str(getattr(target, "format", "unknown")), None, "fp32", []
    if hasattr(target, "path") and hasattr(target, "format"):  # an Artifact
        meta = getattr(target, "meta", None) or {}
        return (str(target.format), str(target.path), str(getattr(target, "precision", "fp32")),
                list(meta.get("lineage", []) if isinstance(meta, dict) else []))
    p = Path(target)
    try:  # an artifact file with a sidecar knows its own format and precision
        import warnings

        from edgeopt.artifact import Artifact

        with warnings.catch_warnings():  # the runner, built next, warns about a guessed spec
            warnings.simplefilter("ignore")
            art = Artifact.load(p)
        return _describe(art)[0], str(p), str(art.precision), list((art.meta or {}).get("lineage", []))
    except Exception:
        pass
    return _SUFFIX_FORMAT.get(p.suffix.lower(), p.suffix.lstrip(".") or "unknown"), str(p), "fp32", []


def _target_spec(target: Any, model: Any) -> Any:
    """The ModelSpec the variant was built with (module, artifact, runner or file), or None.

    A bare ONNX file whose spec was guessed from its graph (mean 0, std 1) records no
    preprocessing, so it gives None: the data's own normalisation is used for it.
    """
    from edgeopt.spec import SPEC_ATTR

    for obj in (target, getattr(target, "artifact", None), model):
        if obj is None:
            continue
        if _is_module(obj) and getattr(obj, SPEC_ATTR, None) is not None:
            return getattr(obj, SPEC_ATTR)
        if hasattr(obj, "path") and hasattr(obj, "spec"):  # an Artifact
            return None if (obj.meta or {}).get("guessed_from") == "onnx graph shapes" else obj.spec
    if isinstance(target, (str, Path)):
        import warnings

        from edgeopt.artifact import Artifact

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return _target_spec(Artifact.load(target), None)
        except EdgeoptError:
            return None
    return None


def _runner_for(target: Any, runtime: str | None, threads: int) -> Any:
    if hasattr(target, "predict"):
        return target
    from edgeopt.runtime import get_runner

    return get_runner(target, runtime=runtime, threads=threads)


class _Stages:
    """Times each stage and prints one line per stage on stderr (when ``progress``)."""

    def __init__(self, name: str, progress: bool) -> None:
        self.name = name
        self.console = None
        if progress:
            from rich.console import Console

            self.console = Console(stderr=True, highlight=False)

    @contextmanager
    def stage(self, label: str) -> Iterator[dict[str, str]]:
        out = {"text": ""}  # the block sets out["text"] to a short summary
        t0 = time.perf_counter()
        ok = False
        try:
            yield out
            ok = True
        finally:
            if self.console is not None:
                status = "[green]ok[/]" if ok else "[red]failed[/]"
                from rich.markup import escape

                self.console.print(
                    f"[bold]{escape('[' + self.name + ']')}[/] {label:<10} {status} {escape(out['text'])}  "
                    f"[dim]({time.perf_counter() - t0:.1f} s)[/]",
                    soft_wrap=True,
                )


def _note(row: dict[str, Any], stage: str, exc: BaseException) -> None:
    text = exc.one_line() if isinstance(exc, EdgeoptError) else f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    row["notes"].append(f"{stage} not measured: {text[:300]}")


def evaluate_variant(
    name: str,
    target: Any,
    data: Any,
    *,
    model: Any = None,
    runtime: str | None = None,
    threads: int = 1,
    latency_runs: int = 100,
    latency_warmup: int = 10,
    throughput_batch: int = 64,
    throughput_runs: int = 30,
    accuracy_batch: int = 256,
    memory: bool = True,
    energy: bool = True,
    split: str = "test",
    lineage: list[Any] | None = None,
    precision: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure one variant: accuracy, latency, throughput, size, MACs, memory, energy.

    Args:
        name: the variant's name in the report, e.g. ``"int8 onnx"``.
        target: what is deployed: an artifact path, an ``edgeopt.artifact.Artifact``, an
            ``nn.Module`` (eager torch), or a ready Runner.
        data: the DataModule (its ``spec`` and held-out ``split``).
        model: the ``nn.Module`` the variant came from, for MACs and bytes moved (not
            needed when ``target`` is itself the module).
        runtime: runtime to load ``target`` with; None: the default for its format.
        threads: intra-op threads for every timing and the memory probe.
        latency_runs: timed batch-1 runs (after ``latency_warmup`` untimed ones).
        latency_warmup: untimed batch-1 runs first.
        throughput_batch: batch size of the throughput measurement (0 skips it).
        throughput_runs: timed runs at ``throughput_batch``.
        accuracy_batch: batch size for the accuracy pass.
        memory: measure peak memory in a child process.
        energy: estimate energy from MACs and bytes moved.
        split: the held-out split (``"test"`` or ``"val"``).
        lineage: the steps that produced the variant (default: the artifact's own).
        precision: arithmetic precision for the energy estimate and the record
            (default: the artifact's, else ``"fp32"``).
        progress: print one line per stage on stderr.

    Returns:
        A VariantResult dict (see :mod:`edgeopt.evaluate.results`).

    Raises:
        NumericalError: the variant's logits hold NaN/Inf.
        ConfigError, ArtifactError, MissingDependencyError: the target cannot be loaded.

    Example:
        >>> from edgeopt.data import get_dataset  # doctest: +SKIP
        >>> data = get_dataset("digits")  # doctest: +SKIP
        >>> row = evaluate_variant("fp32 onnx", "model.onnx", data, model=net)  # doctest: +SKIP
        >>> row["accuracy"]["top1"], row["latency"]["batch1"]["median_ms"]  # doctest: +SKIP
        (0.97, 0.08)
    """
    from edgeopt.runtime import check_threads

    threads = check_threads(threads)  # [1, MAX_THREADS]: a huge count hung the process
    own = _target_spec(target, model)
    if own is not None:  # the variant's own preprocessing, never the dataset's guess
        from edgeopt.data import data_for_model

        data = data_for_model(data, own, where=name)
    spec = data.spec
    fmt, artifact_path, own_precision, own_lineage = _describe(target)
    prec = precision or own_precision
    stages = _Stages(name, progress)
    row = new_variant(
        name, format=fmt, precision=prec, artifact=artifact_path,
        lineage=list(lineage) if lineage is not None else own_lineage, split=split,
    )
    row["threads"] = threads

    with stages.stage("load") as out:
        runner = _runner_for(target, runtime, threads)
        row["runtime"] = str(getattr(runner, "name", runtime or "unknown"))
        out["text"] = f"{row['runtime']} runner"

    with stages.stage("accuracy") as out:
        acc = evaluate_accuracy(runner, data, split=split, batch_size=accuracy_batch)
        row["accuracy"] = acc.to_dict()
        out["text"] = f"top-1 {100 * acc.top1:.2f}% on {acc.n} {split} images"

    with stages.stage("latency") as out:
        lat = measure_latency(runner, spec, batch_size=1, warmup=latency_warmup, runs=latency_runs, threads=threads)
        row["latency"] = {"batch1": lat.to_dict(), "throughput": None}
        out["text"] = f"median {lat.median_ms:.3f} ms, p99 {lat.p99_ms:.3f} ms ({lat.runs} runs, {lat.threads} thread(s))"

    if throughput_batch:
        try:
            with stages.stage("throughput") as out:
                tp = measure_throughput(runner, spec, batch_size=throughput_batch, runs=throughput_runs, threads=threads)
                row["latency"]["throughput"] = tp.to_dict()
                out["text"] = f"{tp.throughput:.0f} images/s at batch {tp.batch_size}"
        except Exception as exc:
            _note(row, "throughput", exc)

    size_target = artifact_path if artifact_path is not None else (target if _is_module(target) else model)
    if size_target is not None:
        try:
            with stages.stage("size") as out:
                size = measure_size(size_target)
                row["size"] = size.to_dict()
                if artifact_path is None:
                    row["notes"].append("size: no file; measured the module's state_dict saved as safetensors")
                out["text"] = f"{size.bytes / 1e6:.3f} MB, gzip {size.gzip_bytes / 1e6:.3f} MB"  # MB = 10**6 bytes
        except Exception as exc:
            _note(row, "size", exc)
    else:
        row["notes"].append("size not measured: the runner has no artifact file and no model was given")

    source = model if model is not None else (target if _is_module(target) else None)
    macs = None
    if source is not None:
        try:
            with stages.stage("macs") as out:
                macs = count_macs(source, spec, batch_size=1)
                row["macs"] = macs.to_dict()
                out["text"] = f"{macs.total_macs / 1e6:.2f} MMACs"
        except Exception as exc:
            _note(row, "macs", exc)
    else:
        row["notes"].append("macs not measured: pass model= (the nn.Module the variant came from)")

    if memory:
        mem_target = artifact_path if artifact_path is not None else (target if _is_module(target) else None)
        if mem_target is None:
            row["notes"].append("memory not measured: the runner has no artifact file to load in a child process")
        else:
            try:
                with stages.stage("memory") as out:
                    mem = measure_peak_memory(mem_target, row["runtime"] if row["runtime"] != "unknown" else runtime,
                                              batch_size=1, threads=threads, spec=spec)
                    row["memory"] = mem.to_dict()
                    out["text"] = f"peak {mem.peak_rss_mb:.1f} MiB (model + inference {mem.delta_mb:.1f} MiB)"
            except Exception as exc:
                _note(row, "memory", exc)

    if energy and macs is not None:
        try:
            with stages.stage("energy") as out:
                p = normalize_precision(prec)
                e = estimate_energy(macs.total_macs, macs.bytes_moved(BYTES_PER_ELEMENT[p]), precision=p)
                row["energy"] = e.to_dict()
                out["text"] = f"{e.total_uJ:.2f} µJ per image ({e.label})"
        except Exception as exc:
            _note(row, "energy", exc)
    elif energy:
        row["notes"].append("energy not estimated: it needs MACs (pass model=)")
    return row
