"""jmattersim: MatterSim's M3GNet in JAX.

Load a converted model, then use the ASE calculator, the batch API, or the pure,
differentiable energy functions underneath them.
"""

from . import runtime

runtime.configure()  # a caching allocator and the persistent compile cache, before JAX runs

from . import batch, engine, neighbors, sharding, validate  # noqa: E402
from .batch import (  # noqa: E402
    NeighborList,
    batch_index_to_sizes,
    forward_batch,
    neighbor_list,
    sizes_to_batch_index,
)
from .calculator import MatterSimCalculator  # noqa: E402
from .checkpoint import Model, init_model, save_model  # noqa: E402
from .config import M3GNetConfig  # noqa: E402
from .energy import batch_energy_fn, batch_properties_fn, energy_fn  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .io import load_model  # noqa: E402
from .neighbors import TopologyCapacity, capacity_for  # noqa: E402
from .padding import BatchBudget  # noqa: E402
from .relax import relax  # noqa: E402
from .validate import (  # noqa: E402
    CapacityOverflowError,
    InvalidStructureError,
    check_arrays,
    check_atoms,
    checked,
    checked_energy_fn,
)

_LAZY = {"jax_md": "module", "md": "function"}  # jax-md takes seconds to import


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{name}", __name__)
        value = module if _LAZY[name] == "module" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jmattersim' has no attribute '{name}'")


__all__ = [
    "BatchBudget",
    "CapacityOverflowError",
    "InvalidStructureError",
    "M3GNetConfig",
    "MatterSimCalculator",
    "Model",
    "NeighborList",
    "TopologyCapacity",
    "batch",
    "batch_energy_fn",
    "batch_index_to_sizes",
    "batch_properties_fn",
    "capacity_for",
    "check_arrays",
    "check_atoms",
    "checked",
    "checked_energy_fn",
    "energy_fn",
    "engine",
    "evaluate",
    "forward_batch",
    "init_model",
    "jax_md",
    "load_model",
    "md",
    "neighbor_list",
    "neighbors",
    "relax",
    "save_model",
    "sharding",
    "sizes_to_batch_index",
    "validate",
]
