"""``package.module:factory``: a user's own model, imported and called.

The factory is called with ``num_classes=`` and ``in_channels=`` only if its signature
names them (``num_classes`` also when it takes ``**kwargs``; ``in_chans=``, timm's spelling,
when the signature names that or the factory is timm's), plus the user's kwargs. It must
return an ``nn.Module``. Weights are loaded separately (:func:`edgeopt.models.load_weights_`).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from typing import Any

from torch import nn

from edgeopt.errors import ConfigError

# dotted module path, a colon, a dotted attribute path (e.g. "my_pkg.nets:build" or
# "my_pkg.nets:Net.small")
_PATTERN = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def is_user_model(name: str) -> bool:
    """True when ``name`` looks like ``package.module:factory``.

    Example:
        >>> is_user_model("my_pkg.nets:build"), is_user_model("resnet20")
        (True, False)
    """
    return bool(_PATTERN.match(name))


def _import(mod_name: str) -> Any:
    """Import ``mod_name``; if that fails, once more with the working directory on sys.path.

    ``python -m`` puts the working directory on sys.path but the ``edgeopt`` console script
    does not, so a user's ``model.py`` beside them would otherwise need PYTHONPATH set for
    every command. Only names the user allowed get here (edgeopt.models.trust).
    """
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        top = mod_name.partition(".")[0]
        if exc.name != top or cwd in sys.path or "" in sys.path:
            raise
        sys.path.insert(0, cwd)
        try:
            return importlib.import_module(mod_name)
        except ImportError:
            sys.path.remove(cwd)
            raise exc from None


def build_user_model(name: str, *, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """Import ``package.module:factory`` and call it.

    Args:
        name: ``"package.module:factory"``; the module must be importable (on sys.path).
        num_classes: passed as ``num_classes=`` if the factory accepts it.
        in_channels: passed as ``in_channels=`` if the factory names that parameter.
        **kwargs: passed to the factory as they are.

    Returns:
        The module the factory returned.

    Raises:
        ConfigError: malformed name, module or attribute not found, factory raised a
            TypeError, or the result is not an ``nn.Module``.

    Example:
        >>> m = build_user_model("torchvision.models:resnet18", num_classes=10, in_channels=3)
        >>> m.fc.out_features
        10
    """
    if not is_user_model(name):
        raise ConfigError(f"'{name}' is not of the form package.module:factory")
    mod_name, _, attr_path = name.partition(":")
    try:
        obj: Any = _import(mod_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import '{mod_name}' for model '{name}' ({exc}); install it, run from "
            f"the folder that holds it, or add that folder to PYTHONPATH"
        ) from None
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"'{mod_name}' has no attribute '{attr_path}' (model '{name}')")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"'{name}' is not callable; point it at a function or class")

    call_kwargs = dict(kwargs)
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):  # some builtins have no signature
        params = {}
    takes_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "num_classes" in params or takes_var_kw:
        call_kwargs.setdefault("num_classes", num_classes)
    if "in_channels" in params:
        call_kwargs.setdefault("in_channels", in_channels)
    elif "in_chans" in params or (takes_var_kw and mod_name.split(".")[0] == "timm"):
        # timm's spelling: its model functions take **kwargs and pass in_chans to the class
        call_kwargs.setdefault("in_chans", in_channels)
    try:
        model = obj(**call_kwargs)
    except TypeError as exc:
        raise ConfigError(f"calling '{name}' with {sorted(call_kwargs)} failed: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"'{name}' returned {type(model).__name__}, not a torch.nn.Module")
    return model
