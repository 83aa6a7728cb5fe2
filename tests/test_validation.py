"""Bad input at every public edge: each is refused with a message that names the
structure, the atom(s) and the problem; an isolated atom is valid and matches upstream."""

from __future__ import annotations

import dataclasses
import json
import shutil

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from small_reference import MODEL as SMALL_MODEL

import jmattersim
from jmattersim._src.array_checks import check_arrays
from jmattersim._src.checked import checked, checked_energy_fn
from jmattersim._src.checks import (
    CapacityOverflowError,
    InvalidStructureError,
    check_atoms,
    check_distances,
)
from jmattersim._src.cli import main as cli_main
from jmattersim._src.config import M3GNetConfig
from jmattersim._src.energy import energy_fn
from jmattersim._src.graph import check_structures
from jmattersim._src.neighbors import capacity_for
from jmattersim.testing import ARCHITECTURES

from conftest import SHARED

pytestmark = pytest.mark.fast  # no torch: the stored small model

CONFIG = M3GNetConfig()  # max_z 94, cutoffs 5 / 4 Å: what the checks read
TINY = M3GNetConfig(**ARCHITECTURES["small"])  # the stored small model: cheap compiles


def si() -> Atoms:
    return bulk("Si", "diamond", 5.43, cubic=True)  # 8 atoms


def raises(atoms: Atoms, match: str, label=None) -> InvalidStructureError:
    with pytest.raises(InvalidStructureError, match=match) as info:
        check_atoms(atoms, CONFIG, label)
    return info.value


# ------------------------------------------------------------------ ASE structures


def test_valid_structures_pass(structures):
    """No false alarm on real structures: molecules, slabs, triclinic cells, MPtrj."""
    for name, atoms in structures.items():
        check_atoms(atoms, CONFIG, name)


def test_every_shared_data_frame_passes():
    frames = []
    for path in sorted((SHARED / "data").glob("*.xyz")):
        frames += ase.io.read(path, index=":")
    assert len(frames) >= 1000
    check_structures(frames, CONFIG)


def test_close_atoms_name_both_atoms_and_the_distance():
    atoms = si()
    atoms.positions[5] = atoms.positions[2] + [0.2, 0.1, 0.0]
    err = raises(
        atoms, r"^structure 3 \(Si8\): atoms 2 and 5 are 0.224 Å apart \(< 0.5 Å\)$", label=3
    )
    assert err.atoms == (2, 5) and err.structure == "structure 3 (Si8)"


def test_close_atoms_across_the_periodic_boundary():
    atoms = Atoms(
        "Cu2", positions=[[0.1, 2.0, 2.0], [3.9, 2.0, 2.0]], cell=np.eye(3) * 4.1, pbc=True
    )
    raises(atoms, r"atoms 0 and 1 are 0.3 Å apart \(periodic images\) \(< 0.5 Å\)")
    atoms.pbc = False  # as a molecule they are 3.8 Å apart
    check_atoms(atoms, CONFIG)


def test_close_to_own_image():
    with pytest.raises(
        InvalidStructureError,
        match=r"atom 0 is 0.4 Å from its own periodic "
        r"image \(-?[01], -?[01], -?[01]\)",
    ):
        check_distances(np.zeros((1, 3)), np.diag([0.4, 6.0, 6.0]), (True, True, True))


def test_empty_structure():
    raises(Atoms(), r"^structure \(empty\): the structure is empty \(no atoms\)$")
    raises(Atoms(cell=np.eye(3) * 5, pbc=True), "empty", label=0)


@pytest.mark.parametrize("z, name", [(0, "X"), (95, "Am"), (118, "Og")])
def test_atomic_number_outside_1_to_max_z(z, name):
    atoms = si()
    atoms.numbers[4] = z
    err = raises(
        atoms,
        rf"atom\(s\) 4 have atomic number {z} \({name}\); the model knows "
        r"1..94",
    )
    assert err.atoms == (4,)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_positions(value):
    atoms = si()
    atoms.positions[6, 1] = value
    err = raises(atoms, r"positions of atom\(s\) 6 are NaN or infinite")
    assert err.atoms == (6,)


def test_non_finite_cell():
    atoms = si()
    atoms.cell[1, 1] = np.nan
    raises(atoms, "the lattice contains NaN or infinite values")


