"""``tv:NAME``: any torchvision classification model, built without downloading weights.

``torchvision.models.get_model(NAME, weights=None, num_classes=...)`` builds the model;
when the input has other than 3 channels the first 3-channel ``Conv2d`` is replaced by one
with the same geometry and ``in_channels``. Pretrained weights are never fetched: users load
their own file with :func:`edgeopt.models.load_weights_`. The ImageNet stems are kept, so
these models expect ImageNet-sized inputs for good accuracy (a 32x32 input still runs on
most convnets, but e.g. ViTs need ``image_size``-sized inputs).
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from edgeopt.errors import ConfigError

PREFIX = "tv:"

# Inception-style models return a (logits, aux) tuple in training mode when aux_logits is
# on; edgeopt's trainer and exporters expect plain logits, so it is off unless asked for.
_AUX_LOGITS_OFF = ("googlenet", "inception_v3")


def classification_names() -> list[str]:
    """torchvision's classification model names (for ``tv:NAME``).

    Example:
        >>> "resnet18" in classification_names()
        True
    """
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def build_torchvision(name: str, *, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """Build torchvision model ``name`` (without the ``tv:`` prefix), weights not downloaded.

    Args:
        name: a torchvision classification model name, e.g. ``"resnet18"``.
        num_classes: outputs of the classifier.
        in_channels: channels of the input (the first conv is replaced when not 3).
        **kwargs: passed to the torchvision builder (e.g. ``width_mult`` for mnasnet).

    Returns:
        The model with random weights.

    Raises:
        ConfigError: unknown name (close names listed), a detection/segmentation model,
            ``weights`` given, or arguments the builder does not take.

    Example:
        >>> m = build_torchvision("resnet18", num_classes=10, in_channels=1)
        >>> m.conv1.in_channels, m.fc.out_features
        (1, 10)
    """
    import torchvision.models as tvm

    names = classification_names()
    if name not in names:
        if name in tvm.list_models():
            raise ConfigError(
                f"tv:{name} is not a classification model; tv: supports only "
                f"torchvision.models classification models (e.g. tv:resnet18)"
            )
        close = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
        hint = f"Did you mean {', '.join('tv:' + c for c in close)}? " if close else ""
        raise ConfigError(
            f"unknown torchvision model 'tv:{name}'. {hint}"
            f"See torchvision.models.list_models(module=torchvision.models) for all names"
        )
    if kwargs.get("weights") not in (None, False):
        raise ConfigError(
            f"tv:{name}: edgeopt never downloads weights; build it with no 'weights' and "
            f"load your own file with edgeopt.models.load_weights_(model, path)"
        )
    kwargs.pop("weights", None)
    if name in _AUX_LOGITS_OFF:
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    try:
        model = tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"tv:{name}: bad arguments {sorted(kwargs)}: {exc}") from None
    if in_channels != 3:
        _replace_first_conv(model, in_channels, name)
    return model


def _replace_first_conv(model: nn.Module, in_channels: int, name: str) -> None:
    """Swap the first Conv2d that takes 3 channels for one that takes ``in_channels``."""
    for qual, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            new = nn.Conv2d(
                in_channels,
                module.out_channels,
                module.kernel_size,
                stride=module.stride,
                padding=module.padding,
                dilation=module.dilation,
                groups=1,
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
            )
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            if new.bias is not None:
                nn.init.zeros_(new.bias)
            parent_name, _, attr = qual.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, new)
            return
    raise ConfigError(
        f"tv:{name}: found no 3-channel Conv2d to adapt to {in_channels} input channels"
    )
