"""Phonons and third-order force constants from exact derivatives, against upstream
MatterSim's own workflows (``PhononWorkflow``, ``bte.py``) in the same session.

Magnitudes: the genuine-format random 1M checkpoint has Si force constants of
about 0.2 eV/Å² (a nearly flat landscape, frequencies of a few THz at most).
Its per-element ``scale`` is multiplied by 20 here (energies and all their
derivatives scale with it), which gives force constants up to ~17 eV/Å² and
frequencies up to ~23 THz on relaxed Si: real magnitudes (MatterSim's Si: ~15 THz).
The random landscape is not diamond's: some modes are imaginary, which phonopy
reports as negative frequencies and which are compared like the others.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest
from ase.build import bulk
from ase.io import read

import jmattersim
from jmattersim.testing import upstream_potential

from conftest import SHARED

pytest.importorskip("phonopy")
pytest.importorskip("phono3py")

SCALE = 20.0
MESH = [8, 8, 8]


@pytest.fixture(scope="module")
def scaled(checkpoints, tmp_path_factory):
    """(our model in float64, upstream's ASE calculator) for the 1M checkpoint with
    its per-element scale multiplied by SCALE, saved by upstream, converted by our CLI."""
    torch = pytest.importorskip("torch")
    from mattersim.forcefield.potential import MatterSimCalculator

    from convert_weights.cli import main

    root = tmp_path_factory.mktemp("scaled")
    potential = upstream_potential(checkpoints["1M"])
    with torch.no_grad():
        potential.model.normalizer.scale.mul_(SCALE)
    potential.save(str(root / "scaled.pth"))
    assert main([str(root / "scaled.pth"), str(root / "model")]) == 0
    calc = MatterSimCalculator(upstream_potential(root / "scaled.pth"), device="cpu")
    with jax.enable_x64(True):
        model = jmattersim.load_model(root / "model").astype(np.float64)
    return model, calc


def perovskite():
    """CsRuO3, cubic Pm-3m (an MPtrj frame): a ternary oxide, 3 irreducible atoms."""
    frames = read(SHARED / "data" / "mptrj-random-1k.xyz", ":")
    return next(a for a in frames if a.get_chemical_formula() == "CsO3Ru")


# (structure, relax): Si relaxes its cell too; the random landscape would shrink the
# perovskite's cell into a collapse (force constants of thousands of eV/Å²), so its
# cell stays at the DFT (MPtrj) lattice and only its positions relax.
STRUCTURES = {
    "si_2x2x2": (lambda: bulk("Si", "diamond", 5.43, cubic=True), True),
    "CsRuO3": (perovskite, {"relax_cell": False}),
}


def upstream_frequencies(atoms, calc, amplitude, tmp_path):
    """Upstream's PhononWorkflow (2x2x2, its own displacements and phonopy calls), its
    frequencies (THz) on MESH."""
    from mattersim.applications.phonon import PhononWorkflow

    atoms = atoms.copy()
    atoms.calc = calc
    workflow = PhononWorkflow(
        atoms,
        work_dir=str(tmp_path / f"upstream-{amplitude}"),
        amplitude=amplitude,
        supercell_matrix=np.array([2, 2, 2]),
        calc_spec=False,
    )
    _, phonon = workflow.run()
    phonon.run_mesh(MESH)
    return phonon.mesh.frequencies


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(STRUCTURES))
def test_phonons_match_upstream_phonon_workflow(scaled, key, tmp_path):
    """Relaxed (ours, space group kept; the oxide's cell fixed), then phonons from
    exact force constants against upstream's finite displacements (0.01 Å, its
    default) on the same checkpoint: within 1 % of the largest frequency or upstream's own
    finite-displacement error (0.01 vs 0.005 Å), whichever is larger."""
    from jmattersim._src.derivatives.phonons import ase_atoms

    model, calc = scaled
    with jax.enable_x64(True):
        build, relax = STRUCTURES[key]
        phonon = jmattersim.derivatives.phonons(model, build(), 2, relax=relax, band_path=None)
    relaxed = ase_atoms(phonon.unitcell)
    phonon.run_mesh(MESH)
    ours = phonon.mesh.frequencies
    fc = np.abs(phonon.force_constants).max()
    assert fc >= 3.0, f"{key}: force constants of {fc:.2f} eV/Å² are not real magnitudes"
    theirs = upstream_frequencies(relaxed, calc, 0.01, tmp_path)
    halved = upstream_frequencies(relaxed, calc, 0.005, tmp_path)
    largest = np.abs(ours).max()
    fd_error = np.abs(theirs - halved).max()
    worst = np.abs(ours - theirs).max()
    print(
        f"\n{key}: max |fc| {fc:.2f} eV/Å², frequencies {ours.min():.2f} to {ours.max():.2f} "
        f"THz; max |exact - upstream| {worst:.4f} THz ({100 * worst / largest:.3f} % of the "
        f"largest); upstream's 0.01 vs 0.005 Å difference {fd_error:.4f} THz"
    )
    assert worst <= max(0.01 * largest, fd_error), key


def test_phonopy_force_constants_are_the_exact_hessian(small_model):
    """phonopy, fed the exact linear forces of its displacements, returns the full
    Hessian of the supercell (its symmetrisation changes nothing but round-off), on a
    low-symmetry cell where phonopy needs many displacements."""
    cell = bulk("Si", "diamond", 5.43, cubic=True)
    cell.symbols[[1, 6]] = ["Ge", "C"]
    cell.rattle(0.02, seed=4)
    with jax.enable_x64(True), warnings.catch_warnings():
        warnings.simplefilter("ignore", jmattersim.derivatives.NotAtMinimumWarning)
        phonon = jmattersim.derivatives.phonons(small_model, cell, 1, mesh=False, band_path=None)
        hessian = jmattersim.derivatives.hessian(small_model, cell)
    assert len(phonon.dataset["first_atoms"]) >= 24  # P1: 8 atoms x 3 directions (x2)
    fc = phonon.force_constants  # (N, N, 3, 3)
    exact = hessian.transpose(0, 2, 1, 3)
    assert np.abs(fc - exact).max() <= 1e-9 * np.abs(exact).max()


def test_phonons_warn_away_from_a_minimum(small_model):
    """The small model's landscape is flat: a rattled Si/Ge/C cell has residual forces
    of ~0.04 eV/Å, above the 0.01 eV/Å threshold."""
    rattled = bulk("Si", "diamond", 5.43, cubic=True)
    rattled.symbols[[1, 6]] = ["Ge", "C"]
    rattled.rattle(0.05, seed=2)
    message = r"\(CGeSi6\).*largest residual force is 0.0419 eV/Å on atom 4 \(Si\)"
    with pytest.warns(jmattersim.derivatives.NotAtMinimumWarning, match=message):
        jmattersim.derivatives.phonons(small_model, rattled, 1, mesh=False, band_path=None)


def test_phonon_spectrum_arrays_and_figure(small_model):
    si = bulk("Si", "diamond", 5.43)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jmattersim.derivatives.NotAtMinimumWarning)
        phonon = jmattersim.derivatives.phonons(small_model, si, 2, mesh=[4, 4, 4])
    spectrum = jmattersim.derivatives.phonon_spectrum(phonon)
    assert len(spectrum.distances) == len(spectrum.frequencies) >= 1
    assert all(f.shape[1] == 6 for f in spectrum.frequencies)
    assert spectrum.dos.shape == spectrum.dos_frequencies.shape
    assert spectrum.min_frequency == min(f.min() for f in spectrum.frequencies)
    # acoustic modes at Gamma: three zero frequencies (the sum rule holds)
    gamma = spectrum.frequencies[0][0]
    assert np.sort(np.abs(gamma))[:3].max() < 1e-3
    assert spectrum.figure is not None and "Γ" in [
        t.get_text() for t in spectrum.figure.axes[0].get_xticklabels()
    ]


# ---------------------------------------------------------------- third order


def test_mixed_third_derivatives_equal_finite_differences_of_the_hessian(small_model):
    """Φ3[u1, u2] against central differences of exact Hessian rows along u2
    (float64, h = 1e-4 Å), relative 1e-5."""
    from jmattersim._src.derivatives.anharmonic import mixed_third_derivatives

    cell = bulk("Si", "diamond", 5.43, cubic=True)
    cell.symbols[3] = "Ge"
    cell.rattle(0.03, seed=8)
    rng = np.random.default_rng(0)
    u1 = rng.normal(size=3)
    second = [(0, np.array([0.0, 1.0, 0.0])), (5, rng.normal(size=3))]
    h = 1e-4
    with jax.enable_x64(True):
        exact = mixed_third_derivatives(small_model, cell, (2, u1), second)
        for (atom, u2), phi in zip(second, exact, strict=True):
            plus, minus = cell.copy(), cell.copy()
            plus.positions[atom] += h * u2
            minus.positions[atom] -= h * u2
            rows = [
                jmattersim.derivatives.hessian_columns(small_model, a, [2])[0]
                for a in (plus, minus)
            ]
            fd = np.einsum("a,ajb->jb", u1, (rows[0] - rows[1]) / (2 * h))
            scale = np.abs(fd).max()
            assert scale > 1e-3
            assert np.abs(phi - fd).max() <= 1e-5 * scale, atom


def test_fc3_equals_finite_differences_of_the_hessian(small_model):
    """phono3py's fc3 from the exact pairs equals central differences of our Hessian
    (float64): fc3[p, j, k, a, b, c] = d/dr_jb of H[i_p a, k c]."""
    cell = bulk("Si", "diamond", 5.43)
    with jax.enable_x64(True), warnings.catch_warnings():
        warnings.simplefilter("ignore", jmattersim.derivatives.NotAtMinimumWarning)
        ph3 = jmattersim.derivatives.fc3(small_model, cell, 2)
        from jmattersim._src.derivatives.phonons import ase_atoms

        supercell = ase_atoms(ph3.supercell)
        p2s = ph3.primitive.p2s_map
        fc3 = ph3.fc3
        h = 1e-4
        worst, scale = 0.0, np.abs(fc3).max()
        for j, b in [(1, 0), (5, 2), (11, 1)]:
            plus, minus = supercell.copy(), supercell.copy()
            plus.positions[j, b] += h
            minus.positions[j, b] -= h
            rows = [
                jmattersim.derivatives.hessian_columns(small_model, a, p2s) for a in (plus, minus)
            ]
            fd = (rows[0] - rows[1]) / (2 * h)  # (P, 3, N, 3): [p, a, k, c]
            ours = fc3[:, j, :, :, b, :]  # (P, N, 3, 3): [p, k, a, c]
            worst = max(worst, np.abs(ours - fd.transpose(0, 2, 1, 3)).max())
    assert scale > 1e-2
    assert worst <= 1e-5 * scale, f"max |fc3 - fd| / max |fc3| = {worst / scale:.1e}"


@pytest.mark.long  # minutes: two phono3py runs of upstream; CI checks fc3 against FD
def test_thermal_conductivity_matches_upstream_bte(scaled, tmp_path):
    """κ(300 K) of Si (primitive cell, 2x2x2, RTA, mesh 8x8x8) from exact fc2/fc3
    against upstream's BTEWorkflow (finite pairs at 0.01 Å) on the same checkpoint,
    within its finite-displacement error (0.01 vs 0.005 Å) or 2 %."""
    import os

    from mattersim.applications.bte import BTEWorkflow

    from jmattersim._src.derivatives.phonons import ase_atoms

    model, calc = scaled
    mesh = np.array([8, 8, 8])
    with jax.enable_x64(True):
        phonon = jmattersim.derivatives.phonons(
            model, bulk("Si", "diamond", 5.43), 2, relax=True, mesh=False, band_path=None
        )
        relaxed = ase_atoms(phonon.unitcell)
        _, kappa, _ = jmattersim.derivatives.thermal_conductivity(model, relaxed, 2, mesh=mesh)
    ours = kappa[0, 0]

    def upstream(amplitude):
        atoms = relaxed.copy()
        atoms.calc = calc
        here = os.getcwd()
        try:
            workflow = BTEWorkflow(
                atoms,
                work_dir=str(tmp_path / f"bte-{amplitude}"),
                amplitude=amplitude,
                supercell_matrix=np.array([2, 2, 2]),
                qpoints_mesh=mesh,
                tmin=300,
                tmax=301,
                tstep=50,
                save_fcs=False,
            )
            _, ph3 = workflow.run()
        finally:
            os.chdir(here)
        return float(ph3.thermal_conductivity.kappa[0, 0, 0])

    theirs, halved = upstream(0.01), upstream(0.005)
    fd_error = abs(theirs - halved)
    print(
        f"\nSi kappa(300 K) xx, W/m-K: exact {ours:.3f}, upstream {theirs:.3f} "
        f"(0.005 Å: {halved:.3f})"
    )
    assert ours > 0
    assert abs(ours - theirs) <= max(fd_error, 0.02 * abs(theirs))


# ---------------------------------------------------------------- the CLI


def test_phonons_cli_writes_phonopy_files(small_model, tmp_path, capsys):
    """``jmattersim phonons``: phonopy's files, the plot and a summary in DIR, the
    force constants those of ``jmattersim.derivatives.phonons``; refuses to overwrite, and
    names an unreadable file."""
    from phonopy.file_IO import parse_FORCE_CONSTANTS
    from small_reference import MODEL

    from jmattersim._src.cli import main

    src = tmp_path / "si.extxyz"
    bulk("Si", "diamond", 5.43).write(src)
    out = tmp_path / "si-phonons"
    args = ["phonons", str(src), "--model", str(MODEL), "--supercell", "2", "--out", str(out)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jmattersim.derivatives.NotAtMinimumWarning)
        assert main(args) == 0
        expected = jmattersim.derivatives.phonons(
            small_model, bulk("Si", "diamond", 5.43), 2, mesh=False
        )
    names = {p.name for p in out.iterdir()}
    assert names == {
        "FORCE_CONSTANTS",
        "phonopy_params.yaml",
        "band.yaml",
        "total_dos.dat",
        "phonons.png",
        "structure.extxyz",
        "summary.json",
    }
    fc = parse_FORCE_CONSTANTS(str(out / "FORCE_CONSTANTS"))
    np.testing.assert_allclose(fc, expected.force_constants, atol=1e-6)
    summary = __import__("json").loads((out / "summary.json").read_text())
    assert summary["has_imaginary"] == (summary["min_frequency_thz"] < -0.299)
    assert "imaginary modes" in capsys.readouterr().out
    assert main(args) == 1  # DIR exists
    assert "exists (pass --overwrite)" in capsys.readouterr().err
    assert (
        main(
            [
                "phonons",
                str(tmp_path / "missing.cif"),
                "--model",
                str(MODEL),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 1
    )
    assert "cannot read" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_non_periodic_input_is_refused_naming_it(small_model):
    from ase.build import molecule

    for fn, what in (
        (jmattersim.derivatives.phonons, "phonons"),
        (jmattersim.derivatives.fc3, "fc3"),
    ):
        with pytest.raises(
            ValueError, match=rf"structure \(H2O\): {what} needs? a structure periodic"
        ):
            fn(small_model, molecule("H2O"), 1)
