"""ModelSpec: what a model expects and produces.

Every model carries its ModelSpec (attribute ``edgeopt_spec``), so export, calibration
and benchmarking never guess an input shape. It comes from the dataset.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from edgeopt.errors import ConfigError

SPEC_ATTR = "edgeopt_spec"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Input shape, normalisation and classes of an image classifier.

    Inputs to every model and artifact are float32 NCHW tensors already normalised
    with ``mean``/``std`` (the data module does it), so exported files need no
    preprocessing baked in.

    Example:
        >>> s = ModelSpec((1, 8, 8), 10, (0.5,), (0.25,))
        >>> tuple(s.example_input(2).shape)
        (2, 1, 8, 8)
    """

    input_shape: tuple[int, int, int]  # (C, H, W) of one image
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()
    dataset: str = ""

    def __post_init__(self) -> None:
        if len(self.input_shape) != 3 or any(int(d) <= 0 for d in self.input_shape):
            raise ConfigError(f"ModelSpec.input_shape must be (C, H, W) > 0, got {self.input_shape}")
        if self.num_classes < 1:
            raise ConfigError(f"ModelSpec.num_classes must be >= 1, got {self.num_classes}")
        c = self.input_shape[0]
        if len(self.mean) != c or len(self.std) != c:
            raise ConfigError(f"ModelSpec mean/std need {c} values (one per channel)")
        if any(s <= 0 for s in self.std):
            raise ConfigError("ModelSpec.std values must be > 0")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ConfigError(
                f"ModelSpec has {len(self.class_names)} class names for {self.num_classes} classes"
            )

    @property
    def channels(self) -> int:
        return self.input_shape[0]

    def names(self) -> tuple[str, ...]:
        return self.class_names or tuple(str(i) for i in range(self.num_classes))

    def example_input(self, batch: int = 1, seed: int = 0):
        """A deterministic normal-random batch of the input shape (float32 NCHW)."""
        import torch

        g = torch.Generator().manual_seed(seed)
        return torch.randn((batch, *self.input_shape), generator=g)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        try:
            return cls(
                input_shape=tuple(int(x) for x in d["input_shape"]),  # type: ignore[arg-type]
                num_classes=int(d["num_classes"]),
                mean=tuple(float(x) for x in d["mean"]),
                std=tuple(float(x) for x in d["std"]),
                class_names=tuple(str(x) for x in d.get("class_names", ())),
                dataset=str(d.get("dataset", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid ModelSpec {d!r}: {exc}") from None


def attach_spec(model: Any, spec: ModelSpec) -> Any:
    """Attach ``spec`` to a model (in place) and return the model."""
    setattr(model, SPEC_ATTR, spec)
    return model


def get_spec(model: Any) -> ModelSpec:
    """The ModelSpec a model carries; a model without one is a ConfigError."""
    spec = getattr(model, SPEC_ATTR, None)
    if spec is None:
        raise ConfigError(
            "this model carries no ModelSpec; build it with edgeopt.models.create_model "
            "or attach one with edgeopt.spec.attach_spec(model, spec)"
        )
    return spec
