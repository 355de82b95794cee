"""create_model / list_models / describe_models: build any model edgeopt knows by name.

Three kinds of names:

* a zoo name from the MODELS registry (``simple_cnn``, ``mobilenetv2``, ``resnet20``, ...);
* ``tv:NAME``: a torchvision classification model (see ``torchvision_models``);
* ``package.module:factory``: a user's own factory (see ``user_models``).
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from torch import nn

from edgeopt.errors import ConfigError, EdgeoptError, brief
from edgeopt.models import zoo_cnn, zoo_mobilenet, zoo_resnet  # noqa: F401  (register)
from edgeopt.models._registry import MODELS
from edgeopt.models.summary import count_parameters
from edgeopt.models.torchvision_models import PREFIX as TV_PREFIX
from edgeopt.models.torchvision_models import build_torchvision
from edgeopt.models.user_models import build_user_model, is_user_model
from edgeopt.spec import ModelSpec, attach_spec

ARCH_ATTR = "edgeopt_arch"


def create_model(name: str, spec: ModelSpec, **kwargs: Any) -> nn.Module:
    """Build model ``name`` for ``spec``; attach the spec and the architecture to it.

    Input channels and the number of classes come from ``spec``; the result carries
    ``model.edgeopt_spec = spec`` and ``model.edgeopt_arch = {"name": name, "kwargs": kwargs}``
    so a checkpoint can rebuild it.

    Args:
        name: a zoo name (:func:`list_models`), ``tv:NAME`` or ``package.module:factory``.
        spec: the ModelSpec of the data (input shape, classes).
        **kwargs: architecture arguments (e.g. ``width_mult=0.5``); must be JSON values.

    Returns:
        The new model (random weights, training mode).

    Raises:
        ConfigError: unknown name, bad or non-JSON kwargs, or ``num_classes`` /
            ``in_channels`` in kwargs that disagree with the spec.

    Example:
        >>> import torch
        >>> from edgeopt.spec import ModelSpec
        >>> spec = ModelSpec((1, 8, 8), 10, (0.5,), (0.25,))
        >>> m = create_model("simple_cnn", spec)
        >>> m.edgeopt_arch, m.eval()(spec.example_input(2)).shape
        ({'name': 'simple_cnn', 'kwargs': {}}, torch.Size([2, 10]))
    """
    if not isinstance(spec, ModelSpec):
        raise ConfigError(f"create_model needs a ModelSpec, got {type(spec).__name__}")
    kwargs = dict(kwargs)
    for key, want in (("num_classes", spec.num_classes), ("in_channels", spec.channels)):
        if key in kwargs:
            if kwargs[key] != want:
                raise ConfigError(
                    f"{key}={kwargs[key]!r} disagrees with the ModelSpec ({want}); "
                    f"{key} comes from the data's spec, leave it out"
                )
            kwargs.pop(key)
    try:
        json.dumps(kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"model arguments must be JSON values (numbers, strings, lists, dicts): {exc}"
        ) from None

    if not isinstance(name, str) or not name:
        raise ConfigError(f"a model name must be a non-empty string, got {name!r}")
    try:
        if name.startswith(TV_PREFIX):
            model = build_torchvision(
                name[len(TV_PREFIX) :],
                num_classes=spec.num_classes,
                in_channels=spec.channels,
                **kwargs,
            )
        elif name in MODELS:
            model = _build_zoo(name, spec, kwargs)
        elif is_user_model(name):
            model = build_user_model(
                name, num_classes=spec.num_classes, in_channels=spec.channels, **kwargs
            )
        else:
            MODELS.get(name)  # raises ConfigError with a close match and the choices
            raise AssertionError("unreachable")  # pragma: no cover
    except EdgeoptError:
        raise
    except (TypeError, ValueError, RuntimeError, AssertionError, KeyError, IndexError) as exc:
        # A factory refusing its arguments (e.g. nn.Dropout(p=7): "dropout probability has
        # to be between 0 and 1") is a bad argument, not a bug to show as a traceback.
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no arguments"
        raise ConfigError(f"model '{name}' refused {args}: {brief(exc)}") from None
    attach_spec(model, spec)
    setattr(model, ARCH_ATTR, {"name": name, "kwargs": kwargs})
    return model


def _build_zoo(name: str, spec: ModelSpec, kwargs: dict[str, Any]) -> nn.Module:
    factory = MODELS.get(name)
    params = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        valid = sorted(set(params) - {"num_classes", "in_channels"})
        raise ConfigError(
            f"model '{name}' takes no argument(s) {', '.join(unknown)}; "
            f"valid: {', '.join(valid) or '(none)'}"
        )
    return factory(num_classes=spec.num_classes, in_channels=spec.channels, **kwargs)


def list_models() -> list[str]:
    """The zoo names (``tv:NAME`` and ``package.module:factory`` are accepted too).

    Example:
        >>> "resnet20" in list_models()
        True
    """
    return MODELS.names()


def describe_models(
    num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32)
) -> list[dict]:
    """One row per zoo model: name, parameters, fp32 megabytes, one-line help.

    Args:
        num_classes: classes to count the parameters at.
        input_shape: (C, H, W) to build the models for.

    Returns:
        ``[{"name", "params", "fp32_mb", "help"}, ...]`` sorted by name; ``fp32_mb`` is
        ``params * 4 / 1e6``.

    Example:
        >>> rows = describe_models()
        >>> [r["params"] for r in rows if r["name"] == "resnet20"]
        [272474]
    """
    c = input_shape[0]
    spec = ModelSpec(tuple(input_shape), num_classes, (0.0,) * c, (1.0,) * c)
    rows = []
    for name in list_models():
        params = count_parameters(create_model(name, spec))
        rows.append(
            {"name": name, "params": params, "fp32_mb": params * 4 / 1e6, "help": MODELS.help(name)}
        )
    return rows
