"""The differentiable core: a pure energy(params, atom_types, positions, lattice),
its gradients, the jraph batch path and the PyTorch-compatible ``forward_batch`` API.

References are upstream MatterSim (same process), the ASE calculator (whose
parity with upstream is tests/test_parity.py) and finite differences.
"""

from __future__ import annotations

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.units import GPa

import jmattersim
from jmattersim import evaluate
from jmattersim._src import engine
from jmattersim._src.batch import (
    atoms_arrays,
    batch_index_to_sizes,
    forward_batch,
    graphs_tuple,
    pad_graph,
    sizes_to_batch_index,
)
from jmattersim._src.energy import batch_energy_fn, batch_properties_fn, energy_fn
from jmattersim._src.neighbors import capacity_for

from conftest import MPTRJ

upstream = pytest.importorskip("upstream")


def small_cell() -> Atoms:
    """Primitive diamond Si: lattice vectors of 3.84 Å, shorter than the cutoff."""
    si = bulk("Si", "diamond", 5.43)
    si.rattle(0.05, seed=11)
    return si


def triclinic() -> Atoms:
    return Atoms("MgSiO", scaled_positions=[[0, 0, 0], [0.5, 0.4, 0.3], [0.2, 0.7, 0.6]],
                 cell=[[4.2, 0.0, 0.0], [1.1, 4.6, 0.0], [0.7, -0.9, 5.1]], pbc=True)


def arrays(atoms: Atoms, config, dtype=jnp.float32):
    return (jax.nn.one_hot(atoms.numbers, config.num_species, dtype=dtype),
            jnp.asarray(atoms.positions, dtype), jnp.asarray(atoms.cell.array, dtype))


@pytest.fixture(scope="module")
def model(converted):
    return jmattersim.load_model(converted["1M"])


@pytest.fixture(scope="module")
def model64(model):
    with jax.enable_x64(True):
        return model.astype(jnp.float64)


def padded(structures: list[Atoms], config, dtype, n_node: int, n_graph: int):
    at = jnp.concatenate([arrays(a, config, dtype)[0] for a in structures])
    pos = jnp.asarray(np.concatenate([a.positions for a in structures]), dtype)
    lat = jnp.asarray(np.stack([a.cell.array for a in structures]), dtype)
    g = graphs_tuple(at, pos, lat, [len(a) for a in structures])
    return pad_graph(g, n_node, n_graph)


# ---------------------------------------------------------------- 1. gradients


def directional_fd(f, x, v, h):
    return (f(x + h * v) - f(x - h * v)) / (2 * h)


def check_gradient(f, args: tuple, rng, h: float = 1e-5, label: str = "") -> None:
    """grad . v against central differences along random directions, per argument."""
    grads = jax.grad(f, argnums=tuple(range(len(args))))(*args)
    for k, (x, g) in enumerate(zip(args, grads, strict=True)):
        v = jnp.asarray(rng.standard_normal(x.shape))
        along = lambda t, k=k: f(*[t if i == k else a for i, a in enumerate(args)])  # noqa: E731
        fd = directional_fd(along, x, v, h)
        exact = jnp.vdot(g, v)
        assert np.isfinite(exact) and abs(exact) > 1e-3, (label, k, exact)
        rel = abs(exact - fd) / abs(exact)
        assert rel <= 1e-6, f"{label} argument {k}: grad.v {exact:.12g} vs FD {fd:.12g} ({rel:.1e})"


@pytest.mark.parametrize("make", [small_cell, triclinic], ids=["cell_below_cutoff", "triclinic"])
def test_energy_gradients_match_finite_differences(model64, make):
    rng = np.random.default_rng(0)
    atoms = make()
    with jax.enable_x64(True):
        cap = capacity_for([atoms], model64.config, headroom=1.5)
        f = energy_fn(model64.config, cap)
        e = jax.jit(lambda at, pos, lat: f(model64.params, at, pos, lat))
        check_gradient(e, arrays(atoms, model64.config, jnp.float64), rng, label=make.__name__)


