"""The optimised model layout (``M3GNet(fast=True)``, the default) and the
per-block rematerialisation (``remat=True``) against the reference layout:
same variables, same energies, forces and stresses up to float rounding, and
the same gradient of a force-and-stress loss."""

from __future__ import annotations

import functools
import math
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmattersim._src.energy as energy_module
from jmattersim._src.capacity import Capacity
from jmattersim._src.config import M3GNetConfig
from jmattersim._src.energy import energies, predict
from jmattersim._src.graph import structure_graph
from jmattersim._src.model import M3GNet, init_params
from jmattersim._src.padding import pad, total_counts

from conftest import mptrj_frames, special_structures

CONFIG = M3GNetConfig(num_blocks=3, units=128)  # the 1M layout

# max |fast - reference| / max(max |reference|, 1), per quantity
RTOL = {"float64": 1e-12, "float32": 1e-5}


def random_params(config: M3GNetConfig, seed: int) -> dict:
    """Variables with activations of order one and random per-element scale and
    shift (as tests/upstream.py draws them for upstream's model)."""
    params = init_params(config, jax.random.key(seed))
    flat, tree = jax.tree_util.tree_flatten_with_path(params["params"])
    keys = jax.random.split(jax.random.key(seed + 1), len(flat))
    leaves = []
    for (path, leaf), key in zip(flat, keys, strict=True):
        name = "/".join(p.key for p in path)
        if name == "normalizer/scale":
            leaves.append(jax.random.uniform(key, leaf.shape, minval=0.5, maxval=2.0))
        elif name == "normalizer/shift":
            leaves.append(jax.random.uniform(key, leaf.shape, minval=-10.0, maxval=0.0))
        else:
            fan_in = leaf.shape[0]
            leaves.append(jax.random.normal(key, leaf.shape) * 1.5 / math.sqrt(fan_in))
    return {"params": jax.tree_util.tree_unflatten(tree, leaves), "constants": params["constants"]}


@pytest.fixture(scope="module")
def graphs():
    special = special_structures()
    atoms = [special[k] for k in ("triclinic_oxide", "h2o_molecule", "al_slab_pbc_TTF")]
    atoms += mptrj_frames(40)[::10]  # 4 frames across the size range
    return [structure_graph(a, CONFIG) for a in atoms]


@pytest.fixture(scope="module")
def params():
    return random_params(CONFIG, seed=3)


_CACHE: dict = {}


def predictions(graphs, params, dtype, fast=True, remat=False):
    """predict() with ``M3GNet(fast=fast, remat=remat)`` in place of the default
    model (memoised: each variant compiles once)."""
    key = (dtype, fast, remat)
    if key not in _CACHE:
        _CACHE[key] = _predictions(graphs, params, dtype, fast=fast, remat=remat)
    return _CACHE[key]


def _predictions(graphs, params, dtype, **options):
    cast = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)
    batch = pad(graphs, Capacity.above(total_counts(graphs)), CONFIG, np.dtype(dtype))
    model = functools.partial(M3GNet, **options)
    with mock.patch.object(energy_module, "M3GNet", model):
        # a fresh function: jit's cache must not hand back another variant's trace
        out = jax.jit(lambda p, b: predict(CONFIG, p, b))(cast, batch)
    g, n = len(graphs), sum(x.n_node for x in graphs)
    return {
        "energy": np.asarray(out.energy[:g]),
        "forces": np.asarray(out.forces[:n]),
        "stress": np.asarray(out.stress[:g]),
    }


def worst_relative(got: dict, ref: dict) -> dict:
    return {k: float(np.abs(got[k] - ref[k]).max() / max(np.abs(ref[k]).max(), 1.0)) for k in ref}


def test_same_variables():
    """The converter's name table applies to every layout."""
    key = jax.random.key(0)
    shapes = {}
    for fast in (False, True):
        with mock.patch.object(energy_module, "M3GNet", functools.partial(M3GNet, fast=fast)):
            shapes[fast] = jax.tree_util.tree_map(
                lambda a: a.shape, jax.eval_shape(lambda: init_params(CONFIG, key))
            )
    assert shapes[True] == shapes[False]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fast_equals_reference(graphs, params, dtype, record_property):
    with jax.enable_x64(dtype == "float64"):
        ref = predictions(graphs, params, dtype, fast=False)
        fast = predictions(graphs, params, dtype, fast=True)
    assert np.abs(ref["energy"]).max() > 1.0 and np.abs(ref["forces"]).max() > 0.1
    errors = worst_relative(fast, ref)
    record_property(f"fast_vs_reference_{dtype}", errors)
    print(f"\nfast vs reference, {dtype}: {errors}")
    for k, err in errors.items():
        assert err <= RTOL[dtype], f"{k}: relative {err:.2e}"


def test_remat_equals_plain(graphs, params):
    with jax.enable_x64(True):
        plain = predictions(graphs, params, "float64", remat=False)
        remat = predictions(graphs, params, "float64", remat=True)
    errors = worst_relative(remat, plain)
    print(f"\nremat vs plain, float64: {errors}")
    for k, err in errors.items():
        assert err <= RTOL["float64"], f"{k}: relative {err:.2e}"


def force_stress_loss_grad(graphs, params, **options):
    """Gradient in positions, lattice and atom types of sum |F|^2 + sum |stress|^2."""
    batch = pad(graphs, Capacity.above(total_counts(graphs)), CONFIG, np.float64)
    g = batch.graph
    topo = batch.topology
    real = np.arange(g.n_node.shape[0]) < len(graphs)
    model = functools.partial(M3GNet, **options)

    def loss(atom_types, positions, lattice):
        def total(pos, strain):
            e = energies(CONFIG, params, atom_types, pos, lattice, g.n_node, topo, strain)
            return jnp.sum(jnp.where(real, e, 0.0))

        de_dr, de_deps = jax.grad(total, argnums=(0, 1))(positions, jnp.zeros_like(lattice))
        return jnp.sum(de_dr**2) + jnp.sum(jnp.where(real[:, None, None], de_deps, 0.0) ** 2)

    with mock.patch.object(energy_module, "M3GNet", model):
        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(
            g.nodes["atom_types"], g.nodes["positions"], g.globals["lattice"]
        )
    return dict(zip(("atom_types", "positions", "lattice"), map(np.asarray, grads), strict=True))


def test_gradient_of_force_loss_remat_and_fast(graphs, params):
    """Second derivatives agree too (the training and inverse-design workload)."""
    small = graphs[:3]
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        ref = force_stress_loss_grad(small, p64, fast=False)
        for options in ({"fast": True}, {"fast": True, "remat": True}):
            errors = worst_relative(force_stress_loss_grad(small, p64, **options), ref)
            print(f"\n{options} vs reference, gradient of force loss: {errors}")
            for k, err in errors.items():
                assert err <= RTOL["float64"], f"{options} {k}: relative {err:.2e}"
