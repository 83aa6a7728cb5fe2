"""Shared fixtures: genuine-format upstream checkpoints, converted models, structures.

Everything expensive (checkpoints, conversions, upstream predictions) is built
once per session and reused; JAX compiles per padded shape, and the tests
share a few shapes.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from hypothesis import HealthCheck, settings

# Property-test profiles: "ci" (default) and "long", chosen with
# --hypothesis-profile=long or JMATTERSIM_HYPOTHESIS=long (registered here, before
# the hypothesis plugin reads the option).
_PROFILE = dict(
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.register_profile("ci", max_examples=100, **_PROFILE)
settings.register_profile("long", max_examples=2000, **_PROFILE)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("JMATTERSIM_SHARED", REPO.parent / "shared"))
MPTRJ = SHARED / "data" / "mptrj-random-1k.xyz"


def special_structures() -> dict[str, Atoms]:
    """Hand-made structures covering the cases the issue names."""
    rng = np.random.default_rng(7)
    oxide = Atoms(  # triclinic, three elements
        "Ti2Ba2O6",
        scaled_positions=rng.random((10, 3)),
        cell=[[5.1, 0.0, 0.0], [1.3, 5.6, 0.0], [0.9, -1.1, 6.3]],
        pbc=True,
    )
    quaternary = bulk("NaCl", "rocksalt", 5.64, cubic=True)
    quaternary.symbols[[1, 2]] = ["K", "Br"]
    quaternary.rattle(0.05, seed=3)
    water = molecule("H2O")
    water.pbc = False
    methane = molecule("CH4")
    methane.positions += [-3.0, 2.0, -1.0]  # negative coordinates: upstream wraps them
    slab = bulk("Al", "fcc", 4.05, cubic=True).repeat((1, 1, 2))
    slab.center(vacuum=4.0, axis=2)
    slab.pbc = (True, True, False)
    fe_bcc = bulk("Fe", "bcc", 2.87)
    fe_bcc.rattle(0.02, seed=1)
    return {
        "si_diamond": bulk("Si", "diamond", 5.43),
        "fe_bcc": fe_bcc,
        "fe_fcc": bulk("Fe", "fcc", 3.6),
        "triclinic_oxide": oxide,
        "NaKClBr": quaternary,
        "h2o_molecule": water,
        "ch4_molecule": methane,
        "al_slab_pbc_TTF": slab,
    }


def mptrj_frames(count: int) -> list[Atoms]:
    """``count`` frames spread evenly over the size range, smallest to largest."""
    frames = sorted(ase.io.read(MPTRJ, index=":"), key=len)
    picks = np.unique(np.linspace(0, len(frames) - 1, count).round().astype(int))
    return [frames[i] for i in picks]


def element_cover_frames() -> list[Atoms]:
    """Few small MPtrj frames holding every element of the file: greedily the frame
    with the most new elements per atom (ties: the file's order), then the smallest
    frame of at least 100 atoms (the size range: large edge and triplet counts)."""
    frames = ase.io.read(MPTRJ, index=":")
    missing = set(np.concatenate([a.numbers for a in frames]).tolist())
    picks = []
    while missing:
        best = max(frames, key=lambda a: len(missing & set(a.numbers.tolist())) / len(a))
        picks.append(best)
        missing -= set(best.numbers.tolist())
    large = min((a for a in frames if len(a) >= 100), key=len)
    return sorted(picks, key=len) + [large]


def small_cell() -> Atoms:
    """Primitive diamond Si: lattice vectors of 3.84 Å, shorter than the cutoff."""
    si = bulk("Si", "diamond", 5.43)
    si.rattle(0.05, seed=11)
    return si


def triclinic() -> Atoms:
    return Atoms(
        "MgSiO",
        scaled_positions=[[0, 0, 0], [0.5, 0.4, 0.3], [0.2, 0.7, 0.6]],
        cell=[[4.2, 0.0, 0.0], [1.1, 4.6, 0.0], [0.7, -0.9, 5.1]],
        pbc=True,
    )


def arrays(atoms: Atoms, config, dtype=None):
    """(one-hot atom types, positions, lattice) of ``atoms`` as JAX arrays."""
    import jax
    import jax.numpy as jnp

    dtype = dtype or jnp.float32
    return (
        jax.nn.one_hot(atoms.numbers, config.num_species, dtype=dtype),
        jnp.asarray(atoms.positions, dtype),
        jnp.asarray(atoms.cell.array, dtype),
    )


def many_small_structures(count: int) -> list:
    """``count`` periodic structures of 2-16 atoms (Si, Cu, NaCl, Ar; 1,940 atoms for
    256), each rattled by 0.02 Å with its own random seed."""
    from ase.build import bulk

    kinds = [
        bulk("Si", "diamond", 5.5),
        bulk("Si", "diamond", 5.5, cubic=True),
        bulk("Cu", "fcc", 3.6, cubic=True),
        bulk("NaCl", "rocksalt", 5.6, cubic=True),
        bulk("Ar", "fcc", 4.47, cubic=True).repeat((2, 2, 1)),
    ]
    structures = []
    for i in range(count):
        atoms = kinds[i % len(kinds)].copy()
        atoms.rattle(0.02, seed=i)
        structures.append(atoms)
    return structures


@contextlib.contextmanager
def traces() -> Iterator[collections.Counter]:
    """Counts the top-level traces of jitted functions inside the block, by function
    name (each is a compilation or a read of the persistent compile cache), and the
    programs read from jmattersim's store instead of traced, from the monitoring
    events JAX and the store report: no counter lives in the package."""
    import jax.monitoring

    from jmattersim._src.programs import LOADED

    counts: collections.Counter = collections.Counter()

    def listen(event: str, duration: float, **kwargs) -> None:
        if event in ("/jax/core/compile/jaxpr_trace_duration", LOADED):
            counts[kwargs.get("fun_name")] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def padded(structures: list[Atoms], config, dtype, n_node: int, n_graph: int):
    """``structures`` as one jraph graph padded to ``n_node`` nodes, ``n_graph`` graphs."""
    import jax.numpy as jnp

    from jmattersim._src.tensors import graphs_tuple, pad_graph

    at = jnp.concatenate([arrays(a, config, dtype)[0] for a in structures])
    pos = jnp.asarray(np.concatenate([a.positions for a in structures]), dtype)
    lat = jnp.asarray(np.stack([a.cell.array for a in structures]), dtype)
    g = graphs_tuple(at, pos, lat, [len(a) for a in structures])
    return pad_graph(g, n_node, n_graph)


@pytest.fixture(scope="session")
def structures() -> dict[str, Atoms]:
    """The hand-made cases and 46 MPtrj frames holding every element of the file
    (all 85, in 325 atoms, the largest of 100)."""
    out = special_structures()
    for k, atoms in enumerate(element_cover_frames()):
        out[f"mptrj_{k:02d}_{atoms.get_chemical_formula()}"] = atoms
    return out


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Upstream-saved checkpoints (1M and 5M configs) with seeded random weights."""
    testing = _upstream_testing()
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        name: testing.genuine_checkpoint(root / f"random-{name}.pth", name) for name in ("1M", "5M")
    }


