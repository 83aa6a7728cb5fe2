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


def displaced(atoms) -> list:
    """atoms with one coordinate moved by +H, then -H, for every atom and direction."""
    out = []
    for i in range(len(atoms)):
        for a in range(3):
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[i, a] += sign * H
                out.append(moved)
    return out


def smooth_forces(model, atoms) -> np.ndarray:
    """Forces of the function the Hessian differentiates: the model with the angle
    clamp's derivative the identity (``smooth_angles``); bit-identical to the public
    forces unless a triplet is within 4.5e-4 rad of straight. All rows are asked
    for, as ``hessian`` does: the displaced structures reuse its compiled program."""
    from jmattersim._src.derivatives.hessian import rows_and_forces

    return rows_and_forces(model, atoms, range(len(atoms)))[1]


def central_differences(forces: np.ndarray, n: int) -> np.ndarray:
    forces = forces.reshape(n, 3, 2, n, 3)
    return -(forces[:, :, 0] - forces[:, :, 1]) / (2 * H)


@pytest.mark.parametrize("key", sorted(CASES))
def test_hessian_equals_finite_differences_of_forces(small_model, key):
    """Against central differences (h = 1e-4 Å) of the forces of the function it
    differentiates. Where no triplet is within 4.5e-4 rad of straight, those are
    exactly the public forces (``evaluate``), checked here; the MPtrj frame has one,
    where the public forces keep upstream's clamp of the angle cosine (a plateau
    ~1e-3 Å wide, wider than h) and the Hessian differentiates the smooth function
    the clamp guards (see test_straight_triplets_have_their_bending_curvature)."""
    atoms = CASES[key]
    n = len(atoms)
    with jax.enable_x64(True):
        exact = jmattersim.derivatives.hessian(small_model, atoms)
        moved = displaced(atoms)
        fd = central_differences(np.array([smooth_forces(small_model, m) for m in moved]), n)
        public = central_differences(
            np.array([r.forces for r in jmattersim.evaluate(small_model, moved)]), n
        )
    assert exact.shape == (n, 3, n, 3) and exact.dtype == np.float64
    scale = np.abs(exact).max()
    assert scale > 1e-3, f"{key}: a flat landscape tests nothing ({scale:.2e} eV/Å²)"
    rel = np.abs(exact - fd).max() / scale
    assert rel <= 1e-6, f"{key}: max |H - H_fd| / max |H| = {rel:.1e}"
    public_rel = np.abs(exact - public).max() / scale
    print(f"\n{key}: against the public forces' differences {public_rel:.1e}")
    if key != "mptrj_3_elements":
        assert public_rel <= 1e-6, (
            f"{key}: max |H - H_fd(public forces)| / max |H| = {public_rel:.1e}"
        )
    else:
        assert public_rel > 1e-5, "the frame no longer has a straight triplet: update the docstring"
    flat = exact.reshape(3 * n, 3 * n)
    assert np.abs(flat - flat.T).max() / scale <= 1e-10, key
    assert np.abs(exact.sum(axis=2)).max() <= 1e-8, f"{key}: acoustic sum rule"


def test_columns_and_chunks_give_the_same_rows(small_model):
    atoms = CASES["mptrj_3_elements"]
    with jax.enable_x64(True):
        full = jmattersim.derivatives.hessian(small_model, atoms)
        rows = jmattersim.derivatives.hessian_columns(small_model, atoms, [2, 0], atoms_chunk=1)
    # Two programs (other chunkings): equal to float64 rounding relative to the
    # matrix's scale, not bit for bit (XLA may round differently per program).
    want = full[[2, 0]]
    bound = 8 * np.finfo(np.float64).eps * np.abs(want).max()
    assert np.abs(rows - want).max() <= bound, f"|rows - H| > 8 eps max|H| = {bound:.1e}"
    assert np.abs(want).max() > 1e-3  # rows of a real curvature, not zeros


def test_float32_by_default(small_model):
    assert jmattersim.derivatives.hessian(small_model, CASES["si_diamond"]).dtype == np.float32


def test_a_chunk_that_does_not_fit_says_which_would(small_model, monkeypatch):
    from jmattersim._src.derivatives import chunks as module

    monkeypatch.setattr(module, "_available_memory", lambda: 1 << 20)  # 1 MiB
    with pytest.raises(MemoryError, match=r"structure \(Si2\).*pass atoms_chunk=1 or smaller"):
        jmattersim.derivatives.hessian(small_model, CASES["si_diamond"], atoms_chunk=2)


def test_bad_input_is_named(small_model):
    close = CASES["si_diamond"].copy()
    close.positions[1] = close.positions[0] + 0.1
    with pytest.raises(jmattersim.InvalidStructureError, match=r"structure \(Si2\)"):
        jmattersim.derivatives.hessian(small_model, close)


def test_straight_triplets_have_their_bending_curvature(small_model):
    """Cubic SrTiO3 has straight O-Ti-O triplets, where upstream clamps the angle
    cosine to -1 + 1e-7: a plateau about 1e-3 Å wide in which forces do not feel the
    bending. The exact Hessian is that of the smooth function the clamp guards: it
    equals central differences of our forces taken outside the plateau, converging
    as h² (1e-2 -> 1e-3 Å: 100x), instead of missing the bending curvature."""
    from ase import Atoms

    sto = Atoms(
        "SrTiO3",
        scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
        cell=np.eye(3) * 3.905,
        pbc=True,
    )
    with jax.enable_x64(True):
        exact = jmattersim.derivatives.hessian_columns(small_model, sto, [1])[0]  # Ti: (3, N, 3)
        errors = []
        for h in (1e-2, 1e-3):
            moved = []
            for a in range(3):
                for sign in (1, -1):
                    m = sto.copy()
                    m.positions[1, a] += sign * h
                    moved.append(m)
            forces = np.array([r.forces for r in jmattersim.evaluate(small_model, moved)])
            fd = -(forces[0::2] - forces[1::2]) / (2 * h)
            errors.append(np.abs(fd - exact).max() / np.abs(exact).max())
    assert errors[1] <= 1e-4, errors
    assert errors[1] <= errors[0] / 50, errors
