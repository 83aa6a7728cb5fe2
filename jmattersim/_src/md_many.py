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

from . import programs
from .arrays import default_float
from .capacity import Capacity
from .checkpoint import Model
from .checks import check_atoms
from .config import M3GNetConfig
from .integrators import (
    ENSEMBLES,
    Coupling,
    bath_energy,
    integrator,
    kinetic_energy,
    starting_thermostat,
)
from .md_store import RunStore, keep_frames, run_record
from .memory import program_bytes
from .predictions import EV_PER_A3_TO_GPA
from .progress import progress_bar
from .union import (
    PADDING,
    REASONS,
    RUNNING,
    Capacities,
    State,
    Systems,
    starting_state,
    union_fns,
    with_empty_list,
)

FRAME_FIELDS = (
    "positions",
    "momenta",
    "lattice",
    "forces",
    "energy",
    "stress",
    "status",
    "thermostat",
)
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
    pressure: float | Sequence[float] = 0.0,
    *,
    tau_t: float = 100.0,
    tau_p: float = 1000.0,
    compressibility: float | Sequence[float] = 0.01,
    friction: float = 0.01,
    chunk: int = 100,
    log_every: int = 10,
    trajectory: str | Sequence[str] | None = None,
    checkpoint: str | None = None,
    batch_atoms: int | None = None,
    memory_gb: float | None = None,
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
    pressures = per_system(pressure, count, "pressure") / EV_PER_A3_TO_GPA
    compressibilities = per_system(compressibility, count, "compressibility") * EV_PER_A3_TO_GPA
    config = model.config
    species = config.num_species
    keys = jax.random.split(jax.random.PRNGKey(seed), 2 * count).reshape(count, 2, -1)
    per_structure = [
        (atoms, t, p, c, starting_momenta(atoms, t, k[0]), k[1])
        for atoms, t, p, c, k in zip(
            structures, temperatures, pressures, compressibilities, keys, strict=True
        )
    ]
    sizes = [len(a) for a in structures]

    def layout(batch_atoms: int | None):
        """The batches, their common slots (None: one union, unpadded) and the
        capacities that hold every batch."""
        groups = batches(sizes, batch_atoms)
        slots = None
        if len(groups) > 1:  # every batch padded to the same slots: one compiled program
            slots = (
                max(sum(sizes[i] for i in g) for g in groups) + 1,
                max(len(g) for g in groups) + 1,
            )
        capacities = functools.reduce(
            Capacities.covering,
            (
                Capacities.measured(
                    [structures[i] for i in g], config, capacity_multiplier, dr_threshold
                )
                for g in groups
            ),
        )
        return groups, slots, capacities

    groups, slots, capacities = layout(batch_atoms)
    params = model.astype(dtype).params
    settings = dict(
        config=config,
        ensemble=ensemble,
        dt=dt * units.fs,
        coupling=Coupling(
            friction / units.fs,
            tau_t * units.fs,
            tau_p * units.fs,
        ),
        skin=dr_threshold,
        min_distance=min_distance,
        log_every=log_every,
        logs=chunk // log_every,
    )
    if memory_gb is not None:
        while True:
            first = pack([per_structure[i] for i in groups[0]], slots, ensemble, dtype, species)
            program = compiled_chunk(params, *first, capacities, settings)
            need, held = program_bytes(program), (slots or (sum(sizes) + 1,))[0] - 1
            smallest = max(sizes)
            if need <= memory_gb * 1e9 or held <= smallest:
                break
            shrunk = int(0.9 * held * memory_gb * 1e9 / need)  # memory ~ atoms
            groups, slots, capacities = layout(max(smallest, shrunk))
    if checkpoint is not None and len(groups) > 1:
        raise ValueError("checkpoint: a run in one batch (a larger batch_atoms, or none)")
    store = None
    if checkpoint is not None:
        record = run_record(
            structures,
            **{k: v for k, v in settings.items() if k != "config"},
            temperatures=temperatures,
            pressures=pressures,
            compressibilities=compressibilities,
            seed=seed,
            dtype=dtype.name,
            model=model.source.get("sha256") or config.to_dict(),
        )
        store = RunStore(checkpoint, record)
    paths = trajectory_paths(trajectory, count)
    n_chunks = math.ceil(steps / chunk)
    bar = progress_bar(progress, total=n_chunks * chunk * count, unit="system-step")
    out_finals, out_logs = [], []
    for b, group in enumerate(groups):
        members = [structures[i] for i in group]
        systems, state = pack([per_structure[i] for i in group], slots, ensemble, dtype, species)
        state, table, capacities, reallocations = run_union(
            params,
            systems,
            state,
            members,
            capacities,
            settings,
            n_chunks,
            [paths[i] for i in group] if paths else [],
            store,
            functools.partial(bar.update, chunk * len(group)),
        )
        out_finals += finals(members, state)
        out_logs += [
            {**log, "batch": b} for log in logs(table, members, state, dt, log_every, reallocations)
        ]
    bar.close()
    return out_finals, out_logs


