"""jmattersim: MatterSim's M3GNet in JAX.

Load a converted model, then use the ASE calculator, the seed's batch API, or
the pure, differentiable energy functions underneath them.
"""

from . import batch, jax_md, neighbors, sharding, validate
from .batch import batch_index_to_sizes, forward_batch, sizes_to_batch_index
from .calculator import MatterSimCalculator
from .config import M3GNetConfig
from .energy import batch_energy_fn, batch_properties_fn, energy_fn
from .evaluate import evaluate
from .io import Model, init_model, load_model, save_model
from .md import md
from .neighbors import Capacity, capacity_for
from .relax import relax
from .validate import (
    CapacityOverflowError,
    InvalidStructureError,
    check_arrays,
    check_atoms,
    checked,
    checked_energy_fn,
)

__all__ = [
    "Capacity",
    "CapacityOverflowError",
    "InvalidStructureError",
    "check_arrays",
    "check_atoms",
    "checked",
    "checked_energy_fn",
    "sharding",
    "validate",
    "M3GNetConfig",
    "MatterSimCalculator",
    "Model",
    "batch",
    "batch_energy_fn",
    "batch_index_to_sizes",
    "batch_properties_fn",
    "capacity_for",
    "energy_fn",
    "evaluate",
    "forward_batch",
    "init_model",
    "jax_md",
    "load_model",
    "md",
    "neighbors",
    "relax",
    "save_model",
    "sizes_to_batch_index",
]
