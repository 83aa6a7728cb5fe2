"""pair_style jmattersim in LAMMPS against jmattersim.evaluate on the same periodic
cell (one rank), and two MPI ranks against one (float64, the small model).

The structure: Si, 4x4x2 conventional diamond cells (256 atoms), sheared into a
triclinic cell in LAMMPS's orientation (a along x, b in the xy plane), rattled
(seed 3). LAMMPS's pressure is in bar (metal units): stress = -P / nktv2p in eV/Å³, by LAMMPS's
own factor (1.6021765e6 bar per eV/Å³; ASE's units give 1.6021766e6).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lammps")

import ase.io  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from ase.build import bulk  # noqa: E402

import jmattersim  # noqa: E402
from jmattersim.lammps import LammpsSetupError, build_plugin, session  # noqa: E402


def _silicon() -> ase.Atoms:
    atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat((4, 4, 2))
    shear = np.array([[1.0, 0.0, 0.0], [0.08, 1.0, 0.0], [-0.05, 0.06, 1.0]])
    atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    atoms.rattle(0.05, seed=3)
    return atoms


def _input(data: Path, model: str = "small", steps: int = 0, processors: str = "") -> str:
    return textwrap.dedent(
        f"""
        units metal
        atom_style atomic
        boundary p p p
        {processors}
        read_data {data}
        mass 1 28.0855
        pair_style jmattersim {model}
        pair_coeff * * Si
        compute virial all pressure NULL virial
        thermo_style custom step pe c_virial
        thermo_modify format float %.16g
        velocity all create 600 7 loop geom
        fix nve all nve
        run {steps}
        """
    )


def _write_data(atoms: ase.Atoms, path: Path) -> None:
    ase.io.write(path, atoms, format="lammps-data", specorder=["Si"], atom_style="atomic")


def _apart(a: np.ndarray, b: np.ndarray, cell: np.ndarray) -> float:
    """Å: the largest distance of matching rows of ``a`` and ``b``, modulo ``cell``
    (LAMMPS wraps atoms into its box)."""
    frac = (np.asarray(a) - np.asarray(b)) @ np.linalg.inv(cell)
    return float(np.abs((frac - np.round(frac)) @ cell).max())


def _results(lmp) -> dict:
    n = lmp.extract_global("nlocal")
    ids = np.asarray(lmp.numpy.extract_atom("id"))[:n].copy()
    order = np.argsort(ids)
    return {
        "energy": lmp.get_thermo("pe"),
        "bar_per_ev_a3": lmp.extract_global("nktv2p"),  # LAMMPS's own factor
        "virial": np.asarray(lmp.numpy.extract_compute("virial", 0, 1)).tolist(),  # bar
        "forces": np.asarray(lmp.numpy.extract_atom("f"))[:n][order].copy(),
        "positions": np.asarray(lmp.numpy.extract_atom("x"))[:n][order].copy(),
    }


@pytest.mark.slow
@pytest.mark.parametrize(("x64", "tolerance"), [(True, 1e-8), (False, 1e-5)], ids=["f64", "f32"])
def test_run_zero_equals_evaluate_on_a_triclinic_cell(small_model, tmp_path, x64, tolerance):
    """Energy, forces by atom ID and stress of `run 0` on one rank equal
    jmattersim.evaluate's on the periodic cell: 1e-8 relative in float64; in float32,
    1e-5 (the cluster and the periodic graph sum the same terms in other orders),
    forces and stress relative to their largest component."""
    atoms = _silicon()
    data = tmp_path / "si.data"
    _write_data(atoms, data)
    dtype = jnp.float64 if x64 else jnp.float32
    with jax.enable_x64(x64):
        model = small_model.astype(dtype)
        lmp = session({"small": model}, dtype=dtype)
        (tmp_path / "in.lmp").write_text(_input(data))
        lmp.file(str(tmp_path / "in.lmp"))
        got = _results(lmp)
        lmp.close()
        ref = jmattersim.evaluate(model, [atoms], dtype=dtype)[0]
    assert _apart(got["positions"], atoms.positions, atoms.cell.array) < 1e-9  # no rotation
    print(f"\nenergy {got['energy']:.12f} vs evaluate's {ref.energy:.12f} eV")
    assert got["energy"] == pytest.approx(float(ref.energy), rel=tolerance)
    forces = np.asarray(ref.forces, np.float64)
    scale = np.abs(forces).max()
    worst = np.abs(got["forces"] - forces).max() / scale
    print(f"forces: largest difference {worst:.1e} of the largest, {scale:.3f} eV/Å")
    assert np.abs(got["forces"] - forces).max() <= tolerance * scale
    xx, yy, zz, xy, xz, yz = (-v / got["bar_per_ev_a3"] for v in got["virial"])
    stress = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])  # eV/Å³
    ref_stress = np.asarray(ref.stress, np.float64)  # (3, 3) eV/Å³
    assert np.abs(stress - ref_stress).max() <= tolerance * np.abs(ref_stress).max()


@pytest.mark.slow
def test_unknown_element_wrong_count_and_short_ghost_cutoff_are_named(small_model64, tmp_path):
    atoms = _silicon()
    data = tmp_path / "si.data"
    _write_data(atoms, data)
    with jax.enable_x64(True):
        lmp = session({"small": small_model64}, dtype=jnp.float64)
        for line in _input(data).splitlines():
            if line.strip().startswith("pair_coeff"):
                break
            lmp.command(line)
        with pytest.raises(Exception, match="Qq is not an element symbol"):
            lmp.command("pair_coeff * * Qq")
        with pytest.raises(Exception, match="one element per atom type: 1 types, 2 elements"):
            lmp.command("pair_coeff * * Si O")
        lmp.command("pair_coeff * * Si")
        lmp.command("comm_modify cutoff 6.0")
        with pytest.raises(Exception, match="too short for the model's depth: .* = 10 A"):
            lmp.command("run 0")
        lmp.close()


def test_a_missing_compiler_is_named(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler++")
    with pytest.raises(LammpsSetupError, match="no C.. compiler CXX=no-such-compiler.. found"):
        build_plugin(force=True)


def _ranks(count: int, tmp_path: Path) -> dict:
    out = tmp_path / f"ranks-{count}.json"
    mpirun = Path(sys.prefix) / "bin" / "mpirun"
    script = Path(__file__).with_name("lammps_ranks.py")
    data = tmp_path / f"si-{count}.data"
    _write_data(_silicon(), data)
    command = [str(mpirun), "-np", str(count), sys.executable, str(script), str(out), str(data)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    result["owned"] = [json.loads(Path(f"{out}.rank-{r}").read_text()) for r in range(count)]
    return result


@pytest.mark.slow
def test_two_ranks_equal_one(tmp_path):
    """mpirun -np 2 (two subdomains) against -np 1: energy, forces and pressure to
    1e-10 relative; positions after 20 NVE steps, atoms crossing between the
    subdomains, to 1e-8 Å."""
    one, two = _ranks(1, tmp_path), _ranks(2, tmp_path)
    assert two["ranks"] == 2
    moved = [after - before for before, after in two["owned"]]
    print(f"\nowned atoms per rank before and after: {two['owned']}; energy {one['energy']}")
    assert any(m != 0 for m in moved)  # atoms changed subdomain
    assert two["energy"] == pytest.approx(one["energy"], rel=1e-10)
    np.testing.assert_allclose(two["virial"], one["virial"], rtol=1e-10, atol=0)
    f1, f2 = np.asarray(one["forces"]), np.asarray(two["forces"])
    assert np.abs(f2 - f1).max() <= 1e-10 * np.abs(f1).max()
    assert _apart(two["positions"], one["positions"], _silicon().cell.array) <= 1e-8


@pytest.mark.slow
def test_the_example_input_runs_from_the_command_line(tmp_path):
    """`jmattersim lammps examples/lammps/in.si_nvt` with the small model, shrunk to
    one by one by two diamond cells and two steps: exits 0 and logs both steps."""
    from small_reference import MODEL

    example = Path(__file__).resolve().parents[1] / "examples" / "lammps" / "in.si_nvt"
    cli = Path(sys.executable).with_name("jmattersim")
    args = ["--model", str(MODEL), "--var", "nx", "1", "--var", "ny", "1", "--var", "nz", "2"]
    args += ["--var", "steps", "2", "--log", "log.lammps"]
    done = subprocess.run(
        [str(cli), "lammps", str(example), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = (tmp_path / "log.lammps").read_text()
    assert "Loop time" in log and "16 atoms" in log
    assert (tmp_path / "si_nvt.lammpstrj").exists()