def compiled_chunk(params, systems, state, capacities, settings):
    """:func:`run_chunk` compiled ahead for this union (its memory measurable), once
    per process and stored for the next (:mod:`jmattersim._src.programs`)."""
    state = with_empty_list(state, capacities.list)
    static = {"capacities": capacities, **settings}
    return programs.compiled(
        "md_many.run_chunk",
        functools.partial(run_chunk, **static),
        (params, systems, state),
        static,
    )


def batches(sizes: Sequence[int], batch_atoms: int | None) -> list[list[int]]:
    """The structures (of ``sizes`` atoms) in consecutive groups of at most
    ``batch_atoms`` atoms (a larger structure alone); one group if None."""
    if batch_atoms is None or sum(sizes) <= batch_atoms:
        return [list(range(len(sizes)))]
    groups, current, atoms = [], [], 0
    for i, n in enumerate(sizes):
        if current and atoms + n > batch_atoms:
            groups.append(current)
            current, atoms = [], 0
        current.append(i)
        atoms += n
    return groups + [current]


def pack(rows, slots, ensemble: str, dtype, species: int) -> tuple[Systems, State]:
    """The union of the structures of ``rows`` (atoms, temperature K, pressure and
    compressibility in eV and Å, momenta, key), in ``slots`` (atoms, systems) when
    given: the atoms and systems left over are padding, which never runs."""
    members, temperatures, pressures, compressibilities, momenta, keys = zip(*rows, strict=True)
    count = len(members)
    n_node = [len(a) for a in members]
    pad_atoms = 0 if slots is None else slots[0] - sum(n_node)
    pad_systems = 0 if slots is None else slots[1] - count
    n_node = np.array(n_node + [0] * (pad_systems - 1) + [pad_atoms] * (pad_systems > 0))
    pad = lambda rows, filler, n: list(rows) + [filler] * n  # noqa: E731
    numbers = np.concatenate([a.numbers for a in members] + [np.zeros(pad_atoms, int)])
    masses = np.concatenate([a.get_masses() for a in members] + [np.ones(pad_atoms)])
    as_array = lambda rows, filler, kind=dtype: jnp.asarray(  # noqa: E731
        np.array(pad(rows, filler, pad_systems)), kind
    )
    systems = Systems(
        jax.nn.one_hot(numbers, species, dtype=dtype),
        jnp.asarray(masses, dtype),
        jnp.asarray(n_node),
        jnp.asarray(np.repeat(np.arange(len(n_node)), n_node)),
        as_array(units.kB * np.array(temperatures), 1.0),
        as_array(pressures, 0.0),
        as_array(compressibilities, 0.0),
    )
    zeros = np.zeros((pad_atoms, 3))
    state = starting_state(
        jnp.asarray(np.concatenate([a.positions for a in members] + [zeros]), dtype),
        jnp.asarray(np.concatenate([*momenta, zeros]), dtype),
        as_array([a.cell.array for a in members], np.eye(3) * 100.0),
        as_array(keys, np.zeros(2, np.uint32), jnp.uint32),
        Capacity(1, 1),
    )
    status = as_array(np.zeros(count, int), PADDING, jnp.int32)
    return systems, state._replace(
        status=status, thermostat=starting_thermostat(ensemble, len(n_node), dtype)
    )


