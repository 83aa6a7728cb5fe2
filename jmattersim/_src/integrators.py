"""Integrators of a union of systems (:mod:`jmattersim._src.union`), each system with
its own temperature, pressure, thermostat and random stream.

Units: Å, eV, amu; time in Å sqrt(amu/eV) (``ase.units.fs`` of it is one fs), so
momenta are ASE's; pressures eV/Å³ inside. ``step(state, dt) -> state`` advances
every running system by one time step; a system that has stopped does not move.
``step(state, 0.0)`` only evaluates the forces at the current positions (the first
step of a chunk).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .arrays import Array
from .union import RUNNING, State, Systems

ENSEMBLES = ("nve", "nvt_langevin", "nvt_nose_hoover", "npt_crescale")
"""The ensembles many systems run in one call."""

ONE_SYSTEM_ENSEMBLES = ("nve", "nvt_nose_hoover", "nvt_langevin", "npt_nose_hoover")
"""The ensembles one structure runs on jax-md's integrators, by their names there."""

CHAIN_LENGTH, CHAIN_STEPS = 5, 2
SUZUKI_YOSHIDA = (0.828981543588751, -0.657963087177502, 0.828981543588751)
"""jax-md's ``nvt_nose_hoover`` defaults: a chain of 5, 2 substeps of 3 Suzuki-Yoshida
steps per half step."""


class Coupling(NamedTuple):
    """How the systems couple to their baths (static, hashable).

    Attributes:
        friction: Langevin friction, inverse time units.
        tau_t: Nose-Hoover chain period, time units.
        tau_p: barostat relaxation time, time units.
    """

    friction: float = 0.0
    tau_t: float = 1.0
    tau_p: float = 1.0


class Chain(NamedTuple):
    """Each system's Nose-Hoover chain (a pytree): ``position`` and ``momentum``
    (G, 5), in jax-md's units (masses ``kT tau²``, the first times the degrees of
    freedom)."""

    position: Array
    momentum: Array


def kinetic_energy(momenta: Array, systems: Systems) -> Array:
    """(G,) eV, each system's kinetic energy."""
    return jax.ops.segment_sum(
        jnp.sum(momenta**2, axis=-1) / (2 * systems.mass),
        systems.node_graph,
        num_segments=systems.n_node.shape[0],
    )


def starting_thermostat(ensemble: str, n_graph: int, dtype) -> Chain | None:
    """The bath variables a run starts with: chains at rest for Nose-Hoover."""
    if ensemble != "nvt_nose_hoover":
        return None
    zeros = jnp.zeros((n_graph, CHAIN_LENGTH), dtype)
    return Chain(zeros, zeros)


def bath_energy(ensemble: str, state: State, systems: Systems, coupling: Coupling) -> Array:
    """(G,) eV that the ensemble's invariant adds to the potential and kinetic
    energies: a Nose-Hoover chain's energy (jax-md's ``nvt_nose_hoover_invariant``),
    p V under a barostat, 0 otherwise."""
    if ensemble == "nvt_nose_hoover":
        masses = _chain_masses(systems, coupling.tau_t)
        chain = state.thermostat
        weights = jnp.ones_like(masses).at[:, 0].set(3.0 * systems.n_node)
        return jnp.sum(
            chain.momentum**2 / (2 * masses) + weights * systems.kT[:, None] * chain.position,
            axis=-1,
        )
    if ensemble == "npt_crescale":
        return systems.pressure * jnp.abs(jnp.linalg.det(state.lattice))
    return jnp.zeros_like(state.energy)


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


def _chain_masses(systems: Systems, tau: float) -> Array:
    """(G, 5) each chain's masses, ``kT tau²``, the first times 3 N (jax-md's)."""
    masses = jnp.broadcast_to((systems.kT * tau**2)[:, None], (systems.kT.shape[0], CHAIN_LENGTH))
    return masses.at[:, 0].multiply(3.0 * systems.n_node)


def _chain_half_step(
    chain: Chain, ke: Array, kT: Array, dof: Array, masses: Array, dt: Array
) -> tuple[Chain, Array]:
    """Half a step of each system's chain (jax-md's ``nose_hoover_chain`` half step,
    Suzuki-Yoshida order 3): the new chains and (G,) the factor on the momenta."""
    xi, p = chain.position, [chain.momentum[:, m] for m in range(CHAIN_LENGTH)]
    q = [masses[:, m] for m in range(CHAIN_LENGTH)]
    last = CHAIN_LENGTH - 1
    factor = jnp.ones_like(ke)
    for i in range(CHAIN_STEPS * len(SUZUKI_YOSHIDA)):
        delta = dt / CHAIN_STEPS * SUZUKI_YOSHIDA[i % len(SUZUKI_YOSHIDA)]
        d2, d4, d8 = delta / 2, delta / 4, delta / 8
        p[last] = p[last] + d4 * (p[last - 1] ** 2 / q[last - 1] - kT)
        for m in range(last - 1, 0, -1):
            scale = jnp.exp(-d8 * p[m + 1] / q[m + 1])
            p[m] = scale * (scale * p[m] + d4 * (p[m - 1] ** 2 / q[m - 1] - kT))
        scale = jnp.exp(-d8 * p[1] / q[1])
        p[0] = scale * (scale * p[0] + d4 * (2 * ke - dof * kT))
        scale = jnp.exp(-d2 * p[0] / q[0])
        ke, factor = ke * scale**2, factor * scale
        xi = xi + d2 * jnp.stack(p, axis=-1) / masses
        force = 2 * ke - dof * kT
        for m in range(last):
            scale = jnp.exp(-d8 * p[m + 1] / q[m + 1])
            p[m] = scale * (scale * p[m] + d4 * force)
            force = p[m] ** 2 / q[m] - kT
        p[last] = p[last] + d4 * force
    return Chain(xi, jnp.stack(p, axis=-1)), factor


