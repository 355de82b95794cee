"""The configs every job shares: the data, the model, how a variant is measured, and the
``edgeopt train`` job. Recipes (data -> baseline -> variants -> report) live in
:mod:`edgeopt.recipe`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from edgeopt.config import Config
from edgeopt.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DataConfig(Config):
    """Which dataset, and where it lives (root None: the default search path).

    ``name`` None means "the dataset the model records" (its ModelSpec's ``dataset``); it is
    filled in by :func:`resolve_dataset` for commands that start from a checkpoint or artifact.
    """

    name: str | None = "digits"
    root: str | None = None
    val_fraction: float = 0.1
    seed: int = 0
    download: bool = False

    def validate(self) -> None:
        self._check_range("val_fraction", 0.0, 0.9)
        if self.name is not None and not self.name:
            raise ConfigError("DataConfig.name must not be empty")

    def load(self):
        from edgeopt.data import get_dataset

        if self.name is None:
            raise ConfigError("no dataset given: pass --data NAME (see `edgeopt datasets`)")

        return get_dataset(
            self.name, root=self.root, val_fraction=self.val_fraction, seed=self.seed,
            download=self.download,
        )


@dataclasses.dataclass(frozen=True)
class ModelConfig(Config):
    """A zoo name, ``tv:NAME`` or ``package.module:factory``, its arguments and weights."""

    name: str = "simple_cnn"
    kwargs: dict = dataclasses.field(default_factory=dict)
    weights: str | None = None

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("ModelConfig.name must not be empty")

    def build(self, spec):
        """Build the model for ``spec`` (and load ``weights``). A config is data (it may come
        from a file), so a ``package.module:factory`` name must be allowed by the user
        (``--model`` on the command line, ``--trust-model-code``, edgeopt.models.trust)."""
        from edgeopt.models import create_model, load_weights_
        from edgeopt.models.trust import check_model_code

        check_model_code(self.name, "the model config")
        model = create_model(self.name, spec, **self.kwargs)
        if self.weights:
            load_weights_(model, self.weights)
        return model


@dataclasses.dataclass(frozen=True)
class EvalConfig(Config):
    """How every variant is measured (see docs/measurement.md)."""

    split: str = "test"
    threads: int = 1
    latency_runs: int = 100
    warmup: int = 10
    throughput_batch: int = 64
    memory: bool = True

    def validate(self) -> None:
        self._check_choice("split", ("val", "test"))
        self._check_threads("threads")
        self._check_range("latency_runs", 1, None)
        self._check_range("warmup", 0, None)
        self._check_batch_size("throughput_batch")


def _from_dict_with_train(cls, data: dict[str, Any] | None):
    """Config.from_dict for configs whose ``train`` field is an edgeopt.train.TrainConfig.

    The field is typed ``Any`` so that importing this module does not import torch.
    """
    from edgeopt.train import TrainConfig

    data = dict(data or {})
    train = data.pop("train", None)
    cfg = Config.from_dict.__func__(cls, data)
    if train is not None:
        cfg = dataclasses.replace(cfg, train=TrainConfig.from_dict(train))
    return cfg


def _default_train():
    from edgeopt.train import TrainConfig

    return TrainConfig(epochs=15, batch_size=64, lr=0.05, seed=0)


@dataclasses.dataclass(frozen=True)
class TrainJob(Config):
    """What ``edgeopt train`` runs: a dataset, a model and a TrainConfig."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: Any = dataclasses.field(default_factory=_default_train)  # edgeopt.train.TrainConfig

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "TrainJob":
        return _from_dict_with_train(cls, data)


def train_job(job: TrainJob):
    """Load the data, build the model and train it with the project's Trainer.

    Returns:
        The Trainer's ``TrainResult`` (model, history, best_metric, best_path, last_path).
    """
    from edgeopt._outputs import ensure_writable_dir
    from edgeopt.models.trust import check_model_code
    from edgeopt.train import Trainer

    # what can be refused without data is refused before the (possibly long) data load
    if job.train.out_dir:
        ensure_writable_dir(job.train.out_dir, "out_dir")
    check_model_code(job.model.name, "the model config")
    data = job.data.load()
    model = job.model.build(data.spec)
    return Trainer(job.train).fit(model, data)
