"""The core is built once: one class carries a topology, and one function derives
forces and stress from an energy, reached by every path that needs them."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

import jmattersim
from jmattersim._src import engine, jax_md, train_step
from jmattersim._src.capacity import Capacity
from jmattersim._src.derivatives import hessian
from jmattersim._src.graph import structure_graph
from jmattersim._src.loss import LossSettings, pad_labels
from jmattersim._src.padding import pad, total_counts

pytestmark = pytest.mark.fast

SCOPE = "forces_and_stress"  # the named scope of jmattersim._src.energy.forces_and_stress


def _fields(cls: type) -> set[str]:
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls)}
    return set(getattr(cls, "_fields", ())) | set(getattr(cls, "__annotations__", {}))


def test_one_class_carries_a_topology():
    """Topology is the only class of jmattersim with a ``senders`` field."""
    carriers = set()
    for info in pkgutil.walk_packages(jmattersim.__path__, "jmattersim."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == info.name:
                if "senders" in _fields(value):
                    carriers.add(f"{value.__module__}.{value.__qualname__}")
    assert carriers == {"jmattersim._src.topology.Topology"}


def _scopes(jaxpr) -> set[str]:
    """Every name stack in a (closed) jaxpr, sub-jaxprs included."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    found = set()
    for eqn in jaxpr.eqns:
        found.add(str(eqn.source_info.name_stack))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if hasattr(getattr(sub, "jaxpr", sub), "eqns"):  # a (closed) jaxpr
                    found |= _scopes(sub)
    return found


def _derives(fn, *args, **static) -> bool:
    """Whether tracing ``fn(*args)`` runs forces_and_stress."""
    jaxpr = jax.make_jaxpr(fn, **static)(*args)
    return any(SCOPE in scope for scope in _scopes(jaxpr))


@pytest.fixture(scope="module")
def si_batch(small_model):
    """Si (2 atoms) as a padded host batch of the small model, float32."""
    graphs = [structure_graph(bulk("Si", "diamond", a=5.43), small_model.config)]
    return pad(graphs, Capacity.above(total_counts(graphs)), small_model.config, np.float32)


def test_every_path_derives_forces_and_stress_in_one_place(small_model, si_batch):
    model, config = small_model, small_model.config
    si = bulk("Si", "diamond", a=5.43)
    positions = jnp.asarray(si.positions, jnp.float32)
    arrays = dict(atom_types=np.eye(config.num_species)[si.numbers], lattice=si.cell.array[None])
    arrays["sizes"] = [len(si)]

    def traced(neighbors=None, capacity=None):
        def forces(r):
            out = jmattersim.forward_batch(
                model,
                positions=r,
                include_forces=True,
                neighbors=neighbors,
                capacity=capacity,
                **arrays,
            )
            return out["forces"]

        return forces

    nbrs = jmattersim.batch.neighbor_list(model, [si], skin=0.5)
    capacity = jmattersim.capacity_for([si], config, headroom=1.5)
    assert _derives(traced(neighbors=nbrs), positions), "forward_batch(neighbors=)"
    assert _derives(traced(capacity=capacity), positions), "forward_batch(capacity=)"
    # concrete forward_batch, evaluate and the calculator run the engine's program
    assert _derives(engine.predict_batch, config, model.params, si_batch, static_argnums=(0,))

    # the jax-md driver's energy, forces and pressure
    R, box, species = jax_md.atoms_to_jax_md(si)
    neighbor_fn, _ = jax_md.mattersim_neighbor_list(model, box, species, dr_threshold=0.5)
    nbrs_md = neighbor_fn.allocate(R)
    atom_types = jax_md.one_hot(species, config.num_species, R.dtype)
    assert _derives(lambda r: jax_md.neighbor_properties(model, atom_types, r, box, nbrs_md), R), (
        "jax-md"
    )

    # the Hessian chunks (and through gradient_in_positions, fc3's)
    x = jnp.asarray(si.positions, jnp.float32)
    tangents = jnp.zeros((1, len(si), 3), jnp.float32)
    columns = hessian._columns(config, len(si))
    assert _derives(columns, model.params, si_batch, x, tangents), "hessian"

    # the training step's gradient of the loss (forces in the loss)
    trainable, frozen = train_step.split_params(model.params, scale=False, shift=False)
    n_node, n_graph = int(si_batch.graph.n_node.sum()), si_batch.graph.n_node.shape[0]
    labels = pad_labels([], n_node, n_graph, np.float32)

    def loss(weights):
        return train_step.loss_fn(config, LossSettings(), weights, frozen, si_batch, labels).loss

    assert _derives(jax.grad(loss), trainable), "training step"