def test_singular_lattice():
    atoms = Atoms("Si", cell=np.zeros((3, 3)), pbc=True)
    raises(atoms, r"the lattice is singular \(rank 0, volume 0 Å\^3\)")
    coplanar = Atoms("Si", cell=[[4.0, 0, 0], [0, 4.0, 0], [4.0, 4.0, 0]], pbc=True)
    raises(coplanar, r"the lattice is singular \(rank 2")
    slab = Atoms("Si", cell=[[4.0, 0, 0], [0, 4.0, 0], [0, 0, 0]], pbc=(True, True, False))
    raises(slab, r"singular.*pbc=\(True, True, False\).*vacuum")


def test_degenerate_lattice():
    atoms = Atoms(
        "Si2", positions=[[0, 0, 0], [1, 1, 1]], cell=[[5, 0, 0], [0, 5, 0], [5, 5, 1e-4]], pbc=True
    )
    raises(
        atoms,
        r"the lattice is degenerate: the cell is 0.0001 Å thick across lattice "
        r"vector 0 \(< 0.5 Å\)",
    )


def test_isolated_atoms_are_valid():
    lone = Atoms("Fe", positions=[[1.0, 1.0, 1.0]], cell=np.eye(3) * 12, pbc=True)
    check_atoms(lone, CONFIG)
    check_atoms(Atoms("He"), CONFIG)  # a single atom as a molecule


def test_not_atoms():
    with pytest.raises(
        InvalidStructureError,
        match=r"structure 2: expected an ase.Atoms, "
        r"got ndarray",
    ):
        check_structures([si(), si(), np.zeros((3, 3))], CONFIG)


# ------------------------------------------------------------------ tensor API


def batch(*structures: Atoms):
    types = np.concatenate([np.eye(CONFIG.num_species)[a.numbers] for a in structures])
    pos = np.concatenate([a.positions for a in structures])
    lattice = np.stack([a.cell.array for a in structures])
    sizes = np.array([len(a) for a in structures])
    return types, pos, lattice, sizes


def arrays_raise(args, match: str, **kwargs) -> InvalidStructureError:
    with pytest.raises(InvalidStructureError, match=match) as info:
        check_arrays(*args, CONFIG, **kwargs)
    return info.value


def test_arrays_valid_batch_passes():
    cu = bulk("Cu", "fcc", 3.6)
    check_arrays(*batch(si(), cu), CONFIG)
    check_arrays(*[jnp.asarray(x) for x in batch(si(), cu)], CONFIG)  # jax arrays too
    check_arrays(*batch(si(), cu), jmattersim.testing.init_model(TINY))  # a Model for the config


def test_arrays_wrong_shapes():
    t, p, lat, n = batch(si(), bulk("Cu", "fcc", 3.6))
    arrays_raise(
        (t[:, :50], p, lat, n),
        r"atom_types must have shape \(atoms, 95\) \(max_z "
        r"\+ 1 = 95 columns\), got \(9, 50\)",
    )
    arrays_raise((t, p[:, :2], lat, n), r"positions must have shape \(atoms, 3\), got \(9, 2\)")
    arrays_raise((t, p, lat[0], n), r"lattice must have shape \(structures, 3, 3\), got \(3, 3\)")
    arrays_raise((t, p, lat, n[:, None]), r"sizes must have shape \(structures,\)")
    arrays_raise((t, p, lat, n[:1]), "sizes has 1 structures but lattice has 2")
    arrays_raise((t[:-1], p, lat, n), "atom_types has 8 atoms but positions has 9")
    arrays_raise((t, p, lat, n + [0, 1]), "sizes sum to 10 but there are 9 atoms")
    arrays_raise((t, p, lat, n), "1 labels for 2 structures", labels=["a"])


def test_arrays_wrong_dtypes():
    t, p, lat, n = batch(si())
    arrays_raise((t, p.astype(int), lat, n), "positions must be floating point, got dtype int")
    arrays_raise(
        (t, p, lat.astype(complex), n), "lattice must be floating point, got dtype complex128"
    )
    arrays_raise((t.astype(bool), p, lat, n), "atom_types must be real numbers, got dtype bool")
    arrays_raise((t, p, lat, n.astype(float)), "sizes must be integers, got dtype float64")
    check_arrays(t.astype(np.int32), p.astype(np.float32), lat.astype(np.float32), n, CONFIG)


def test_arrays_non_finite():
    t, p, lat, n = batch(si(), si())
    p2 = p.copy()
    p2[12, 0] = np.nan
    err = arrays_raise(
        (t, p2, lat, n),
        r"^structure 1 \(Si8\): positions of atom\(s\) 4 are "
        "NaN or infinite$",
    )
    assert err.atoms == (4,)  # index within its structure
    lat2 = lat.copy()
    lat2[0, 2, 2] = np.inf
    arrays_raise((t, p, lat2, n), r"^structure 0 \(Si8\): the lattice contains NaN")
    t2 = t.copy()
    t2[3, 14] = np.nan
    arrays_raise((t2, p, lat, n), r"structure 0 \(Si8\): atom_types of atom\(s\) 3 are NaN")