@pytest.fixture(scope="session")
def converted(checkpoints, tmp_path_factory) -> dict[str, Path]:
    """The checkpoints converted with our CLI."""
    from convert_weights.cli import main

    root = tmp_path_factory.mktemp("converted")
    out = {}
    for name, path in checkpoints.items():
        assert main([str(path), str(root / name)]) == 0
        out[name] = root / name
    return out


@pytest.fixture(scope="session")
def model(converted):
    """The 1M architecture (converted genuine-format random weights), float32."""
    import jmattersim

    return jmattersim.load_model(converted["1M"])


@pytest.fixture(scope="session")
def model64(converted):
    """The same model in float64 (cast once; use it under ``jax.enable_x64``)."""
    import jax
    import jax.numpy as jnp

    import jmattersim

    with jax.enable_x64(True):
        return jmattersim.load_model(converted["1M"]).astype(jnp.float64)


@pytest.fixture(scope="session")
def small_model():
    """The stored small genuine-format model (tests/small_reference.py: 2 blocks, 16
    units, max_l = max_n = 2; upstream's weights with seeded random values), for tests
    of machinery rather than numbers. Needs no torch."""
    from small_reference import MODEL

    import jmattersim

    return jmattersim.load_model(MODEL)


@pytest.fixture(scope="session")
def small_model64(small_model):
    """The small model in float64 (use it under ``jax.enable_x64``)."""
    import jax
    import jax.numpy as jnp

    with jax.enable_x64(True):
        return small_model.astype(jnp.float64)


def _upstream_testing():
    """:mod:`jmattersim.testing`, skipping the test where torch or upstream is missing."""
    pytest.importorskip("torch")
    pytest.importorskip("mattersim")
    import jmattersim.testing

    return jmattersim.testing
