"""jmattersim: MatterSim's M3GNet in JAX.

Load a converted model, then use the ASE calculator, the batch API, or the pure,
differentiable energy functions underneath them. Units: eV, Å, eV/Å; stress in
eV/Å³ where a field is called ``stress`` (ASE's unit), in GPa where it says so
(``stress_gpa``) and in ``forward_batch``'s ``stresses`` (upstream's batch unit).

The implementation lives in private modules (``jmattersim._src``); the names below,
:mod:`jmattersim.jax_md` and :mod:`jmattersim.testing` are the public API.
"""

from ._src import runtime as _runtime

_runtime.configure()  # a caching allocator and the persistent compile cache, before JAX runs

from ._src.array_checks import check_arrays  # noqa: E402
from ._src.batch import (  # noqa: E402
    NeighborList,
    batch_index_to_sizes,
    forward_batch,
    graphs_tuple,
    neighbor_list,
    neighbors_stale,
    pad_graph,
    sizes_to_batch_index,
)
from ._src.calculator import MatterSimCalculator  # noqa: E402
from ._src.checked import checked, checked_energy_fn  # noqa: E402
from ._src.checkpoint import Model, init_model, save_model  # noqa: E402
from ._src.checks import CapacityOverflowError, InvalidStructureError, check_atoms  # noqa: E402
from ._src.committee import Committee, save_committee, stack_models  # noqa: E402
from ._src.config import M3GNetConfig  # noqa: E402
from ._src.dataset import InvalidLabelError  # noqa: E402
from ._src.derivatives.anharmonic import fc3, thermal_conductivity  # noqa: E402
from ._src.derivatives.elastic import ElasticTensor, elastic_tensor  # noqa: E402
from ._src.derivatives.hessian import hessian, hessian_columns  # noqa: E402
from ._src.derivatives.minimum import NotAtMinimumWarning  # noqa: E402
from ._src.derivatives.phonons import PhononSpectrum, phonon_spectrum, phonons  # noqa: E402
from ._src.energy import (  # noqa: E402
    Predictions,
    batch_energy_fn,
    batch_properties_fn,
    energy_fn,
)
from ._src.engine import LADDER  # noqa: E402
from ._src.evaluate import Result, evaluate  # noqa: E402
from ._src.io import load_committee, load_model  # noqa: E402
from ._src.neighbors import TopologyCapacity, capacity_for  # noqa: E402
from ._src.padding import BatchBudget  # noqa: E402
from ._src.published import PUBLISHED  # noqa: E402
from ._src.relax import relax  # noqa: E402
from ._src.sharding import graph_mesh  # noqa: E402
from ._src.stream import predict_file  # noqa: E402
from ._src.train import train  # noqa: E402
from ._src.train_metrics import plot_metrics, read_metrics  # noqa: E402
from ._src.train_settings import TrainResult, TrainSettings  # noqa: E402

# Loaded on first use: jax-md takes seconds to import, torch more (testing).
_LAZY = {"jax_md": ("jax_md", None), "md": ("jax_md", "md"), "testing": ("testing", None)}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module_name, attribute = _LAZY[name]
        module = importlib.import_module(f".{module_name}", __name__)
        value = module if attribute is None else getattr(module, attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jmattersim' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "BatchBudget",
    "CapacityOverflowError",
    "Committee",
    "ElasticTensor",
    "InvalidLabelError",
    "InvalidStructureError",
    "LADDER",
    "M3GNetConfig",
    "MatterSimCalculator",
    "Model",
    "NeighborList",
    "NotAtMinimumWarning",
    "PUBLISHED",
    "PhononSpectrum",
    "Predictions",
    "Result",
    "TopologyCapacity",
    "TrainResult",
    "TrainSettings",
    "batch_energy_fn",
    "batch_index_to_sizes",
    "batch_properties_fn",
    "capacity_for",
    "check_arrays",
    "check_atoms",
    "checked",
    "checked_energy_fn",
    "elastic_tensor",
    "energy_fn",
    "evaluate",
    "fc3",
    "forward_batch",
    "graph_mesh",
    "graphs_tuple",
    "hessian",
    "hessian_columns",
    "init_model",
    "jax_md",
    "load_committee",
    "load_model",
    "md",
    "neighbor_list",
    "neighbors_stale",
    "pad_graph",
    "phonon_spectrum",
    "phonons",
    "plot_metrics",
    "predict_file",
    "read_metrics",
    "relax",
    "save_committee",
    "save_model",
    "sizes_to_batch_index",
    "stack_models",
    "testing",
    "thermal_conductivity",
    "train",
]