def test_arrays_bad_atom_type_rows():
    t, p, lat, n = batch(si(), si())
    neg = t.copy()
    neg[9, 3] = -0.5
    err = arrays_raise(
        (neg, p, lat, n),
        r"^structure 1 \(Si8\): atom_types rows of atom\(s\) 1 "
        "have negative entries$",
    )
    assert err.atoms == (1,)
    zero = t.copy()
    zero[[2, 5]] = 0.0
    arrays_raise(
        (zero, p, lat, n),
        r"structure 0 \(.*\): atom_types rows of atom\(s\) 2, 5 "
        r"sum to zero \(no element\)",
    )
    ghost = t.copy()
    ghost[0, 0] = 1.0
    arrays_raise((ghost, p, lat, n), r"atom\(s\) 0 put weight on element 0")
    soft = t.copy()
    soft[0, [14, 26]] = [0.7, 0.3]  # a distribution over elements is valid
    check_arrays(soft, p, lat, n, CONFIG)


def test_arrays_geometry_and_labels():
    t, p, lat, n = batch(si(), si())
    close = p.copy()
    close[8 + 7] = close[8 + 3] + [0.0, 0.0, 0.4]
    arrays_raise(
        (t, close, lat, n),
        r"^second: atoms 3 and 7 are 0.4 Å apart \(< 0.5 Å\)$",
        labels=["first", "second"],
    )
    flat = lat.copy()
    flat[1, 2] = flat[1, 0] + flat[1, 1]
    arrays_raise((t, p, flat, n), r"structure 1 \(Si8\): the lattice is singular")
    arrays_raise(
        (t[:8], p[:8], lat, np.array([8, 0])),
        r"^structure 1 \(empty\): the "
        r"structure is empty \(sizes\[1\] = 0\)$",
    )


def test_arrays_capacity_overflow():
    structures = [si(), bulk("Cu", "fcc", 3.6)]
    args = batch(*structures)
    cap = capacity_for(structures, CONFIG, batch_size=2)
    check_arrays(*args, CONFIG, capacity=cap)
    with pytest.raises(
        CapacityOverflowError,
        match=r"^structure 0 \(Si8\): neighbour capacity "
        r"overflow: atom 0 has 16 neighbours within the three-body cutoff "
        r"\(4.0 Å\), capacity.neighbors is 8$",
    ) as info:
        check_arrays(*args, CONFIG, capacity=dataclasses.replace(cap, neighbors=8))
    assert info.value.atoms == (0,)
    with pytest.raises(
        CapacityOverflowError,
        match=r"^structure 1 \(Cu\): neighbour capacity "
        r"overflow: the batch has 266 edges up to and including this structure, "
        r"capacity.edges is 250$",
    ):  # Si8 has 224 edges, Cu 42
        check_arrays(*args, CONFIG, capacity=dataclasses.replace(cap, edges=250))
    with pytest.raises(CapacityOverflowError, match="triplets"):
        check_arrays(*args, CONFIG, capacity=dataclasses.replace(cap, triplets=100))
    with pytest.raises(CapacityOverflowError, match="pairs"):
        check_arrays(*args, CONFIG, capacity=dataclasses.replace(cap, pairs=100))


def test_arrays_refuse_tracers():
    t, p, lat, n = batch(si())

    def f(pos):
        check_arrays(t, pos, lat, n, CONFIG)
        return pos

    with pytest.raises(TypeError, match="positions is traced.*checked_energy_fn"):
        jax.jit(f)(p)


# ------------------------------------------------------------------ inside jit


def rattled_si() -> Atoms:
    atoms = si()
    atoms.rattle(0.05, seed=0)  # no symmetry: non-zero forces
    return atoms


@pytest.fixture(scope="module")
def si_inputs():
    atoms = rattled_si()
    return (
        jax.nn.one_hot(atoms.numbers, TINY.num_species),
        jnp.asarray(atoms.positions, jnp.float32),
        jnp.asarray(atoms.cell.array, jnp.float32),
    )


@pytest.fixture(scope="module")
def si_capacity():
    return capacity_for([rattled_si()], TINY)


@pytest.fixture(scope="module")
def si_energy(si_capacity):
    """The checked energy, compiled once for the tests below."""
    return checked(checked_energy_fn(TINY, si_capacity))


