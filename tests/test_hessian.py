"""The exact Hessian against central finite differences of our own forces (float64).

Four structures the issue names: diamond Si, a triclinic cell shorter than the
cutoff, an MPtrj frame of three or more elements, and a slab periodic in two
directions. The model is the stored small genuine-format model (no torch): the
check is of the derivatives, whatever the weights.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from ase.build import bulk

import jmattersim

from conftest import mptrj_frames, special_structures, triclinic

H = 1e-4  # Å


def three_element_frame():
    return next(a for a in mptrj_frames(60) if len(set(a.numbers)) >= 3 and len(a) <= 12)


def cases():
    si = bulk("Si", "diamond", 5.43)
    si.rattle(0.03, seed=5)
    slab = special_structures()["al_slab_pbc_TTF"]
    slab.rattle(0.03, seed=6)
    return {
        "si_diamond": si,
        "triclinic_short": triclinic(),
        "mptrj_3_elements": three_element_frame(),
        "slab_TTF": slab,
    }


CASES = cases()


def finite_difference_hessian(model, atoms) -> np.ndarray:
    """-(F(r + h e) - F(r - h e)) / 2h for every atom and direction, (N, 3, N, 3);
    all displaced structures evaluated in one engine call."""
    n = len(atoms)
    displaced = []
    for i in range(n):
        for a in range(3):
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[i, a] += sign * H
                displaced.append(moved)
    forces = np.array([r.forces for r in jmattersim.evaluate(model, displaced)])
    forces = forces.reshape(n, 3, 2, n, 3)
    return -(forces[:, :, 0] - forces[:, :, 1]) / (2 * H)


@pytest.mark.parametrize("key", sorted(CASES))
def test_hessian_equals_finite_differences_of_forces(small_model, key):
    atoms = CASES[key]
    with jax.enable_x64(True):
        exact = jmattersim.hessian(small_model, atoms)
        fd = finite_difference_hessian(small_model, atoms)
    n = len(atoms)
    assert exact.shape == (n, 3, n, 3) and exact.dtype == np.float64
    scale = np.abs(exact).max()
    assert scale > 1e-3, f"{key}: a flat landscape tests nothing ({scale:.2e} eV/Å²)"
    rel = np.abs(exact - fd).max() / scale
    assert rel <= 1e-6, f"{key}: max |H - H_fd| / max |H| = {rel:.1e}"
    flat = exact.reshape(3 * n, 3 * n)
    assert np.abs(flat - flat.T).max() / scale <= 1e-10, key
    assert np.abs(exact.sum(axis=2)).max() <= 1e-8, f"{key}: acoustic sum rule"


def test_columns_and_chunks_give_the_same_rows(small_model):
    atoms = CASES["mptrj_3_elements"]
    with jax.enable_x64(True):
        full = jmattersim.hessian(small_model, atoms)
        rows = jmattersim.hessian_columns(small_model, atoms, [2, 0], atoms_chunk=1)
    np.testing.assert_array_equal(rows, full[[2, 0]])


def test_float32_by_default(small_model):
    assert jmattersim.hessian(small_model, CASES["si_diamond"]).dtype == np.float32


def test_a_chunk_that_does_not_fit_says_which_would(small_model, monkeypatch):
    from jmattersim._src import hessian as module

    monkeypatch.setattr(module, "_available_memory", lambda: 1 << 20)  # 1 MiB
    with pytest.raises(MemoryError, match=r"structure \(Si2\).*pass atoms_chunk=1 or smaller"):
        jmattersim.hessian(small_model, CASES["si_diamond"], atoms_chunk=2)


def test_bad_input_is_named(small_model):
    close = CASES["si_diamond"].copy()
    close.positions[1] = close.positions[0] + 0.1
    with pytest.raises(jmattersim.InvalidStructureError, match=r"structure \(Si2\)"):
        jmattersim.hessian(small_model, close)
