"""Physical invariances of the core, property-based (hypothesis) on random valid crystals.

Energy is invariant under rigid rotation (forces and stress rotate with it),
translation, permutation of atoms, wrapping positions into the cell and the
choice of cell (an n-fold supercell has n times the energy, an equivalent
reduced cell the same); forces sum to zero; stress is symmetric.

The model is the converted 1M checkpoint with seeded random weights and random
per-element scale and shift (energies of several eV per atom, forces of order
eV/Å), run in float64 so that the tolerances can be tight: every quantity is a
sum of at most ~10^4 terms of order 10, so float64 rounding is ~1e-14 relative
(the worst seen over the ci profile: 4e-14, logged at the end of the module);
the tolerance, 1e-11 relative to max(1, |value|) (eV, eV/Å, GPa), leaves a margin
of ~300 and still catches any real error (a float32 step, a missed image, a
wrong sign or unit: all >= 1e-7 relative). Every structure goes through one compiled
function (:func:`jmattersim.evaluate` with a fixed padded capacity).

Profiles: "ci" (100 examples per test, the default) and "long" (2000), chosen by
``JMATTERSIM_HYPOTHESIS=long`` (or by ``--hypothesis-profile=long`` where the
profiles are registered in conftest.py)::

    JMATTERSIM_HYPOTHESIS=long python -m pytest -q tests/test_invariances.py
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import make_supercell
from ase.units import GPa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

import jmattersim
from jmattersim import evaluate
from jmattersim._src.capacity import Capacity
from jmattersim._src.checks import InvalidStructureError, check_atoms

PROFILES = {
    "ci": dict(
        max_examples=100,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    ),
    "long": dict(
        max_examples=2000,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    ),
}
for _name, _kwargs in PROFILES.items():
    try:
        settings.get_profile(_name)  # conftest may have registered it already
    except InvalidArgument:
        settings.register_profile(_name, **_kwargs)


def _profile() -> settings:
    """The env var's profile; else one loaded with --hypothesis-profile; else "ci"."""
    name = os.environ.get("JMATTERSIM_HYPOTHESIS")
    if not name:
        current = settings.get_current_profile_name()
        name = current if current in PROFILES else "ci"
    return settings.get_profile(name)


PROFILE = _profile()

# One padded shape for every batch (one compile): structures of at most 8 atoms at
# 18-30 Å^3 per atom (a typical solid's density; ~30 bonds and ~150 triplets per
# atom); a batch that does not fit is split into calls of the same shape.
LADDER = (Capacity(nodes=16, edges=768, triplets=4096, graphs=4),)
RTOL = 1e-11  # relative to max(1, |quantity|): see the module docstring


class Quiet:
    """The model, with a short repr for hypothesis's reports."""

    def __init__(self, model):
        self.model = model

    def __repr__(self) -> str:
        return "converted 1M model"


WORST: dict[str, float] = {}  # largest relative error seen per quantity, for the log


@pytest.fixture(scope="module")
def model(model64, request):  # the shared float64 model, with a short repr for hypothesis
    yield Quiet(model64)
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None and WORST:
        worst = ", ".join(f"{k} {v:.1e}" for k, v in sorted(WORST.items()))
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\ninvariances, worst |diff| / max(1, |value|): {worst}")


def run(model, structures: list[Atoms]):
    """Energies (eV), forces (eV/Å), stresses (GPa) in float64, one compiled function;
    checks on each result that the forces sum to zero and the stress is symmetric."""
    with jax.enable_x64(True):
        results = evaluate(model.model, structures, ladder=LADDER, dtype=jnp.float64)
    for res in results:
        check_result(res)
    return results


def check_result(res) -> None:
    """Forces sum to zero; stress is symmetric."""
    scale = max(1.0, float(np.abs(res.forces).max()))
    net = float(np.abs(res.forces.sum(axis=0)).max())
    WORST["net force"] = max(WORST.get("net force", 0.0), net / scale)
    assert net <= RTOL * scale * len(res.forces), f"forces sum to {net:.3g}, not zero"
    close(res.stress_gpa, res.stress_gpa.T, "stress symmetric")


