"""From one checkpoint and a device's constraints to the variant to deploy.

``optimize(checkpoint, OptimizeConfig(constraints=Constraints(...)))`` builds candidates
(fp32 torch eager, fp32 ONNX, int8 ONNX Runtime, int8 torch x86, structured-pruned ONNX
and their int8), screens them cheaply, measures the promising ones fully, and chooses the
one with the highest top-1 that meets every constraint (see docs/optimize.md).
"""

from edgeopt.optimize.config import BASE_CANDIDATES, BUDGETS, OptimizeConfig
from edgeopt.optimize.run import EXIT_NONE_MEETS, OptimizeResult, optimize

__all__ = ["BASE_CANDIDATES", "BUDGETS", "EXIT_NONE_MEETS", "OptimizeConfig", "OptimizeResult", "optimize"]
