"""Shared fixtures: genuine-format upstream checkpoints, converted models, structures.

Everything expensive (checkpoints, conversions, upstream predictions) is built
once per session and reused; JAX compiles per padded shape, and the tests
share a few shapes.
"""

from __future__ import annotations

import os
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
_PROFILE = dict(deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
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


@pytest.fixture(scope="session")
def structures() -> dict[str, Atoms]:
    out = special_structures()
    for k, atoms in enumerate(mptrj_frames(52)):
        out[f"mptrj_{k:02d}_{atoms.get_chemical_formula()}"] = atoms
    return out


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Upstream-saved checkpoints (1M and 5M configs) with seeded random weights."""
    testing = _upstream_testing()
    root = tmp_path_factory.mktemp("checkpoints")
    return {name: testing.genuine_checkpoint(root / f"random-{name}.pth", name)
            for name in ("1M", "5M")}


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
def small_model(tmp_path_factory):
    """A small upstream-format model with seeded random weights (2 blocks, 16 units,
    max_l = max_n = 2), for tests of the MD and relaxation machinery, not numbers."""
    testing = _upstream_testing()
    path = testing.genuine_checkpoint(tmp_path_factory.mktemp("small") / "small.pth", "small")
    import jmattersim

    return jmattersim.load_model(path)


def _upstream_testing():
    """:mod:`jmattersim.testing`, skipping the test where torch or upstream is missing."""
    pytest.importorskip("torch")
    pytest.importorskip("mattersim")
    import jmattersim.testing

    return jmattersim.testing
