"""What the commands on one trained file run: eval, export, and the data every command on a
checkpoint or artifact is fed with.

The CLI only builds configs and calls these (DESIGN habit 7). :func:`load_data_for` is the one
way a command gets data for a trained model: the dataset the file records (or the one given),
normalised with the file's own ModelSpec (:func:`edgeopt.data.data_for_model`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from edgeopt.errors import ConfigError
from edgeopt.pipeline import DataConfig, EvalConfig


def resolve_dataset(target: str | Path, data: DataConfig | None) -> DataConfig:
    """The DataConfig to evaluate ``target`` on: the one given, or the dataset its spec names.

    A DataConfig without a name (``--data-root`` alone) takes the name from the target's
    ModelSpec, keeping its root.
    """
    if data is not None and data.name is not None:
        return data
    from edgeopt.artifact import Artifact

    spec = Artifact.load(target).spec
    if not spec.dataset:
        raise ConfigError(f"{target} does not record its dataset; pass --data")
    return dataclasses.replace(data, name=spec.dataset) if data is not None else DataConfig(name=spec.dataset)


def load_data_for(target: str | Path, data: DataConfig | None = None, *, resize: bool = False):
    """Load the data to feed ``target`` (a checkpoint or artifact) with the target's own
    preprocessing: its ModelSpec's mean/std, classes and size win over the dataset's.

    Args:
        target: a checkpoint (``.safetensors``) or an artifact file with a sidecar.
        data: the dataset (None, or a DataConfig without a name: the one the target records).
        resize: resize images of another size to the target's (else that is a DataError).

    Returns:
        A DataModule whose ``spec`` is the target's (see :func:`edgeopt.data.data_for_model`).

    Raises:
        DataError: the data's channels, classes, class names or size do not fit the target.
    """
    from edgeopt.artifact import Artifact
    from edgeopt.data import data_for_model

    art = Artifact.load(target)
    dm = resolve_dataset(target, data).load()
    spec = art.spec
    if (art.meta or {}).get("guessed_from") == "onnx graph shapes":
        # A bare ONNX file records no preprocessing: its mean 0 / std 1 is a guess, not the
        # model's. Feed it the dataset's normalisation and say so (ArtifactWarning from load).
        import warnings

        from edgeopt.artifact import ArtifactWarning

        spec = dataclasses.replace(dm.spec, input_shape=spec.input_shape)
        warnings.warn(
            f"{Path(target).name} records no preprocessing; fed with {dm.name}'s mean/std "
            f"{dm.spec.mean}/{dm.spec.std}. Record the model's own with `edgeopt import "
            f"{Path(target).name} --mean ... --std ...`", ArtifactWarning, stacklevel=2)
    return data_for_model(dm, spec, where=Path(target).name, resize=resize)


def evaluate_path(
    target: str | Path, data: DataConfig | None = None, runtime: str | None = None,
    cfg: EvalConfig | None = None, *, progress: bool = True, resize: bool = False,
) -> dict[str, Any]:
    """Evaluate one checkpoint or artifact file: accuracy, latency, size, memory, energy.

    The data is fed with the target's own preprocessing (:func:`load_data_for`).

    Returns:
        One variant row of the results schema.
    """
    from edgeopt.evaluate import evaluate_variant

    cfg = cfg or EvalConfig()
    dm = load_data_for(target, data, resize=resize)  # fails before any work on a mismatch
    model = None
    if str(target).endswith(".safetensors"):
        from edgeopt.models import load_checkpoint

        model, _ = load_checkpoint(target)
    return evaluate_variant(
        Path(target).name, target, dm, model=model, runtime=runtime, threads=cfg.threads,
        latency_runs=cfg.latency_runs, throughput_batch=cfg.throughput_batch, memory=cfg.memory,
        split=cfg.split, progress=progress,
    )


def export_path(
    checkpoint: str | Path, fmt: str, out: str | Path | None = None, data: DataConfig | None = None,
    *, verify: bool = True, n_samples: int = 256, config: Any = None, resize: bool = False,
):
    """Export a checkpoint to ``fmt`` and verify parity on real samples of its dataset.

    Returns:
        An ``ExportResult`` (artifact and parity report).
    """
    from edgeopt.export import EXPORTERS, export_model
    from edgeopt.models import load_checkpoint

    exporter = EXPORTERS.get(fmt)  # an unknown format fails before the checkpoint is read
    model, _ = load_checkpoint(checkpoint)
    out = Path(out) if out else Path(checkpoint).with_suffix(exporter.suffix)
    samples = None
    if verify:  # parity samples normalised the way the model expects (its own spec)
        samples, _ = load_data_for(checkpoint, data, resize=resize).samples(n_samples, split="test")
    return export_model(model, fmt, out, config, samples=samples, verify=verify)