def close(a, b, what: str) -> None:
    a, b = np.asarray(a, float), np.asarray(b, float)
    scale = max(1.0, float(np.abs(b).max()))
    err = float(np.abs(a - b).max())
    WORST[what] = max(WORST.get(what, 0.0), err / scale)
    assert err <= RTOL * scale, f"{what}: max |diff| {err:.3g} (scale {scale:.3g})"


@st.composite
def crystals(draw, max_atoms: int = 4) -> Atoms:
    """A random periodic crystal: 1..max_atoms atoms of any element, a random
    triclinic cell of 18-30 Å^3 per atom, no two atoms closer than 0.9 Å."""
    n = draw(st.integers(1, max_atoms))
    numbers = draw(st.lists(st.integers(1, 94), min_size=n, max_size=n))
    volume = n * draw(st.floats(18.0, 30.0))
    unit = st.floats(-0.25, 0.25, allow_nan=False)
    shape = np.eye(3) + np.array(draw(st.lists(unit, min_size=9, max_size=9))).reshape(3, 3)
    cell = shape * (volume / abs(np.linalg.det(shape))) ** (1 / 3)
    frac = np.array(
        draw(st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=3 * n, max_size=3 * n))
    ).reshape(n, 3)
    atoms = Atoms(numbers=numbers, scaled_positions=frac, cell=cell, pbc=True)
    assume(valid(atoms, min_distance=0.9))
    return atoms


def valid(atoms: Atoms, min_distance: float = 0.5) -> bool:
    try:
        check_atoms(atoms, jmattersim.M3GNetConfig(), min_distance=min_distance)
    except InvalidStructureError:
        return False
    return True


def unimodular(draw) -> np.ndarray:
    """A random integer matrix of determinant +-1 (a product of shears and a flip)."""
    m = np.eye(3, dtype=int)
    for _ in range(draw(st.integers(1, 3))):
        i, j = draw(st.permutations(range(3)))[:2]
        shear = np.eye(3, dtype=int)
        shear[i, j] = draw(st.sampled_from([-1, 1]))
        m = shear @ m
    if draw(st.booleans()):
        m = m[[1, 0, 2]]  # det -1: a left-handed cell
    return m


def rotation(draw) -> np.ndarray:
    """A uniformly random proper rotation (from a normalised quaternion)."""
    q = np.array(draw(st.lists(st.floats(-1.0, 1.0), min_size=4, max_size=4)))
    assume(np.linalg.norm(q) > 0.1)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


@PROFILE
@given(atoms=crystals(), data=st.data())
def test_rotation(model, atoms, data):
    r = rotation(data.draw)
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell.array @ r.T, scale_atoms=False)
    rotated.positions = atoms.positions @ r.T
    ref, rot = run(model, [atoms, rotated])
    close(rot.energy, ref.energy, "energy")
    close(rot.forces, ref.forces @ r.T, "forces rotate")
    close(rot.stress_gpa, r @ ref.stress_gpa @ r.T, "stress rotates")


@PROFILE
@given(atoms=crystals(), shift=st.lists(st.floats(-50.0, 50.0), min_size=3, max_size=3))
def test_translation(model, atoms, shift):
    moved = atoms.copy()
    moved.positions += np.array(shift)
    ref, out = run(model, [atoms, moved])
    close(out.energy, ref.energy, "energy")
    close(out.forces, ref.forces, "forces")
    close(out.stress_gpa, ref.stress_gpa, "stress")


@PROFILE
@given(atoms=crystals(max_atoms=6), data=st.data())
def test_permutation(model, atoms, data):
    order = np.array(data.draw(st.permutations(range(len(atoms)))))
    ref, out = run(model, [atoms, atoms[order]])
    close(out.energy, ref.energy, "energy")
    close(out.forces, ref.forces[order], "forces permute")
    close(out.stress_gpa, ref.stress_gpa, "stress")


