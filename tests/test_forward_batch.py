"""The jraph batch path and the PyTorch-compatible ``forward_batch``: forces and
stresses against the calculator and upstream (same process), soft atom types, no NaN
gradient from padding, vmap over candidates, few compilations, bad input named.
"""

from __future__ import annotations

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.units import GPa

import jmattersim
from jmattersim import evaluate
from jmattersim._src import engine
from jmattersim._src.batch import forward_batch
from jmattersim._src.batch_energy import batch_properties_fn
from jmattersim._src.energy import energy_fn
from jmattersim._src.neighbors import capacity_for
from jmattersim._src.tensors import atoms_arrays, graphs_tuple, pad_graph
from jmattersim.testing import upstream_potential

from conftest import MPTRJ, arrays, small_cell

upstream = pytest.importorskip("upstream")


# ------------------------------------------- 2. batch path: forces and stresses


@pytest.fixture(scope="module")
def mixed_batch(structures):
    """2-atom and 100-atom MPtrj frames and two hand-made cells, in one batch."""
    frames = sorted(ase.io.read(MPTRJ, index=":"), key=len)
    hundred = min((a for a in frames if len(a) >= 100), key=len)
    return [frames[0], hundred, structures["si_diamond"], structures["triclinic_oxide"]]


def test_batch_forces_stresses_equal_calculator_and_upstream(model, checkpoints, mixed_batch):
    assert len(mixed_batch[0]) == 2 and len(mixed_batch[1]) >= 100
    out = forward_batch(model, mixed_batch, include_forces=True, include_stresses=True)
    pot = upstream_potential(checkpoints["1M"])
    sizes = [len(a) for a in mixed_batch]
    forces = np.split(np.asarray(out["forces"]), np.cumsum(sizes)[:-1])
    host = evaluate(model, mixed_batch)  # the calculator's compiled path, all at once
    for k, atoms in enumerate(mixed_batch):
        ref = upstream.predict(pot, atoms)
        n = len(atoms)
        assert abs(float(out["total_energy"][k]) - ref["energy"]) / n <= 1e-5, k
        np.testing.assert_allclose(forces[k], ref["forces"], atol=1e-4, err_msg=str(k))
        np.testing.assert_allclose(out["stresses"][k], ref["stress_gpa"], atol=1e-3, err_msg=str(k))
        np.testing.assert_allclose(forces[k], host[k].forces, atol=1e-4, err_msg=str(k))
        np.testing.assert_allclose(
            out["stresses"][k], host[k].stress_gpa, atol=1e-3, err_msg=str(k)
        )
    a = mixed_batch[0].copy()
    a.calc = jmattersim.MatterSimCalculator(model)
    voigt = np.asarray(out["stresses"][0])[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    np.testing.assert_allclose(a.get_stress() / GPa, voigt, atol=1e-3)  # eV/A^3 there


def test_batch_forces_are_minus_energy_gradient(model, mixed_batch):
    """forces from forward_batch == -d(sum E)/d positions, the gradient taken
    through forward_batch itself under jit (the traced path)."""
    config = model.config
    cap = capacity_for(mixed_batch, config, batch_size=len(mixed_batch), bucketed=True)
    at, pos, lat, sizes, pbc = atoms_arrays(mixed_batch, config)

    @jax.jit
    def minus_grad(pos):
        def total(pos):
            return forward_batch(
                model, atom_types=at, positions=pos, lattice=lat, sizes=sizes, pbc=pbc, capacity=cap
            )["total_energy"].sum()

        return -jax.grad(total)(pos)

    out = forward_batch(model, mixed_batch, include_forces=True)
    np.testing.assert_allclose(
        minus_grad(jnp.asarray(pos, jnp.float32)), out["forces"], atol=2e-5, rtol=1e-5
    )


def test_traced_forward_batch_with_a_host_list_equals_the_concrete_path(model, mixed_batch):
    """Under jit, with a neighbour list built on the host (the inverse-design path):
    the concrete path's energies, forces and stresses; forces = -dE/dpositions;
    a list with a skin follows moving atoms exactly until it says it is stale."""
    config = model.config
    at, pos, lat, sizes, pbc = atoms_arrays(mixed_batch, config)
    sizes = tuple(int(n) for n in sizes)
    at, pos, lat = (jnp.asarray(x, jnp.float32) for x in (at, pos, lat))

    @jax.jit
    def run(pos, nbrs):
        out = forward_batch(
            model,
            atom_types=at,
            positions=pos,
            lattice=lat,
            sizes=sizes,
            pbc=pbc,
            neighbors=nbrs,
            include_forces=True,
            include_stresses=True,
        )
        grad = jax.grad(
            lambda p: forward_batch(
                model, atom_types=at, positions=p, lattice=lat, sizes=sizes, pbc=pbc, neighbors=nbrs
            )["total_energy"].sum()
        )(pos)
        return out, -grad

    ref = forward_batch(model, mixed_batch, include_forces=True, include_stresses=True)
    out, minus_grad = run(pos, jmattersim.batch.neighbor_list(model, mixed_batch))
    np.testing.assert_allclose(out["total_energy"], ref["total_energy"], rtol=1e-6)
    np.testing.assert_allclose(out["forces"], ref["forces"], atol=1e-4)
    np.testing.assert_allclose(out["stresses"], ref["stresses"], atol=1e-3)
    np.testing.assert_allclose(minus_grad, ref["forces"], atol=2e-5, rtol=1e-5)
    assert not bool(out["neighbors_stale"])

    skinned = jmattersim.batch.neighbor_list(model, mixed_batch, skin=0.5)
    rng = np.random.default_rng(0)
    for step, stale in ((0.1, False), (0.4, True)):  # largest displacement 0.1 / 0.4 A
        moved = pos + jnp.asarray(rng.uniform(-1, 1, pos.shape) * step / np.sqrt(3), jnp.float32)
        out, _ = run(moved, skinned)
        assert bool(out["neighbors_stale"]) == stale
        if not stale:
            fresh = forward_batch(
                model,
                atom_types=at,
                positions=moved,
                lattice=lat,
                sizes=sizes,
                pbc=pbc,
                include_forces=True,
            )
            np.testing.assert_allclose(out["total_energy"], fresh["total_energy"], rtol=1e-6)
            np.testing.assert_allclose(out["forces"], fresh["forces"], atol=1e-4)


# -------------------------------------- 3. soft atom types, padding without NaN


def test_one_hot_soft_path_equals_integer_path(model, mixed_batch):
    """One-hot atom types through the soft path (embedding and per-element
    scale/shift as matrix products) against the integer path, i.e. the
    per-element scale and shift looked up by each atom's element."""
    soft = forward_batch(model, mixed_batch, soft_normalize=True)["total_energy"]
    hard = forward_batch(model, mixed_batch, soft_normalize=False)["total_energy"]
    np.testing.assert_allclose(soft, hard, rtol=1e-6)
    calc = [r.energy for r in evaluate(model, mixed_batch)]
    np.testing.assert_allclose(soft, calc, rtol=1e-6)


def test_soft_types_change_the_energy_and_hard_normalize_blocks_its_gradient(model):
    si = small_cell()
    at, pos, lat = arrays(si, model.config)
    cap = capacity_for([si], model.config)
    mixed = at.at[:, 6].set(0.3).at[:, 14].set(0.7)  # 30 % carbon on each site
    for soft in (True, False):
        f = energy_fn(model.config, cap, soft_normalize=soft)
        grad = jax.grad(f, argnums=1)(model.params, mixed, pos, lat)
        assert np.isfinite(grad).all() and np.abs(grad).max() > 0
    e_soft = energy_fn(model.config, cap)(model.params, mixed, pos, lat)
    e_pure = energy_fn(model.config, cap)(model.params, at, pos, lat)
    assert abs(float(e_soft - e_pure)) > 1e-3


def test_no_gradient_of_a_padded_batch_is_nan(model, mixed_batch):
    config = model.config
    cap = capacity_for(mixed_batch, config, batch_size=4, bucketed=True)
    at, pos, lat, sizes, pbc = atoms_arrays(mixed_batch, config)
    g = pad_graph(
        graphs_tuple(
            jnp.asarray(at, jnp.float32),
            jnp.asarray(pos, jnp.float32),
            jnp.asarray(lat, jnp.float32),
            sizes,
            pbc,
        ),
        256,
        8,
    )
    props = batch_properties_fn(config, cap)

    def losses(params, at, pos, lat):
        graph = g._replace(
            nodes={"atom_types": at, "positions": pos}, globals={**g.globals, "lattice": lat}
        )
        out = props(params, graph)
        return jnp.sum(out.energy) + jnp.sum(out.forces**2) + jnp.sum(out.stress**2)

    args = (model.params, g.nodes["atom_types"], g.nodes["positions"], g.globals["lattice"])
    value, grads = jax.jit(jax.value_and_grad(losses, argnums=(0, 1, 2, 3)))(*args)
    assert np.isfinite(value)
    for k, leaf in enumerate(jax.tree_util.tree_leaves(grads)):
        assert np.isfinite(leaf).all(), f"gradient leaf {k} has NaN/inf"
    n = int(np.sum(sizes))
    assert np.abs(grads[2][:n]).max() > 0 and np.abs(grads[1][:n]).max() > 0


# ------------------------------------------------------ 5. vmap and compilations


def test_vmap_over_candidates_equals_single_calls(model):
    base = bulk("Si", "diamond", 5.43, cubic=True)  # 8 atoms
    rng = np.random.default_rng(5)
    candidates = []
    for k in range(8):
        a = base.copy()
        a.numbers = rng.choice([6, 14, 32], size=len(a))
        a.rattle(0.05, seed=k)
        a.set_cell(a.cell * (1 + 0.02 * k), scale_atoms=True)
        candidates.append(a)
    cap = capacity_for(candidates, model.config)
    f = energy_fn(model.config, cap)
    stacked = [
        jnp.stack(x) for x in zip(*(arrays(a, model.config) for a in candidates), strict=True)
    ]
    batched = jax.jit(jax.vmap(f, in_axes=(None, 0, 0, 0)))(model.params, *stacked)
    single = jax.jit(f)
    for k, a in enumerate(candidates):
        np.testing.assert_allclose(
            batched[k], single(model.params, *arrays(a, model.config)), rtol=1e-6
        )
    assert len(set(np.round(np.asarray(batched), 3))) == 8


def test_streaming_200_frames_needs_at_most_3_shapes(model):
    frames = ase.io.read(MPTRJ, index=":")
    rng = np.random.default_rng(3)
    picks = [frames[i] for i in rng.choice(len(frames), 200, replace=False)]
    energies = []
    with engine.recording() as shapes:
        for k in range(0, 200, 16):
            energies.append(np.asarray(forward_batch(model, picks[k : k + 16])["total_energy"]))
    assert 1 <= len(shapes) <= 3, shapes
    reference = [r.energy for r in evaluate(model, picks[::10])]
    np.testing.assert_allclose(np.concatenate(energies)[::10], reference, rtol=2e-6, atol=1e-4)


def test_forward_batch_rejects_bad_input_naming_it(model):
    from jmattersim._src.checks import InvalidStructureError

    si = small_cell()
    close = si.copy()
    close.positions[1] = close.positions[0] + [0.2, 0.2, 0.2]
    with pytest.raises(
        InvalidStructureError,
        match=r"structure 1 \(Si2\): atoms 0 and 1 are "
        r"0\.346 Å apart",
    ):
        forward_batch(model, [si, close])
    at, pos, lat = (np.array(x) for x in arrays(si, model.config))
    pos[1, 0] = np.nan
    with pytest.raises(InvalidStructureError, match="positions of atom.* 1 are NaN"):
        forward_batch(model, atom_types=at, positions=pos, lattice=lat[None], sizes=[2])
