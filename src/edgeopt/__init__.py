"""edgeopt: make PyTorch vision models fit edge devices, and measure every variant.

The public API lives in the subpackages (``edgeopt.data``, ``edgeopt.models``,
``edgeopt.train``, ``edgeopt.export``, ``edgeopt.runtime``, ``edgeopt.evaluate``);
heavy backends are imported on first use.
"""

__version__ = "0.1.0"

from edgeopt.errors import (  # noqa: E402
    ArtifactError,
    ConfigError,
    DataError,
    EdgeoptError,
    ExportMismatchError,
    MissingDependencyError,
    ModelLoadError,
    NumericalError,
    UnsupportedModelError,
)
from edgeopt.spec import ModelSpec  # noqa: E402

__all__ = [
    "__version__",
    "ArtifactError",
    "ConfigError",
    "DataError",
    "EdgeoptError",
    "ExportMismatchError",
    "MissingDependencyError",
    "ModelLoadError",
    "ModelSpec",
    "NumericalError",
    "UnsupportedModelError",
]