@PROFILE
@given(atoms=crystals(), data=st.data())
def test_wrapping_into_the_cell(model, atoms, data):
    offsets = np.array(
        data.draw(st.lists(st.integers(-3, 3), min_size=3 * len(atoms), max_size=3 * len(atoms)))
    ).reshape(-1, 3)
    unwrapped = atoms.copy()
    unwrapped.positions += offsets @ atoms.cell.array
    wrapped = unwrapped.copy()
    wrapped.wrap()
    ref, out, back = run(model, [atoms, unwrapped, wrapped])
    for res, what in ((out, "unwrapped"), (back, "wrapped")):
        close(res.energy, ref.energy, f"{what} energy")
        close(res.forces, ref.forces, f"{what} forces")
        close(res.stress_gpa, ref.stress_gpa, f"{what} stress")


@PROFILE
@given(atoms=crystals(max_atoms=4), data=st.data())
def test_supercell_has_n_times_the_energy(model, atoms, data):
    """Diagonal or skewed n-fold supercells (n = 2), the same stress, forces tiled."""
    n = 2
    axis = data.draw(st.integers(0, 2))
    diag = np.eye(3, dtype=int)
    diag[axis, axis] = n
    p = unimodular(data.draw) @ diag if data.draw(st.booleans()) else diag
    big = make_supercell(atoms, p, order="atom-major")
    assert len(big) == n * len(atoms)
    ref, out = run(model, [atoms, big])
    close(out.energy, n * ref.energy, "energy of the supercell")
    close(out.forces, np.repeat(ref.forces, n, axis=0), "forces of the supercell")
    close(out.stress_gpa, ref.stress_gpa, "stress of the supercell")


@PROFILE
@given(atoms=crystals(), data=st.data())
def test_equivalent_cells_give_the_same_result(model, atoms, data):
    """The same crystal in a skewed (possibly left-handed) cell, and that cell
    Niggli-reduced: same energy, forces and stress."""
    skewed = atoms.copy()
    skewed.set_cell(unimodular(data.draw) @ atoms.cell.array, scale_atoms=False)
    assume(valid(skewed))
    niggli, op = skewed.cell.niggli_reduce()  # ASE's Niggli cell is rotated to a standard
    reduced = skewed.copy()  # orientation: keep ours, op.T @ cell
    reduced.set_cell(op.T @ skewed.cell.array, scale_atoms=False)
    np.testing.assert_allclose(reduced.cell.cellpar(), niggli.cellpar(), atol=1e-8)
    reduced.wrap()
    ref, out, red = run(model, [atoms, skewed, reduced])
    for res, what in ((out, "skewed"), (red, "reduced")):
        close(res.energy, ref.energy, f"{what} energy")
        close(res.forces, ref.forces, f"{what} forces")
        close(res.stress_gpa, ref.stress_gpa, f"{what} stress")


def test_energies_are_not_trivial(model):
    """The invariances above are not vacuous: this model's energies, forces and
    stresses are large and depend on the structure (and the checks in :func:`run`
    catch a net force or an asymmetric stress)."""
    from ase.build import bulk

    a = bulk("Cu", "fcc", 3.6)
    b = a * (2, 1, 1)
    b.positions[0] += [0.1, 0.05, 0.0]
    b.set_cell(b.cell.array * 1.02, scale_atoms=True)
    ra, rb = run(model, [a, b])
    assert abs(ra.energy) > 1.0
    assert abs(rb.energy / 2 - ra.energy) > 1e-3
    assert np.abs(rb.forces).max() > 1e-2
    assert np.abs(rb.stress_gpa - np.diag(np.diag(rb.stress_gpa))).max() > 1e-3
    seen = dict(WORST)  # the broken results below must not count in the log
    net_force = rb._replace(forces=rb.forces + [1e-6, 0.0, 0.0])
    with pytest.raises(AssertionError, match="not zero"):
        check_result(net_force)
    skew = np.triu(np.full((3, 3), 1e-6), 1)
    asymmetric = rb._replace(stress=rb.stress + skew * GPa)  # skew GPa
    with pytest.raises(AssertionError, match="stress symmetric"):
        check_result(asymmetric)
    WORST.clear()
    WORST.update(seen)