def nose_hoover(
    evaluate: Callable, systems: Systems, tau: float
) -> Callable[[State, Array], State]:
    """NVT: velocity Verlet between two half steps of each system's Nose-Hoover chain
    (as jax-md's ``nvt_nose_hoover``, period ``tau`` in time units)."""
    verlet = velocity_verlet(evaluate, systems)
    masses = _chain_masses(systems, tau)
    dof = 3.0 * systems.n_node
    node_graph = systems.node_graph

    def thermostat(state: State, dt: Array) -> State:
        running = state.status == RUNNING
        ke = kinetic_energy(state.momenta, systems)
        chain, factor = _chain_half_step(state.thermostat, ke, systems.kT, dof, masses, dt)
        factor = jnp.where(running, factor, 1.0)
        keep = running[:, None]
        chain = jax.tree.map(lambda a, b: jnp.where(keep, a, b), chain, state.thermostat)
        return state._replace(momenta=state.momenta * factor[node_graph][:, None], thermostat=chain)

    def step(state: State, dt: Array) -> State:
        return thermostat(verlet(thermostat(state, dt), dt), dt)

    return step


def stochastic_cell_rescaling(
    evaluate: Callable, systems: Systems, coupling: Coupling
) -> Callable[[State, Array], State]:
    """NPT: each system's cell follows its own pressure tensor by anisotropic
    stochastic cell rescaling (C-rescale: Bernetti & Bussi 2020, Del Tatto et al.
    2022), and its atoms the Langevin thermostat of :func:`langevin`; each system
    has its own target pressure and compressibility (``systems``).

    Each step first deforms every running system by ``expm(eps)``, with the
    symmetric strain (so the cell does not rotate)

        eps = compressibility / (3 tau_p) (P - (p0 - kT/V) I) dt
              + sqrt(2 kT compressibility dt / (3 V tau_p)) sym(W),

    where P is the pressure tensor (the kinetic part plus minus the stress) and W
    a 3x3 standard normal draw; positions and cell vectors move with the strain,
    momenta against it. The volume then relaxes to the target pressure on the time
    ``tau_p`` (when ``compressibility`` is right), and a cell under shear changes
    shape."""
    thermalized = langevin(evaluate, systems, coupling.friction)
    node_graph = systems.node_graph
    mobility = systems.compressibility / (3 * coupling.tau_p)  # (G,)

    def step(state: State, dt: Array) -> State:
        running = state.status == RUNNING
        keys = jax.vmap(jax.random.split)(state.key)  # (G, 2, 2)
        volume = jnp.abs(jnp.linalg.det(state.lattice))
        kinetic = jax.ops.segment_sum(
            state.momenta[:, :, None] * state.momenta[:, None, :] / systems.mass[:, None, None],
            node_graph,
            num_segments=volume.shape[0],
        )
        pressure = kinetic / volume[:, None, None] - state.stress
        target = systems.pressure - systems.kT / volume
        eye = jnp.eye(3, dtype=volume.dtype)
        draws = jax.vmap(lambda k: jax.random.normal(k, (3, 3), volume.dtype))(keys[:, 1])
        spread = jnp.sqrt(2 * systems.kT * mobility * jnp.abs(dt) / volume)
        drift = (mobility * dt)[:, None, None] * (pressure - target[:, None, None] * eye)
        strain = drift + spread[:, None, None] * 0.5 * (draws + jnp.swapaxes(draws, 1, 2))
        strain = jnp.where(running[:, None, None], strain, 0.0)
        deform = jax.vmap(jax.scipy.linalg.expm)(strain)  # symmetric
        state = state._replace(
            positions=jnp.einsum("ni,nij->nj", state.positions, deform[node_graph]),
            momenta=jnp.einsum("ni,nij->nj", state.momenta, jnp.linalg.inv(deform)[node_graph]),
            lattice=state.lattice @ deform,
            key=keys[:, 0],
        )
        return thermalized(state, dt)

    return step


def integrator(
    ensemble: str, evaluate: Callable, systems: Systems, coupling: Coupling
) -> Callable[[State, Array], State]:
    """The step ``step(state, dt)`` of ``ensemble`` (one of :data:`ENSEMBLES`)."""
    if ensemble == "nve":
        return velocity_verlet(evaluate, systems)
    if ensemble == "nvt_langevin":
        return langevin(evaluate, systems, coupling.friction)
    if ensemble == "nvt_nose_hoover":
        return nose_hoover(evaluate, systems, coupling.tau_t)
    if ensemble == "npt_crescale":
        return stochastic_cell_rescaling(evaluate, systems, coupling)
    raise ValueError(f"many systems run in one of {ENSEMBLES}, got {ensemble!r}")
