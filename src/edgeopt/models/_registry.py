"""The one model registry, MODELS: zoo name -> factory.

A zoo factory is called as ``factory(num_classes=int, in_channels=int, **kwargs)`` and
returns an ``nn.Module``; :func:`edgeopt.models.create_model` takes those two numbers from
the ModelSpec and attaches the spec and the architecture to the result.
"""

from __future__ import annotations

from edgeopt.registry import Registry

MODELS: Registry = Registry("model")
