"""Integrators of a union of systems (:mod:`jmattersim._src.union`), each system with
its own temperature and random stream.

Units: Å, eV, amu; time in Å sqrt(amu/eV) (``ase.units.fs`` of it is one fs), so
momenta are ASE's. ``step(state) -> state`` advances every running system by one
time step; a system that has stopped does not move. ``step(state, 0.0)`` only
evaluates the forces at the current positions (the first step of a chunk).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from .arrays import Array
from .union import RUNNING, State, Systems

ENSEMBLES = ("nve", "nvt_langevin")
"""The ensembles many systems run in one call."""


def _kick(state: State, systems: Systems, dt: Array) -> State:
    """The step's last half kick (the forces on the momenta) of the running systems,
    whose step count it advances (unless ``dt`` is 0)."""
    running = state.status == RUNNING
    kicked = state.momenta + 0.5 * dt * state.forces
    return state._replace(
        momenta=jnp.where(running[systems.node_graph][:, None], kicked, state.momenta),
        steps=state.steps + (running & (dt > 0)),
    )


def velocity_verlet(evaluate: Callable, systems: Systems) -> Callable[[State, Array], State]:
    """NVE: velocity Verlet (as ASE's ``VelocityVerlet`` and jax-md's ``nve``)."""
    inverse_mass = 1.0 / systems.mass[:, None]

    def step(state: State, dt: Array) -> State:
        momenta = state.momenta + 0.5 * dt * state.forces
        positions = state.positions + dt * momenta * inverse_mass
        return _kick(evaluate(state, positions, momenta), systems, dt)

    return step


def langevin(
    evaluate: Callable, systems: Systems, friction: float
) -> Callable[[State, Array], State]:
    """NVT: Langevin dynamics, BAOAB splitting (as jax-md's ``nvt_langevin``), each
    system at its own ``kT``; ``friction`` in inverse time units. Each atom's noise
    comes from its system's key and its index in the system, so a system's run does
    not depend on what it is batched with."""
    inverse_mass = 1.0 / systems.mass[:, None]
    node_graph = systems.node_graph
    local = (
        jnp.arange(node_graph.shape[0]) - (jnp.cumsum(systems.n_node) - systems.n_node)[node_graph]
    )
    thermal = (systems.kT[node_graph] * systems.mass)[:, None]

    def noise(keys: Array) -> Array:
        atom_keys = jax.vmap(jax.random.fold_in)(keys[node_graph], local)
        return jax.vmap(lambda k: jax.random.normal(k, (3,), thermal.dtype))(atom_keys)

    def step(state: State, dt: Array) -> State:
        decay = jnp.exp(-friction * dt)
        spread = jnp.sqrt(thermal * (1 - decay**2))
        keys = jax.vmap(jax.random.split)(state.key)  # (G, 2, 2)
        momenta = state.momenta + 0.5 * dt * state.forces
        positions = state.positions + 0.5 * dt * momenta * inverse_mass
        momenta = decay * momenta + spread * noise(keys[:, 1])
        positions = positions + 0.5 * dt * momenta * inverse_mass
        state = evaluate(state._replace(key=keys[:, 0]), positions, momenta)
        return _kick(state, systems, dt)

    return step


def integrator(
    ensemble: str, evaluate: Callable, systems: Systems, friction: float
) -> Callable[[State, Array], State]:
    """The step ``step(state, dt)`` of ``ensemble`` (one of :data:`ENSEMBLES`)."""
    if ensemble == "nve":
        return velocity_verlet(evaluate, systems)
    if ensemble == "nvt_langevin":
        return langevin(evaluate, systems, friction)
    raise ValueError(f"many systems run in one of {ENSEMBLES}, got {ensemble!r}")
