"""Model zoo, torchvision and user models, and safe checkpoints.

Public API:

* :func:`create_model` ``(name, spec, **kwargs)``: a zoo name, ``tv:NAME`` or
  ``package.module:factory``; attaches ``edgeopt_spec`` and ``edgeopt_arch``.
* :func:`list_models`, :func:`describe_models`: the zoo, for the CLI and tests.
* :func:`save_checkpoint`, :func:`load_checkpoint`, :func:`load_weights_`,
  :func:`read_sidecar`: ``NAME.safetensors`` + ``NAME.json``; nothing is unpickled.
* :func:`count_parameters`, :func:`model_summary`.
* :func:`allow_model_code`, :func:`trusted_model_code`: let a checkpoint or config name a
  ``package.module:factory`` (files never run code otherwise; :mod:`edgeopt.models.trust`).
* ``edgeopt.models.importing.import_weights``: a state_dict trained elsewhere -> a checkpoint.

Example:
    >>> from edgeopt.models import create_model, count_parameters
    >>> from edgeopt.spec import ModelSpec
    >>> m = create_model("resnet20", ModelSpec((3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3))
    >>> count_parameters(m)
    272474
"""

from edgeopt.models._registry import MODELS
from edgeopt.models.checkpoint import (
    checkpoint_paths,
    load_checkpoint,
    read_sidecar,
    save_checkpoint,
)
from edgeopt.models.factory import create_model, describe_models, list_models
from edgeopt.models.summary import count_parameters, model_summary
from edgeopt.models.trust import allow_model_code, trusted_model_code
from edgeopt.models.weights import load_weights_

__all__ = [
    "MODELS",
    "allow_model_code",
    "checkpoint_paths",
    "count_parameters",
    "create_model",
    "describe_models",
    "list_models",
    "load_checkpoint",
    "load_weights_",
    "model_summary",
    "read_sidecar",
    "save_checkpoint",
    "trusted_model_code",
]