def test_padded_batch_gradients_match_finite_differences(model64):
    rng = np.random.default_rng(1)
    structures = [small_cell(), triclinic()]
    config = model64.config
    with jax.enable_x64(True):
        cap = capacity_for(structures, config, headroom=1.5, batch_size=2)
        g = padded(structures, config, jnp.float64, n_node=8, n_graph=4)
        energies = batch_energy_fn(config, cap)
        weights = jnp.array([1.0, 0.7, 0.0, 0.0])  # padding graphs weigh nothing

        def f(at, pos, lat):
            graph = g._replace(nodes={"atom_types": at, "positions": pos},
                               globals={**g.globals, "lattice": lat})
            return jnp.sum(weights * energies(model64.params, graph))

        check_gradient(jax.jit(f), (g.nodes["atom_types"], g.nodes["positions"],
                                    g.globals["lattice"]), rng, label="padded batch")


def test_force_and_stress_loss_differentiates_again(model64):
    """A loss on forces and stresses (create_graph in torch): its gradient in
    atom types, positions and lattice against finite differences of the loss."""
    rng = np.random.default_rng(2)
    structures = [small_cell(), triclinic()]
    config = model64.config
    with jax.enable_x64(True):
        cap = capacity_for(structures, config, headroom=1.5, batch_size=2)
        g = padded(structures, config, jnp.float64, n_node=8, n_graph=3)
        props = batch_properties_fn(config, cap)

        def loss(at, pos, lat, params=model64.params):
            graph = g._replace(nodes={"atom_types": at, "positions": pos},
                               globals={**g.globals, "lattice": lat})
            out = props(params, graph)
            mask = jnp.arange(8)[:, None] < 5
            return jnp.sum(jnp.where(mask, out.forces, 0) ** 2) + jnp.sum(out.stress[:2] ** 2)

        args = (g.nodes["atom_types"], g.nodes["positions"], g.globals["lattice"])
        check_gradient(jax.jit(loss), args, rng, label="force/stress loss")
        grad_params = jax.jit(jax.grad(loss, argnums=3))(*args, model64.params)
        leaves = jax.tree_util.tree_leaves(grad_params["params"])
        assert all(np.isfinite(x).all() for x in leaves)
        assert sum(float(jnp.abs(x).sum()) for x in leaves) > 0


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
    pot = upstream.load_potential(checkpoints["1M"])
    sizes = [len(a) for a in mixed_batch]
    forces = np.split(np.asarray(out["forces"]), np.cumsum(sizes)[:-1])
    host = evaluate(model, mixed_batch)  # the calculator's compiled path, all at once
    for k, atoms in enumerate(mixed_batch):
        ref = upstream.predict(pot, atoms)
        n = len(atoms)
        assert abs(float(out["total_energy"][k]) - ref["energy"]) / n <= 1e-5, k
        np.testing.assert_allclose(forces[k], ref["forces"], atol=1e-4, err_msg=str(k))
        np.testing.assert_allclose(out["stresses"][k], ref["stress_gpa"], atol=1e-3,
                                   err_msg=str(k))
        np.testing.assert_allclose(forces[k], host[k].forces, atol=1e-4, err_msg=str(k))
        np.testing.assert_allclose(out["stresses"][k], host[k].stress_gpa, atol=1e-3,
                                   err_msg=str(k))
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
            return forward_batch(model, atom_types=at, positions=pos, lattice=lat, sizes=sizes,
                                 pbc=pbc, capacity=cap)["total_energy"].sum()
        return -jax.grad(total)(pos)

    out = forward_batch(model, mixed_batch, include_forces=True)
    np.testing.assert_allclose(minus_grad(jnp.asarray(pos, jnp.float32)), out["forces"],
                               atol=2e-5, rtol=1e-5)


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
        out = forward_batch(model, atom_types=at, positions=pos, lattice=lat, sizes=sizes,
                            pbc=pbc, neighbors=nbrs, include_forces=True,
                            include_stresses=True)
        grad = jax.grad(lambda p: forward_batch(
            model, atom_types=at, positions=p, lattice=lat, sizes=sizes, pbc=pbc,
            neighbors=nbrs)["total_energy"].sum())(pos)
        return out, -grad

    ref = forward_batch(model, mixed_batch, include_forces=True, include_stresses=True)
    out, minus_grad = run(pos, jmattersim.neighbor_list(model, mixed_batch))
    np.testing.assert_allclose(out["total_energy"], ref["total_energy"], rtol=1e-6)
    np.testing.assert_allclose(out["forces"], ref["forces"], atol=1e-4)
    np.testing.assert_allclose(out["stresses"], ref["stresses"], atol=1e-3)
    np.testing.assert_allclose(minus_grad, ref["forces"], atol=2e-5, rtol=1e-5)
    assert not bool(out["neighbors_stale"])

    skinned = jmattersim.neighbor_list(model, mixed_batch, skin=0.5)
    rng = np.random.default_rng(0)
    for step, stale in ((0.1, False), (0.4, True)):  # largest displacement 0.1 / 0.4 A
        moved = pos + jnp.asarray(rng.uniform(-1, 1, pos.shape) * step / np.sqrt(3),
                                  jnp.float32)
        out, _ = run(moved, skinned)
        assert bool(out["neighbors_stale"]) == stale
        if not stale:
            fresh = forward_batch(model, atom_types=at, positions=moved, lattice=lat,
                                  sizes=sizes, pbc=pbc, include_forces=True)
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
    g = pad_graph(graphs_tuple(jnp.asarray(at, jnp.float32), jnp.asarray(pos, jnp.float32),
                               jnp.asarray(lat, jnp.float32), sizes, pbc), 256, 8)
    props = batch_properties_fn(config, cap)

    def losses(params, at, pos, lat):
        graph = g._replace(nodes={"atom_types": at, "positions": pos},
                           globals={**g.globals, "lattice": lat})
        out = props(params, graph)
        return jnp.sum(out.energy) + jnp.sum(out.forces**2) + jnp.sum(out.stress**2)

    args = (model.params, g.nodes["atom_types"], g.nodes["positions"], g.globals["lattice"])
    value, grads = jax.jit(jax.value_and_grad(losses, argnums=(0, 1, 2, 3)))(*args)
    assert np.isfinite(value)
    for k, leaf in enumerate(jax.tree_util.tree_leaves(grads)):
        assert np.isfinite(leaf).all(), f"gradient leaf {k} has NaN/inf"
    n = int(np.sum(sizes))
    assert np.abs(grads[2][:n]).max() > 0 and np.abs(grads[1][:n]).max() > 0


