"""jmattersim: MatterSim's M3GNet in JAX.

Load a converted model, then use the ASE calculator, or the batched and pure
functions underneath it.
"""

from .calculator import MatterSimCalculator
from .config import M3GNetConfig
from .evaluate import evaluate
from .io import Model, init_model, load_model, save_model

__all__ = [
    "M3GNetConfig",
    "MatterSimCalculator",
    "Model",
    "evaluate",
    "init_model",
    "load_model",
    "save_model",
]