def test_checked_energy_equals_energy_fn(small_model, si_inputs, si_capacity, si_energy):
    plain = jax.jit(energy_fn(TINY, si_capacity))(small_model.params, *si_inputs)
    energy = si_energy
    assert np.isfinite(plain)
    np.testing.assert_allclose(energy(small_model.params, *si_inputs), plain, rtol=1e-6)
    # the checks survive jax.grad: value and forces, and an error for a NaN input
    value_and_grad = checked(jax.value_and_grad(checked_energy_fn(TINY, si_capacity), argnums=2))
    e, de_dr = value_and_grad(small_model.params, *si_inputs)
    np.testing.assert_allclose(e, plain, rtol=1e-6)
    assert np.isfinite(de_dr).all() and np.abs(de_dr).max() > 1e-6
    np.testing.assert_allclose(de_dr.sum(axis=0), 0.0, atol=1e-4 * np.abs(de_dr).max())
    types, pos, lat = si_inputs
    with pytest.raises(InvalidStructureError, match="positions of atom 7 are NaN"):
        value_and_grad(small_model.params, types, pos.at[7, 2].set(jnp.nan), lat)


def test_checked_energy_raises_on_bad_input(small_model, si_inputs, si_energy):
    energy = si_energy
    types, pos, lat = si_inputs
    with pytest.raises(
        InvalidStructureError, match="^invalid input: positions of atom 5 are NaN or infinite"
    ):
        energy(small_model.params, types, pos.at[5, 0].set(jnp.nan), lat)
    with pytest.raises(InvalidStructureError, match="the lattice contains NaN"):
        energy(small_model.params, types, pos, lat.at[0, 0].set(jnp.inf))
    with pytest.raises(InvalidStructureError, match="the lattice is singular"):
        energy(small_model.params, types, pos, lat.at[2].set(lat[0] + lat[1]))
    with pytest.raises(InvalidStructureError, match="atom_types row of atom 3 sums to zero"):
        energy(small_model.params, types.at[3].set(0.0), pos, lat)
    with pytest.raises(InvalidStructureError, match="atom_types row of atom 2 is negative"):
        energy(small_model.params, types.at[2, 1].set(-1.0), pos, lat)


def test_checked_energy_raises_on_overflow(small_model, si_inputs, si_capacity):
    """Where energy_fn returns NaN, the checked variant names the overflow."""
    small = dataclasses.replace(si_capacity, edges=100)  # Si8 has 224 edges
    energy = checked(checked_energy_fn(TINY, small))
    with pytest.raises(
        CapacityOverflowError,
        match="^neighbour capacity overflow: the "
        r"structure does not fit Capacity\(edges=100",
    ):
        energy(small_model.params, *si_inputs)


# ------------------------------------------------------------------ calculator, evaluate, CLI


def test_calculator_refuses_bad_structures(small_model):
    calc = jmattersim.MatterSimCalculator(small_model)
    atoms = si()
    atoms.positions[1] = atoms.positions[0] + 0.1
    atoms.calc = calc
    with pytest.raises(
        InvalidStructureError,
        match=r"structure \(Si8\): atoms 0 and 1 are "
        "0.173 Å apart",
    ):
        atoms.get_potential_energy()
    bad = si()
    bad.numbers[0] = 0
    bad.calc = calc
    with pytest.raises(InvalidStructureError, match=r"atom\(s\) 0 have atomic number 0"):
        bad.get_forces()
    empty = Atoms(cell=np.eye(3) * 5, pbc=True)
    empty.calc = calc
    with pytest.raises(InvalidStructureError, match="empty"):
        empty.get_potential_energy()


def test_calculator_refuses_non_finite_results(small_model):
    broken = dataclasses.replace(
        small_model, params=jax.tree_util.tree_map(lambda a: a * np.nan, small_model.params)
    )
    atoms = Atoms("Si", cell=np.eye(3) * 6, pbc=True)
    atoms.calc = jmattersim.MatterSimCalculator(broken)
    with pytest.raises(
        FloatingPointError,
        match=r"structure \(Si\): the model returned a "
        "non-finite energy",
    ):
        atoms.get_potential_energy()


def test_evaluate_names_the_bad_structure(small_model):
    bad = si()
    bad.positions[7] = bad.positions[6]
    with pytest.raises(
        InvalidStructureError,
        match=r"^structure 2 \(Si8\): atoms 6 and 7 are "
        r"0 Å apart \(< 0.5 Å\)$",
    ):
        jmattersim.evaluate(small_model, [si(), bulk("Cu", "fcc", 3.6), bad])


