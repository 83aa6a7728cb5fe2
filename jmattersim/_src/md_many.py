"""Molecular dynamics of many systems in one compiled step: the host driver.

The systems form one disjoint union (:mod:`jmattersim._src.union`), advanced by the
integrators of :mod:`jmattersim._src.integrators` in ``lax.scan`` chunks. A chunk in
which a capacity overflowed is redone after a re-allocation (1.5x each time); a
system that fails stops alone, with its reason in its log.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress

from .arrays import default_float
from .checkpoint import Model
from .checks import check_atoms
from .config import M3GNetConfig
from .integrators import ENSEMBLES, integrator
from .predictions import EV_PER_A3_TO_GPA
from .progress import progress_bar
from .union import REASONS, RUNNING, Capacities, State, Systems, starting_state, union_fns

FRAME_FIELDS = ("positions", "momenta", "lattice", "forces", "energy", "stress", "status")
"""The fields of a state that a trajectory frame and a log entry read."""


def per_system(value: float | Sequence[float], count: int, name: str) -> np.ndarray:
    """``value`` as (count,) floats: a scalar for every system, or one each."""
    values = np.broadcast_to(np.asarray(value, float), (count,)) if np.ndim(value) == 0 else None
    if values is None:
        values = np.asarray(value, float)
        if values.shape != (count,):
            raise ValueError(f"{name}: one value, or one per system ({count}), got {values.shape}")
    return np.array(values)


def starting_momenta(atoms: Atoms, temperature: float, key: jax.Array) -> np.ndarray:
    """The atoms' own momenta if they have any (as ASE's MD), else Maxwell-Boltzmann at
    ``temperature`` K from ``key``, the centre of mass at rest."""
    own = atoms.get_momenta()
    if np.any(own):
        return own
    mass = atoms.get_masses()[:, None]
    p = np.sqrt(mass * units.kB * temperature) * np.asarray(
        jax.random.normal(key, (len(atoms), 3)), float
    )
    return p - mass * p.sum(0) / mass.sum() if len(atoms) > 1 else p


def md_many(
    model: Model,
    structures: Sequence[Atoms],
    steps: int,
    dt: float = 1.0,
    ensemble: str = "nve",
    temperature: float | Sequence[float] = 300.0,
    *,
    friction: float = 0.01,
    chunk: int = 100,
    log_every: int = 10,
    trajectory: str | Sequence[str] | None = None,
    progress: bool = True,
    seed: int = 0,
    dr_threshold: float = 0.5,
    capacity_multiplier: float = 1.25,
    min_distance: float = 0.5,
    dtype=None,
) -> tuple[list[Atoms], list[dict[str, np.ndarray]]]:
    """[`md`][jmattersim.md] of a list of structures (see there), in one compiled step.

    Returns:
        ``(finals, logs)``, one per structure, as ``md``'s ``(final, log)``; each log
        also holds ``status`` ("finished" or "failed"), ``reason`` (why it failed, or
        None) and ``steps`` (the steps it completed).
    """
    if ensemble not in ENSEMBLES:
        raise ValueError(f"many systems run in one of {ENSEMBLES}, got {ensemble!r}")
    if chunk % log_every:
        raise ValueError("chunk must be a multiple of log_every")
    structures = list(structures)
    count = len(structures)
    for i, atoms in enumerate(structures):
        check_atoms(atoms, model, i)
        if not all(atoms.pbc):
            raise ValueError(
                f"structure {i} ({atoms.get_chemical_formula()}): md needs a periodic cell"
            )
    dtype = np.dtype(dtype or default_float())
    temperatures = per_system(temperature, count, "temperature")
    config = model.config
    keys = jax.random.split(jax.random.PRNGKey(seed), 2 * count).reshape(count, 2, -1)
    n_node = np.array([len(a) for a in structures])
    systems = Systems(
        jax.nn.one_hot(
            np.concatenate([a.numbers for a in structures]), config.num_species, dtype=dtype
        ),
        jnp.asarray(np.concatenate([a.get_masses() for a in structures]), dtype),
        jnp.asarray(n_node),
        jnp.asarray(np.repeat(np.arange(count), n_node)),
        jnp.asarray(units.kB * temperatures, dtype),
    )
    positions = jnp.asarray(np.concatenate([a.positions for a in structures]), dtype)
    momenta = jnp.asarray(
        np.concatenate(
            [
                starting_momenta(a, t, k[0])
                for a, t, k in zip(structures, temperatures, keys, strict=True)
            ]
        ),
        dtype,
    )
    lattice = jnp.asarray(np.stack([a.cell.array for a in structures]), dtype)
    capacities = Capacities.measured(structures, config, capacity_multiplier, dr_threshold)
    params = model.astype(dtype).params

    settings = dict(
        config=config,
        ensemble=ensemble,
        dt=dt * units.fs,
        friction=friction / units.fs,
        skin=dr_threshold,
        min_distance=min_distance,
        log_every=log_every,
        logs=chunk // log_every,
    )

    def fresh(state, capacities: Capacities):
        """``state`` with an empty list of the capacities (rebuilt at the next chunk)."""
        empty = starting_state(
            state.positions, state.momenta, state.lattice, state.key, capacities.list
        )
        return state._replace(nbrs=empty.nbrs, overflow=empty.overflow)

    state = starting_state(positions, momenta, lattice, keys[:, 1], capacities.list)
    reallocations = 0
    table = []
    paths = trajectory_paths(trajectory, count)
    write_frames(paths, structures, state, append=False)
    n_chunks = math.ceil(steps / chunk)
    bar = progress_bar(progress, total=n_chunks * chunk, unit="step")
    for _ in range(n_chunks):
        while True:
            new, start, obs = run_chunk(params, systems, state, capacities=capacities, **settings)
            if not bool(new.overflow):
                break
            capacities, reallocations = capacities.scaled(1.5), reallocations + 1
            state = fresh(state, capacities)
        if not table:  # the starting state, evaluated
            table.append(np.asarray(observe(start, systems))[None])
            write_frames(paths, structures, start, append=False)
        state = new
        table.append(np.asarray(obs))
        write_frames(paths, structures, state, append=True)
        bar.update(chunk)
    bar.close()
    return finals(structures, state), logs(
        np.concatenate(table), structures, state, dt, log_every, reallocations
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "config",
        "capacities",
        "ensemble",
        "dt",
        "friction",
        "skin",
        "min_distance",
        "log_every",
        "logs",
    ),
)
def run_chunk(
    params: Any,
    systems: Systems,
    state: State,
    *,
    config: M3GNetConfig,
    capacities: Capacities,
    ensemble: str,
    dt: float,
    friction: float,
    skin: float,
    min_distance: float,
    log_every: int,
    logs: int,
) -> tuple[State, State, jax.Array]:
    """``logs * log_every`` steps of the union (one compiled program per capacity).

    The chunk starts with a step of length 0, an evaluation at the current positions
    (the forces, and the list when it is new), so one program serves the first
    chunk and a redo with new capacities, and the model is compiled once. Returns
    the final state, the evaluated starting state (its frame fields) and the log
    table (logs, 5, G) of :func:`observe`.
    """
    evaluate = union_fns(config, params, systems, capacities, skin, min_distance)
    step = integrator(ensemble, evaluate, systems, friction)

    def logged(state, entry):
        count, dt_ = entry
        state = jax.lax.fori_loop(0, count, lambda _, s: step(s, dt_), state)
        frame = tuple(getattr(state, f) for f in FRAME_FIELDS)
        return state, (frame, observe(state, systems))

    # one step of length 0 (the forces at the start), then ``logs`` of ``log_every``
    counts = jnp.array([1] + [log_every] * logs)
    dts = jnp.array([0.0] + [dt] * logs, state.positions.dtype)
    end, (frames, table) = jax.lax.scan(logged, state, (counts, dts))
    start = end._replace(**{f: x[0] for f, x in zip(FRAME_FIELDS, frames, strict=True)})
    return end, start, table[1:]


def observe(state, systems: Systems) -> jax.Array:
    """(5, G): potential and kinetic energy eV, volume Å³, pressure eV/Å³, status."""
    ke = jax.ops.segment_sum(
        jnp.sum(state.momenta**2, axis=-1) / (2 * systems.mass),
        systems.node_graph,
        num_segments=systems.n_node.shape[0],
    )
    volume = jnp.abs(jnp.linalg.det(state.lattice))
    # jax-md's quantity.pressure, (2 KE - dU/d(isotropic strain)) / (3 V)
    pressure = (2 * ke / volume - jnp.trace(state.stress, axis1=1, axis2=2)) / 3
    return jnp.stack([state.energy, ke, volume, pressure, state.status.astype(ke.dtype)])


def trajectory_paths(trajectory: str | Sequence[str] | None, count: int) -> list[str]:
    """One file per system: a pattern with ``{index}``, or a list of ``count`` paths."""
    if trajectory is None:
        return []
    if isinstance(trajectory, str):
        if "{index" not in trajectory:
            raise ValueError("trajectory of many systems: a pattern with {index}, or one path each")
        return [trajectory.format(index=i) for i in range(count)]
    paths = [str(p) for p in trajectory]
    if len(paths) != count:
        raise ValueError(f"trajectory: one path per system ({count}), got {len(paths)}")
    return paths


def write_frames(paths: Sequence[str], structures: Sequence[Atoms], state, append: bool) -> None:
    """A frame of each system appended to its trajectory file."""
    if not paths:
        return
    for path, frame in zip(paths, finals(structures, state), strict=True):
        ase.io.write(path, frame, append=append)


def finals(structures: Sequence[Atoms], state) -> list[Atoms]:
    """ASE structures of a state: positions, cell, momenta, and a single-point
    calculator (energy eV, forces eV/Å, stress eV/Å³)."""
    positions, momenta, forces = (
        np.asarray(x, float) for x in (state.positions, state.momenta, state.forces)
    )
    energy, stress, lattice = (
        np.asarray(x, float) for x in (state.energy, state.stress, state.lattice)
    )
    out, start = [], 0
    for g, atoms in enumerate(structures):
        part = slice(start, start + len(atoms))
        start += len(atoms)
        frame = Atoms(atoms.numbers, positions=positions[part], cell=lattice[g], pbc=atoms.pbc)
        frame.set_momenta(momenta[part])
        frame.calc = SinglePointCalculator(
            frame,
            energy=float(energy[g]),
            forces=forces[part],
            stress=full_3x3_to_voigt_6_stress(stress[g]),
        )
        out.append(frame)
    return out


def logs(table, structures, state, dt, log_every, reallocations) -> list[dict]:
    """Each system's log, as [`md`][jmattersim.md]'s, with its status."""
    status, steps = np.asarray(state.status), np.asarray(state.steps)
    out = []
    for g, atoms in enumerate(structures):
        ke = table[:, 1, g]
        failed = status[g] != RUNNING
        out.append(
            {
                "time_fs": np.arange(len(table)) * log_every * dt,
                "potential_energy": table[:, 0, g],
                "kinetic_energy": ke,
                "temperature": 2 * ke / (3 * len(atoms) * units.kB),
                "conserved": table[:, 0, g] + ke,
                "volume": table[:, 2, g],
                "pressure": table[:, 3, g] * EV_PER_A3_TO_GPA,
                "reallocations": np.asarray(reallocations),
                "status": "failed" if failed else "finished",
                "reason": REASONS.get(int(status[g])),
                "steps": int(steps[g]),
            }
        )
    return out