def run_union(
    params,
    systems,
    state,
    members,
    capacities,
    settings,
    n_chunks,
    paths,
    store,
    advanced,
) -> tuple[State, np.ndarray, Capacities, int]:
    """The chunks of one union, from its checkpoint in ``store`` if it has one (a
    chunk that overflowed redone after a re-allocation): ``(state, log table,
    capacities, reallocations)``; frames to ``paths`` at the chunk edges."""
    ensemble, coupling = settings["ensemble"], settings["coupling"]

    state = with_empty_list(state, capacities.list)
    reallocations, table, done = 0, [], 0
    if store is not None and store.latest() is not None:
        row = jax.eval_shape(lambda s: observe(s, systems, ensemble, coupling), state)
        state, saved, capacities, reallocations = store.restore(
            lambda c: with_empty_list(state, c.list), row.shape
        )
        state = jax.tree.map(jnp.asarray, state)
        done, table = store.latest(), [saved]
        keep_frames(paths, 1 + done)
        for _ in range(done):
            advanced()
    else:
        write_frames(paths, members, state, append=False)
    for completed in range(done + 1, n_chunks + 1):
        while True:
            program = compiled_chunk(params, systems, state, capacities, settings)
            new, start, obs = program(params, systems, state)
            if not bool(new.overflow):
                break
            capacities, reallocations = capacities.scaled(1.5), reallocations + 1
            state = with_empty_list(state, capacities.list)
        if not table:  # the starting state, evaluated
            table.append(np.asarray(observe(start, systems, ensemble, coupling))[None])
            write_frames(paths, members, start, append=False)
        state = new
        table.append(np.asarray(obs))
        write_frames(paths, members, state, append=True)
        if store is not None:
            store.save(completed, state, np.concatenate(table), capacities, reallocations)
        advanced()
    return state, np.concatenate(table), capacities, reallocations


@functools.partial(
    jax.jit,
    static_argnames=(
        "config",
        "capacities",
        "ensemble",
        "dt",
        "coupling",
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
    coupling: Coupling,
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
    table (logs, 15, G) of :func:`observe`.
    """
    evaluate = union_fns(config, params, systems, capacities, skin, min_distance)
    step = integrator(ensemble, evaluate, systems, coupling)

    def logged(state, entry):
        count, dt_ = entry
        state = jax.lax.fori_loop(0, count, lambda _, s: step(s, dt_), state)
        frame = tuple(getattr(state, f) for f in FRAME_FIELDS)
        return state, (frame, observe(state, systems, ensemble, coupling))

    # one step of length 0 (the forces at the start), then ``logs`` of ``log_every``
    counts = jnp.array([1] + [log_every] * logs)
    dts = jnp.array([0.0] + [dt] * logs, state.positions.dtype)
    end, (frames, table) = jax.lax.scan(logged, state, (counts, dts))
    first = jax.tree.map(lambda x: x[0], dict(zip(FRAME_FIELDS, frames, strict=True)))
    start = end._replace(**first)
    return end, start, table[1:]


def observe(state, systems: Systems, ensemble: str, coupling: Coupling) -> jax.Array:
    """(15, G): potential and kinetic energy eV, volume Å³, pressure eV/Å³, status,
    the energy the ensemble's invariant adds (:func:`bath_energy`) eV, and the
    stress (9 rows, row-major) eV/Å³."""
    ke = kinetic_energy(state.momenta, systems)
    volume = jnp.abs(jnp.linalg.det(state.lattice))
    # jax-md's quantity.pressure, (2 KE - dU/d(isotropic strain)) / (3 V)
    pressure = (2 * ke / volume - jnp.trace(state.stress, axis1=1, axis2=2)) / 3
    status = state.status.astype(ke.dtype)
    bath = bath_energy(ensemble, state, systems, coupling)
    stress = state.stress.reshape(-1, 9).T
    return jnp.concatenate([jnp.stack([state.energy, ke, volume, pressure, status, bath]), stress])


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
                "conserved": table[:, 0, g] + ke + table[:, 5, g],
                "volume": table[:, 2, g],
                "pressure": table[:, 3, g] * EV_PER_A3_TO_GPA,
                "stress": full_3x3_to_voigt_6_stress(table[:, 6:, g].reshape(-1, 3, 3))
                * EV_PER_A3_TO_GPA,
                "reallocations": np.asarray(reallocations),
                "status": "failed" if failed else "finished",
                "reason": REASONS.get(int(status[g])),
                "steps": int(steps[g]),
            }
        )
    return out