# ----------------------------------------------------------------- 4. continuity


def crossing(model, make, moving: int, cutoff: float, delta: float = 1e-4):
    """Energies and forces with atom ``moving`` just inside and just outside
    ``cutoff`` (make(d) puts it at distance d along +x from its partner), and
    the force on it 0.5 Å inside."""
    inside, outside, deep = make(cutoff - delta), make(cutoff + delta), make(cutoff - 0.5)
    cap = capacity_for([inside, outside, deep], model.config, headroom=2.0)
    f = jax.jit(jax.value_and_grad(energy_fn(model.config, cap), argnums=2))
    (e_in, g_in), (e_out, g_out), (_, g_deep) = [
        f(model.params, *arrays(a, model.config)) for a in (inside, outside, deep)]
    # a smooth energy changes by the work of the mean force over the 2 delta step
    expected = 0.5 * float(g_in[moving, 0] + g_out[moving, 0]) * 2 * delta
    return float(e_out - e_in), expected, float(e_in), (-g_in, -g_out, -g_deep)


def dimer_in_box(d: float) -> Atoms:
    return Atoms("SiO", positions=[[1, 1, 1], [1 + d, 1, 1]], cell=np.eye(3) * 12, pbc=True)


def trimer_in_box(d: float) -> Atoms:
    """O at the origin, Si bonded at 2 Å along y, a second Si at d along x."""
    return Atoms("OSiSi", positions=[[3, 3, 3], [3, 5, 3], [3 + d, 3, 3]],
                 cell=np.eye(3) * 12, pbc=True)


