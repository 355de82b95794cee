"""``run_training``: build data and model by name, then fit. The CLI and torchrun use it."""

from __future__ import annotations

from typing import Any

from edgeopt.train.config import TrainConfig
from edgeopt.train.state import seed_everything
from edgeopt.train.trainer import Trainer, TrainResult


def run_training(model_name: str, dataset: Any, config: TrainConfig, *,
                 model_kwargs: dict[str, Any] | None = None,
                 data_root: str | None = None) -> TrainResult:
    """Create ``model_name`` for ``dataset`` and train it with ``config``.

    The model is created after seeding with ``config.seed``, so the initial weights (and
    the whole run) are reproducible, and identical on every DDP rank.

    Args:
        model_name: a name :func:`edgeopt.models.create_model` accepts (``simple_cnn``,
            ``mobilenetv2``, ``tv:resnet18``, ``pkg.mod:factory``).
        dataset: a dataset name for :func:`edgeopt.data.get_dataset`, or a DataModule.
        config: the :class:`TrainConfig`.
        model_kwargs: architecture arguments, e.g. ``{"width_mult": 0.5}``.
        data_root: where the dataset's files are (downloaded datasets only).

    Returns:
        The :class:`TrainResult`.

    Raises:
        ConfigError: unknown model/dataset, bad arguments or config values.
        DataError: the dataset cannot be read.
        NumericalError: the loss became NaN/Inf.

    Example:
        >>> res = run_training("simple_cnn", "synthetic", TrainConfig(epochs=1, progress=False))
        >>> len(res.history)
        1
    """
    from edgeopt.data import get_dataset
    from edgeopt.models import create_model

    data = get_dataset(dataset, root=data_root) if isinstance(dataset, str) else dataset
    seed_everything(config.seed)
    model = create_model(model_name, data.spec, **dict(model_kwargs or {}))
    return Trainer(config).fit(model, data)