def test_cli_names_the_bad_frame(tmp_path, capsys):
    bad = bulk("Cu", "fcc", 3.6, cubic=True)
    bad.positions[3] = bad.positions[1] + [0.2, 0.0, 0.0]
    src = tmp_path / "frames.extxyz"
    ase.io.write(src, [bulk("Cu", "fcc", 3.6), bad])
    out = tmp_path / "out.extxyz"
    assert cli_main(["predict", str(src), "--model", str(SMALL_MODEL), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{src}: frame 1 (Cu4): atoms 1 and 3 are 0.2 Å apart (< 0.5 Å)" in err
    if out.exists() and out.stat().st_size:  # frames before the bad one may be written
        assert len(ase.io.read(out, index=":")) <= 1  # never the bad one


def test_cli_unreadable_and_empty_files(tmp_path, capsys):
    junk = tmp_path / "junk.extxyz"
    junk.write_text("this is not\na structure file\n")
    assert cli_main(["predict", str(junk), "--model", str(SMALL_MODEL)]) == 1
    assert f"cannot read '{junk}'" in capsys.readouterr().err
    missing = tmp_path / "missing.xyz"
    assert cli_main(["predict", str(missing), "--model", str(SMALL_MODEL)]) == 1
    assert f"cannot read '{missing}'" in capsys.readouterr().err


@pytest.fixture()
def model_copy(tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(SMALL_MODEL, dst)
    return dst


def load_raises(path, exc, match):
    with pytest.raises(exc, match=match):
        jmattersim.load_model(path)


def test_load_model_missing(tmp_path):
    load_raises(tmp_path / "nope", FileNotFoundError, "does not exist.*jmattersim-convert")
    (tmp_path / "empty").mkdir()
    load_raises(tmp_path / "empty", FileNotFoundError, r"no config.json")


def test_load_model_corrupt_config(model_copy):
    meta_file = model_copy / "config.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps(meta)[:40])
    load_raises(model_copy, ValueError, "config.json is corrupt \\(not JSON")
    meta_file.write_text(json.dumps({**meta, "format": "other"}))
    load_raises(model_copy, ValueError, "is not a jmattersim model config")
    meta_file.write_text(json.dumps({k: v for k, v in meta.items() if k != "model_args"}))
    load_raises(model_copy, ValueError, "no 'model_args'")
    meta_file.write_text(json.dumps({**meta, "model_args": {**meta["model_args"], "max_l": 9}}))
    load_raises(model_copy, ValueError, "invalid model_args: MatterSim supports")
    meta_file.write_text(json.dumps({**meta, "model_args": {**meta["model_args"], "units": 64}}))
    load_raises(model_copy, ValueError, r"has shape \(\d+, 16\), expected \(\d+, 64\)")


def test_load_model_corrupt_params(model_copy):
    shutil.rmtree(model_copy / "params")
    load_raises(model_copy, ValueError, "incomplete: no params/")
    (model_copy / "params").mkdir()
    load_raises(model_copy, ValueError, "cannot restore the parameters")


def test_load_model_truncated_params(model_copy):
    files = sorted(
        (p for p in (model_copy / "params").rglob("*") if p.is_file()),
        key=lambda p: p.stat().st_size,
    )
    for p in files:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    load_raises(model_copy, ValueError, "cannot restore the parameters")


def test_load_model_non_finite_params(small_model, tmp_path):
    params = jax.tree_util.tree_map(np.array, small_model.params)
    params["params"]["final"]["g_0"]["kernel"][0, 0] = np.nan
    jmattersim.save_model(dataclasses.replace(small_model, params=params), tmp_path / "m")
    load_raises(
        tmp_path / "m",
        ValueError,
        r"parameter \['params'\]\['final'\]\['g_0'\]"
        r"\['kernel'\] is not finite",
    )


def test_a_model_with_replaced_params_computes_with_them(small_model):
    """dataclasses.replace(model, params=...) must not reuse the old parameters' cast
    copies (it once did: the calculator then computed with the old weights)."""
    atoms = Atoms("Si2", positions=[[0, 0, 0], [1.3, 1.4, 1.2]], cell=np.eye(3) * 6, pbc=True)
    small_model.astype(np.float32)  # fill the cache of the original
    doubled = dataclasses.replace(
        small_model, params=jax.tree_util.tree_map(lambda a: 2 * np.asarray(a), small_model.params)
    )
    before, after = (jmattersim.evaluate(m, [atoms])[0].forces for m in (small_model, doubled))
    assert np.isfinite(before).all() and np.isfinite(after).all()
    assert not np.allclose(before, after)
