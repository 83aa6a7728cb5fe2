"""The real mattersim-v1.0.0-1M checkpoint against numbers upstream computed with it.

Runs only where the checkpoint is present: set JMATTERSIM_MATTERSIM_1M to the
.pth file (or to a directory converted from it), or have it in upstream's cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

import jmattersim
from jmattersim._src.published import UPSTREAM_CACHE

from conftest import SHARED

BASELINE = SHARED / "reference" / "mattersim-v1.0.0-1M-baseline.json"


def checkpoint() -> Path | None:
    env = os.environ.get("JMATTERSIM_MATTERSIM_1M")
    if env:
        return Path(env)
    cached = UPSTREAM_CACHE / "mattersim-v1.0.0-1M.pth"
    return cached if cached.is_file() else None


@pytest.mark.skipif(
    checkpoint() is None,
    reason="real mattersim-v1.0.0-1M checkpoint absent (set JMATTERSIM_MATTERSIM_1M)",
)
def test_real_1m_checkpoint_matches_upstream_baseline():
    calc = jmattersim.MatterSimCalculator(jmattersim.load_model(checkpoint()))
    for name, case in json.loads(BASELINE.read_text()).items():
        s = case["structure"]
        atoms = Atoms(s["symbols"], positions=s["positions"], cell=s["cell"], pbc=s["pbc"])
        atoms.calc = calc
        want = case["outputs"]
        assert abs(atoms.get_potential_energy() - want["energy"]) / len(atoms) <= 1e-5, name
        np.testing.assert_allclose(atoms.get_forces(), want["forces"], atol=1e-4, err_msg=name)
        np.testing.assert_allclose(
            atoms.get_stress(voigt=False), want["stress"], atol=1e-3 * 6.2415e-3, err_msg=name
        )