@pytest.mark.parametrize("which", ["two_body_5A", "three_body_4A"])
def test_energy_and_forces_are_continuous_across_cutoffs(model, which):
    """Across each cutoff the energy changes by the work of the force (no jump
    beyond float32 rounding, about 2e-5 eV here) and the forces do not jump."""
    config = model.config
    make, moving, cutoff = {"two_body_5A": (dimer_in_box, 1, config.cutoff),
                            "three_body_4A": (trimer_in_box, 2, config.threebody_cutoff)}[which]
    assert abs(np.linalg.norm(make(cutoff).positions[moving] - make(cutoff).positions[0])
               - cutoff) < 1e-12
    de, expected, e, (f_in, f_out, f_deep) = crossing(model, make, moving, cutoff)
    noise = 8 * np.finfo(np.float32).eps * abs(e)
    assert abs(de - expected) <= noise, (de, expected, noise)
    np.testing.assert_allclose(f_in, f_out, atol=1e-4)
    assert np.abs(f_deep[moving]).max() > 1e-3  # the moving atom does interact


def test_energy_of_a_scaled_lattice_is_a_fresh_calculation(model):
    """The topology follows the lattice: scaled by 1.5 (positions with it) the
    energy equals a fresh host-graph calculation; shrunk beyond the capacity it
    is NaN, never a number from a stale topology."""
    atoms = bulk("NaCl", "rocksalt", 5.64)
    atoms.rattle(0.05, seed=2)
    cap = capacity_for([atoms], model.config, headroom=1.25)
    f = jax.jit(energy_fn(model.config, cap))
    bigger = atoms.copy()
    bigger.set_cell(atoms.cell * 1.5, scale_atoms=True)
    calc = jmattersim.MatterSimCalculator(model)
    for a in (atoms, bigger):
        e = float(f(model.params, *arrays(a, model.config)))
        np.testing.assert_allclose(e, calc.get_potential_energy(a), rtol=1e-6, atol=1e-5)
    smaller = atoms.copy()
    smaller.set_cell(atoms.cell * 0.7, scale_atoms=True)
    assert np.isnan(float(f(model.params, *arrays(smaller, model.config))))


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
    stacked = [jnp.stack(x) for x in zip(*(arrays(a, model.config) for a in candidates),
                                         strict=True)]
    batched = jax.jit(jax.vmap(f, in_axes=(None, 0, 0, 0)))(model.params, *stacked)
    single = jax.jit(f)
    for k, a in enumerate(candidates):
        np.testing.assert_allclose(batched[k], single(model.params, *arrays(a, model.config)),
                                   rtol=1e-6)
    assert len(set(np.round(np.asarray(batched), 3))) == 8


def test_streaming_200_frames_needs_at_most_3_shapes(model):
    frames = ase.io.read(MPTRJ, index=":")
    rng = np.random.default_rng(3)
    picks = [frames[i] for i in rng.choice(len(frames), 200, replace=False)]
    energies = []
    with engine.recording() as shapes:
        for k in range(0, 200, 16):
            energies.append(np.asarray(forward_batch(model, picks[k:k + 16])["total_energy"]))
    assert 1 <= len(shapes) <= 3, shapes
    reference = [r.energy for r in evaluate(model, picks[::10])]
    np.testing.assert_allclose(np.concatenate(energies)[::10], reference, rtol=2e-6, atol=1e-4)


def test_sizes_and_batch_index_round_trip():
    sizes = np.array([2, 0, 5, 1])
    index = sizes_to_batch_index(sizes)
    np.testing.assert_array_equal(index, [0, 0, 2, 2, 2, 2, 2, 3])
    np.testing.assert_array_equal(batch_index_to_sizes(index, 4), sizes)
    with pytest.raises(ValueError, match="sorted"):
        batch_index_to_sizes([0, 1, 0])


