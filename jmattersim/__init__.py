"""jmattersim: MatterSim's M3GNet in JAX.

Load a converted model, then use the ASE calculator, ``evaluate``, ``relax``, ``md``,
or the pure, differentiable ``energy_fn`` and ``forward_batch`` underneath them.
Units: eV, Å, eV/Å; stress in eV/Å³ where a field is called ``stress`` (ASE's unit),
in GPa where it says so (``stress_gpa``) and in ``forward_batch``'s ``stresses``
(upstream's batch unit).

The names below are the everyday API. The rest lives in public sub-modules named for
what they hold, loaded on first use:

- :mod:`jmattersim.batch`: jraph batches, their energy functions, neighbour lists,
  the engine's ladder of budgets, the device mesh;
- :mod:`jmattersim.checks`: input checks and ``checkify`` energies;
- :mod:`jmattersim.derivatives`: Hessians, phonons, elastic constants, fc3, κ;
- :mod:`jmattersim.train`: fine-tuning, committees, metrics;
- :mod:`jmattersim.jax_md`: neighbour lists and energies in jax-md's conventions;
- :mod:`jmattersim.testing`: random-weight models in MatterSim's format.

The implementation lives in private modules (``jmattersim._src``).
"""

from typing import TYPE_CHECKING

from ._src import runtime as _runtime

_runtime.configure()  # a caching allocator and the persistent compile cache, before JAX runs

from ._src.batch import forward_batch  # noqa: E402
from ._src.calculator import MatterSimCalculator  # noqa: E402
from ._src.capacity import Capacity  # noqa: E402
from ._src.checkpoint import Model, save_model  # noqa: E402
from ._src.checks import CapacityOverflowError, InvalidStructureError  # noqa: E402
from ._src.config import M3GNetConfig  # noqa: E402
from ._src.energy import energy_fn  # noqa: E402
from ._src.evaluate import evaluate  # noqa: E402
from ._src.io import load_model  # noqa: E402
from ._src.neighbors import capacity_for  # noqa: E402
from ._src.predictions import Predictions  # noqa: E402
from ._src.published import PUBLISHED  # noqa: E402
from ._src.relax import relax  # noqa: E402
from ._src.relaxed import Relaxed, relax_fn  # noqa: E402
from ._src.stream import predict_file  # noqa: E402

if TYPE_CHECKING:  # loaded on first use by __getattr__: it imports jax-md
    from ._src.md import md

SUBMODULES = ("batch", "checks", "derivatives", "jax_md", "lammps", "testing", "train")
"""The public sub-modules (imported on first use: jax-md takes seconds, torch more)."""


def __getattr__(name: str):
    import importlib

    if name in SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    elif name == "md":  # imports jax-md
        value = importlib.import_module("._src.md", __name__).md
    else:
        raise AttributeError(f"module 'jmattersim' has no attribute '{name}'")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, *SUBMODULES])


__all__ = [
    "PUBLISHED",
    "Capacity",
    "CapacityOverflowError",
    "InvalidStructureError",
    "M3GNetConfig",
    "MatterSimCalculator",
    "Model",
    "Predictions",
    "capacity_for",
    "energy_fn",
    "evaluate",
    "forward_batch",
    "load_model",
    "md",
    "predict_file",
    "relax",
    "relax_fn",
    "Relaxed",
    "save_model",
]