def test_pad_graph_follows_jraph_convention():
    import jraph

    g = graphs_tuple(np.ones((3, 95), np.float32), np.zeros((3, 3), np.float32),
                     np.tile(np.eye(3, dtype=np.float32), (2, 1, 1)), [1, 2])
    ours = pad_graph(g, 8, 4)
    theirs = jraph.pad_with_graphs(g._replace(globals={"lattice": g.globals["lattice"]}), 8, 0, 4)
    np.testing.assert_array_equal(ours.n_node, theirs.n_node)
    np.testing.assert_array_equal(jraph.get_graph_padding_mask(ours),
                                  jraph.get_graph_padding_mask(theirs))
    np.testing.assert_array_equal(ours.nodes["atom_types"], theirs.nodes["atom_types"])


# ---------------------------------------------------------- 6. inverse design


def test_jitted_inverse_design_loop(model):
    """Gradient steps on softmax logits, lattice and positions of 2 crystals at
    once (the inverse-design workload): energy falls over 100 steps, one compilation."""
    config = model.config
    crystals = [small_cell(), bulk("NaCl", "rocksalt", 5.64)]
    cap = capacity_for(crystals, config, headroom=2.0, batch_size=2, bucketed=True)
    g = padded(crystals, config, jnp.float32, n_node=8, n_graph=3)
    energies = batch_energy_fn(config, cap)
    allowed = jnp.zeros(config.num_species).at[0].set(-1e9)  # element 0 is not an element
    logits0 = 4.0 * g.nodes["atom_types"] + allowed
    n = sum(len(a) for a in crystals)

    def total(logits, pos, lat):
        at = jax.nn.softmax(logits, axis=-1)
        graph = g._replace(nodes={"atom_types": at, "positions": pos},
                           globals={**g.globals, "lattice": lat})
        return jnp.sum(energies(model.params, graph)) / n

    @jax.jit
    def step(state):
        value, grads = jax.value_and_grad(total, argnums=(0, 1, 2))(*state)
        rates = (0.5, 1e-3, 1e-3)
        return tuple(x - r * d for x, r, d in zip(state, rates, grads, strict=True)), value

    state = (logits0, g.nodes["positions"], g.globals["lattice"])
    values = []
    for _ in range(100):
        state, value = step(state)
        values.append(float(value))
    values = np.array(values)
    assert np.isfinite(values).all()
    assert step._cache_size() == 1
    assert values[-1] < values[0] - 1e-3
    assert np.mean(np.diff(values) <= 1e-6) >= 0.95, values


def test_forward_batch_rejects_bad_input_naming_it(model):
    from jmattersim._src.validate import InvalidStructureError

    si = small_cell()
    close = si.copy()
    close.positions[1] = close.positions[0] + [0.2, 0.2, 0.2]
    with pytest.raises(InvalidStructureError, match=r"structure 1 \(Si2\): atoms 0 and 1 are "
                       r"0\.346 Å apart"):
        forward_batch(model, [si, close])
    at, pos, lat = (np.array(x) for x in arrays(si, model.config))
    pos[1, 0] = np.nan
    with pytest.raises(InvalidStructureError, match="positions of atom.* 1 are NaN"):
        forward_batch(model, atom_types=at, positions=pos, lattice=lat[None], sizes=[2])


def test_remat_option_gives_the_same_energy_and_gradients(model):
    si = small_cell()
    cap = capacity_for([si], model.config)
    args = (model.params, *arrays(si, model.config))
    plain = jax.jit(jax.value_and_grad(energy_fn(model.config, cap), argnums=(1, 2, 3)))(*args)
    remat = jax.jit(jax.value_and_grad(energy_fn(model.config, cap, remat=True),
                                       argnums=(1, 2, 3)))(*args)
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(remat),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_relax_rejects_bad_input_naming_it(model):
    from jmattersim._src.validate import InvalidStructureError

    close = small_cell()
    close.positions[1] = close.positions[0] + [0.2, 0.2, 0.2]
    with pytest.raises(InvalidStructureError, match=r"structure 1 \(Si2\): atoms 0 and 1"):
        jmattersim.relax(model, [small_cell(), close])
