"""Relaxation of many periodic structures in one compiled loop.

ASE's FIRE, step for step, on the generalised coordinates of ASE's
``FrechetCellFilter`` (the positions in the undeformed cell and ``n_atoms`` times
the matrix logarithm of the deformation gradient), with the enthalpy E + pV of a
per-structure pressure. The structures form one disjoint union
(:mod:`jmattersim._src.union`): one skin list, kept until it may miss a pair (the
cells' change counted), energies, forces and stresses from one reverse pass, and a
structure that fails (atoms collide, a non-finite energy, the cell collapses)
stopped alone. ``lax.while_loop`` chunks end early once every structure has
stopped; a chunk in which a capacity overflowed is redone after a re-allocation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress
from ase.units import GPa

from . import programs
from .arrays import Array, default_float
from .capacity import Capacity, model_capacity
from .checkpoint import Model
from .config import M3GNetConfig
from .memory import program_bytes
from .neighbors import capacity_for
from .progress import progress_bar
from .union import (
    PADDING,
    REASONS,
    RUNNING,
    Capacities,
    State,
    Systems,
    union_fns,
    with_empty_list,
)

CONVERGED, NOT_CONVERGED = 10, 11
"""Status codes of a relaxation that stopped without failing."""


class Fire(NamedTuple):
    """ASE's FIRE state of every structure, with its cell coordinates (a pytree).

    Attributes:
        velocity: (N, 3) of the atoms' generalised coordinates.
        cell_velocity: (G, 3, 3) of the cell's.
        log_deformation: (G, 3, 3) the cell's coordinates, ``n_atoms * logm(F)``
            with ``cell = reference_cell @ F.T``.
        dt: (G,) FIRE's time step.
        a: (G,) FIRE's mixing parameter.
        downhill: (G,) int32, steps since the last uphill one (FIRE's ``Nsteps``).
        started: (G,) bool, a step has been taken (ASE's ``vel is not None``).
    """

    velocity: Array
    cell_velocity: Array
    log_deformation: Array
    dt: Array
    a: Array
    downhill: Array
    started: Array


class Targets(NamedTuple):
    """What each structure relaxes towards (a pytree of (G, ...) arrays).

    Attributes:
        reference_cell: (G, 3, 3) Å, the starting cells (the filter's ``orig_cell``).
        pressure: (G,) eV/Å³, the external pressure.
        cell_factor: (G,) the filter's ``exp_cell_factor`` (the atom count).
        max_edges: (G,) int32, edges within the cutoff past which the cell has
            collapsed.
    """

    reference_cell: Array
    pressure: Array
    cell_factor: Array
    max_edges: Array


class FireSettings(NamedTuple):
    """The static settings of a relaxation: the criteria and ASE FIRE's parameters."""

    fmax: float = 0.02
    smax: float | None = None
    max_steps: int = 1000
    relax_cell: bool = True
    dt: float = 0.1
    maxstep: float = 0.2
    dtmax: float = 1.0
    Nmin: int = 5  # noqa: N815 (ASE's name)
    finc: float = 1.1
    fdec: float = 0.5
    astart: float = 0.1
    fa: float = 0.99
    a: float = 0.1


FIRE_OPTIONS = frozenset(FireSettings._fields[4:])
"""The keyword arguments of ASE's ``FIRE`` that the compiled relaxation takes."""

_expm = jax.vmap(jax.scipy.linalg.expm)


def _per_structure_dot(systems: Systems, atoms_a, cell_a, atoms_b, cell_b) -> Array:
    """(G,) the dot products of generalised vectors, structure by structure."""
    atoms = jax.ops.segment_sum(
        jnp.sum(atoms_a * atoms_b, axis=-1),
        systems.node_graph,
        num_segments=systems.n_node.shape[0],
    )
    return atoms + jnp.sum(cell_a * cell_b, axis=(1, 2))


def generalized_forces(
    state: State, fire: Fire, targets: Targets, systems: Systems, relax_cell: bool
) -> tuple[Array, Array]:
    """The filter's forces: on the atoms (N, 3) eV/Å, ``forces @ F``, and on the
    cell coordinates (G, 3, 3), minus the enthalpy's derivative by them (as
    ``FrechetCellFilter.get_forces``)."""
    if not relax_cell:
        return state.forces, jnp.zeros_like(state.lattice)
    c = targets.cell_factor[:, None, None]
    log_f = fire.log_deformation / c
    deformation, expm_vjp = jax.vjp(_expm, log_f)
    atoms = jnp.einsum("ni,nij->nj", state.forces, deformation[systems.node_graph])
    volume = jnp.abs(jnp.linalg.det(state.lattice))[:, None, None]
    unit = jnp.eye(3, dtype=state.lattice.dtype)
    virial = -volume * (state.stress + targets.pressure[:, None, None] * unit)
    # minus the enthalpy's derivative by the deformation gradient, then by its log
    (cell,) = expm_vjp(virial @ jnp.linalg.inv(jnp.swapaxes(deformation, 1, 2)))
    return atoms, cell / c


def converged(
    state: State, forces: tuple[Array, Array], targets: Targets, systems: Systems, s: FireSettings
) -> Array:
    """(G,) ASE's criterion on the filter's forces (every row below ``fmax``), and
    the stress's deviation from the target below ``smax`` GPa when given."""
    atoms, cell = forces
    largest = jnp.maximum(
        jax.ops.segment_max(
            jnp.sum(atoms**2, axis=-1), systems.node_graph, num_segments=systems.n_node.shape[0]
        ),
        jnp.max(jnp.sum(cell**2, axis=-1), axis=-1),
    )
    done = largest < s.fmax**2
    if s.smax is not None:
        unit = jnp.eye(3, dtype=state.stress.dtype)
        deviation = (state.stress + targets.pressure[:, None, None] * unit) / GPa
        done = done & (jnp.max(jnp.abs(deviation), axis=(1, 2)) < s.smax)
    return done


def fire_step(
    state: State,
    fire: Fire,
    forces: tuple[Array, Array],
    targets: Targets,
    systems: Systems,
    s: FireSettings,
) -> tuple[Fire, Array, Array]:
    """ASE's ``FIRE.step`` of every structure: the new FIRE state, positions (N, 3)
    Å and cells (G, 3, 3) Å."""
    f_atoms, f_cell = forces
    node_graph = systems.node_graph
    dot = functools.partial(_per_structure_dot, systems)
    vf = dot(f_atoms, f_cell, fire.velocity, fire.cell_velocity)
    f2 = dot(f_atoms, f_cell, f_atoms, f_cell)
    v2 = dot(fire.velocity, fire.cell_velocity, fire.velocity, fire.cell_velocity)
    down = fire.started & (vf > 0)
    up = fire.started & ~(vf > 0)
    a = fire.a
    mix = jnp.where(down, a * jnp.sqrt(v2) / jnp.sqrt(jnp.where(f2 > 0, f2, 1.0)), 0.0)
    keep = jnp.where(down, 1 - a, jnp.where(up, 0.0, 1.0))
    grow = down & (fire.downhill > s.Nmin)
    dt = jnp.where(grow, jnp.minimum(fire.dt * s.finc, s.dtmax), fire.dt)
    dt = jnp.where(up, fire.dt * s.fdec, dt)
    a = jnp.where(grow, a * s.fa, jnp.where(up, s.astart, a))
    downhill = jnp.where(down, fire.downhill + 1, jnp.where(up, 0, fire.downhill))
    velocity = (keep[node_graph, None] * fire.velocity + mix[node_graph, None] * f_atoms) + dt[
        node_graph, None
    ] * f_atoms
    cell_velocity = (
        keep[:, None, None] * fire.cell_velocity
        + mix[:, None, None] * f_cell
        + dt[:, None, None] * f_cell
    )
    norm = jnp.sqrt(dot(velocity, cell_velocity, velocity, cell_velocity)) * dt
    scale = dt * jnp.where(norm > s.maxstep, s.maxstep / jnp.where(norm > 0, norm, 1.0), 1.0)
    step_atoms = scale[node_graph, None] * velocity
    if not s.relax_cell:
        positions = state.positions + step_atoms
        cells = state.lattice
        log_deformation = fire.log_deformation
    else:
        c = targets.cell_factor[:, None, None]
        old = _expm(fire.log_deformation / c)
        undeformed = jnp.einsum(
            "ni,nij->nj", state.positions, jnp.linalg.inv(jnp.swapaxes(old, 1, 2))[node_graph]
        )
        log_deformation = fire.log_deformation + scale[:, None, None] * cell_velocity
        new = jnp.swapaxes(_expm(log_deformation / c), 1, 2)  # F.T
        positions = jnp.einsum("ni,nij->nj", undeformed + step_atoms, new[node_graph])
        cells = targets.reference_cell @ new
    started = jnp.ones_like(fire.started)
    fire = Fire(velocity, cell_velocity, log_deformation, dt, a, downhill, started)
    return fire, positions, cells


def _where_structure(moving: Array, node_graph: Array, new, old):
    """``new`` where the structure moves, else ``old`` (per-atom or per-structure)."""

    def pick(n, o):
        mask = moving[node_graph] if n.shape[:1] == node_graph.shape else moving
        return jnp.where(mask.reshape(mask.shape + (1,) * (n.ndim - 1)), n, o)

    return jax.tree.map(pick, new, old)


@functools.partial(
    jax.jit,
    static_argnames=("config", "capacities", "settings", "skin", "min_distance", "chunk"),
)
def relax_chunk(
    params: Any,
    systems: Systems,
    targets: Targets,
    state: State,
    fire: Fire,
    stop_below: Array,
    *,
    config: M3GNetConfig,
    capacities: Capacities,
    settings: FireSettings,
    skin: float,
    min_distance: float,
    chunk: int,
) -> tuple[State, Fire]:
    """Up to ``chunk`` FIRE steps of every running structure (one compiled program
    per capacity): each step checks convergence, then steps those still running.
    Ends early once fewer than ``stop_below`` (an int) run (a slot to refill), or a
    capacity overflowed."""
    evaluate = union_fns(config, params, systems, capacities, skin, min_distance, targets.max_edges)

    def body(carry):
        # pass 0 evaluates where the structures are (the list, new structures'
        # forces); every later pass checks convergence, then steps and evaluates
        state, fire, k = carry
        forces = generalized_forces(state, fire, targets, systems, settings.relax_cell)
        running = (state.status == RUNNING) & (k > 0)
        done = running & converged(state, forces, targets, systems, settings)
        spent = running & ~done & (state.steps >= settings.max_steps)
        status = jnp.where(done, CONVERGED, jnp.where(spent, NOT_CONVERGED, state.status))
        moving = (status == RUNNING) & (k > 0)
        stepped, positions, cells = fire_step(state, fire, forces, targets, systems, settings)
        fire = _where_structure(moving, systems.node_graph, stepped, fire)
        positions = jnp.where(moving[systems.node_graph][:, None], positions, state.positions)
        cells = jnp.where(moving[:, None, None], cells, state.lattice)
        state = state._replace(status=status.astype(jnp.int32), steps=state.steps + moving)
        state = evaluate(state, positions, state.momenta, cells)
        return state, fire, k + 1

    def going(carry):
        state, _, k = carry
        running = jnp.sum(state.status == RUNNING)
        going = (k <= chunk) & (running > 0) & (running >= stop_below) & ~state.overflow
        return (k == 0) | going

    state, fire, _ = jax.lax.while_loop(going, body, (state, fire, 0))
    return state, fire


@dataclasses.dataclass
class _Entry:
    """One structure's relaxation between chunks (host arrays)."""

    atoms: Atoms
    pressure_gpa: float
    needs: tuple[int, ...]  # list edges, triplets, pairs; model edges, triplets
    neighbors: int  # the most bonds of one atom within the three-body cutoff + skin
    max_edges: int
    positions: np.ndarray
    lattice: np.ndarray
    fire: tuple  # this structure's rows of every Fire field
    steps: int = 0
    status: int = RUNNING
    energy: float = np.nan
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None


SHRINK_ABOVE = 128
"""Atom slots above which a union whose queue is empty and whose slots are less than
half full moves to smaller slots (a compilation, worth it only for large ones)."""


def relax_many(
    model: Model,
    structures: Sequence[Atoms],
    settings: FireSettings,
    pressures_gpa: Sequence[float],
    max_edge_growth: float,
    dtype=None,
    progress: bool = False,
    *,
    batch_atoms: int | None = None,
    memory_gb: float | None = None,
    chunk: int = 50,
    skin: float = 0.5,
    capacity_multiplier: float = 1.5,
    min_distance: float = 0.5,
) -> list[Atoms]:
    """[`relax`][jmattersim.relax] of periodic structures with FIRE, compiled (see there).

    The structures run in a union of fixed slots, ``batch_atoms`` atoms (default:
    256 on a CPU, 4096 on an accelerator, or all of them if fewer): when one
    stops, the next waiting ones take its slots at the end of the chunk, so one
    compiled program serves the whole queue (in-flight batching). With
    ``memory_gb``, the slots shrink (in proportion, one compilation each) until
    the compiled chunk holds at most that many GB as XLA measures it.

    Returns relaxed copies with ``relax``'s single-point results and ``info``.
    """
    config = model.config
    dtype = np.dtype(dtype or default_float())
    entries = [
        _entry(a, p, config, skin, max_edge_growth, settings, dtype)
        for a, p in zip(structures, pressures_gpa, strict=True)
    ]
    if batch_atoms is None and memory_gb is not None:
        batch_atoms = sum(len(a) for a in structures)  # the budget decides
    elif batch_atoms is None:
        batch_atoms = 256 if jax.default_backend() == "cpu" else 4096
    params = model.astype(dtype).params
    options = dict(config=config, settings=settings, skin=skin, min_distance=min_distance)

    def program(capacities, *args):
        """:func:`relax_chunk` compiled for ``(params, *args)``, once per process and
        stored for the next (:mod:`jmattersim._src.programs`)."""
        static = dict(capacities=capacities, chunk=chunk, **options)
        return programs.compiled(
            "relax_many.relax_chunk",
            functools.partial(relax_chunk, **static),
            (params, *args),
            static,
        )

    def run(capacities, *args):
        return program(capacities, *args)(params, *args)

    while True:
        slots = _slots([len(a) for a in structures], batch_atoms)
        queue = list(range(len(entries)))
        capacities = _capacities(entries, slots, capacity_multiplier)
        first = _fill([], queue, entries, slots, capacities, capacity_multiplier)
        if memory_gb is None:
            break
        systems, targets, state, fire = _pack(
            [entries[k] for k in first], slots, settings, dtype, config.num_species
        )
        state = with_empty_list(state, capacities.list)
        compiled = program(capacities, systems, targets, state, fire, 1)
        need, largest = program_bytes(compiled), max(len(a) for a in structures)
        if need <= memory_gb * 1e9 or slots[0] - 1 <= largest:
            break
        batch_atoms = max(largest, int(0.9 * (slots[0] - 1) * memory_gb * 1e9 / need))
    bar = progress_bar(progress, total=len(entries), unit="structure", desc="relax")
    running = first
    while running:
        batch = [entries[k] for k in running]
        systems, targets, state, fire = _pack(batch, slots, settings, dtype, config.num_species)
        new_state, new_fire = run(
            capacities,
            systems,
            targets,
            with_empty_list(state, capacities.list),
            fire,
            len(running) if queue else 1,
        )
        if bool(new_state.overflow):  # redo the chunk with fewer structures, or more room
            moved = [dataclasses.replace(entries[k]) for k in running]
            _unpack(new_state, new_fire, moved)
            there = [_geometry(e) for e in moved]
            for k, atoms in zip(running, there, strict=True):
                entries[k].needs = tuple(
                    np.maximum(entries[k].needs, _needs(atoms, config, skin)[0])
                )
            kept = _fill([], list(running), entries, slots, capacities, capacity_multiplier)
            if len(kept) == len(running):
                needed = Capacities.measured(there, config, capacity_multiplier, skin)
                capacities = capacities.scaled(2.0).covering(needed)
            queue[:0] = [k for k in running if k not in kept]
            running = kept
            continue
        _unpack(new_state, new_fire, batch)
        still = [k for k in running if entries[k].status == RUNNING]
        bar.update(len(running) - len(still))
        running = _fill(still, queue, entries, slots, capacities, capacity_multiplier)
        held = sum(len(entries[k].atoms) for k in running)
        tail = running and not queue and slots[0] - 1 > SHRINK_ABOVE
        if tail and 2 * held < slots[0] - 1:
            slots = _slots([len(entries[k].atoms) for k in running], held)
            there = [_geometry(entries[k]) for k in running]
            capacities = Capacities.measured(there, config, capacity_multiplier, skin)
    bar.close()
    return [_relaxed(e) for e in entries]


def _entry(atoms, pressure_gpa, config, skin, max_edge_growth, settings, dtype) -> _Entry:
    """A structure's starting record: its measured counts and FIRE's first state."""
    needs, neighbors = _needs(atoms, config, skin)
    n = len(atoms)
    zeros = np.zeros((3, 3), dtype)
    fire = (np.zeros((n, 3), dtype), zeros, zeros, settings.dt, settings.a, 0, False)
    return _Entry(
        atoms,
        float(pressure_gpa),
        needs,
        neighbors,
        int(max_edge_growth * max(needs[3], 1)),
        np.asarray(atoms.positions, dtype),
        np.asarray(atoms.cell.array, dtype),
        fire,
    )


def _slots(sizes: Sequence[int], batch_atoms: int) -> tuple[int, int]:
    """(atoms, systems) slots of a union of at most ``batch_atoms`` atoms (at least
    the largest structure) for structures of ``sizes`` atoms, one of each for the
    padding."""
    sizes = sorted(sizes)
    n_atoms = max(min(batch_atoms, sum(sizes)), sizes[-1])
    fits = int(np.searchsorted(np.cumsum(sizes), n_atoms, side="right"))
    return n_atoms + 1, max(fits, 1) + 1


def _geometry(entry: _Entry) -> Atoms:
    """The structure where its relaxation has got to."""
    atoms = entry.atoms.copy()
    atoms.set_cell(np.asarray(entry.lattice, float), scale_atoms=False)
    atoms.positions = np.asarray(entry.positions, float)
    return atoms


def _capacities(entries: list[_Entry], slots: tuple[int, int], multiplier: float) -> Capacities:
    """Capacities that hold every fill of the slots the queue makes, in order (each
    count with ``multiplier`` headroom, the model's as
    :func:`~jmattersim._src.capacity.model_capacity`)."""
    largest, group, atoms, members = np.zeros(5), np.zeros(5), 0, 0
    for entry in entries:
        if atoms + len(entry.atoms) > slots[0] - 1 or members == slots[1] - 1:
            group, atoms, members = np.zeros(5), 0, 0
        group, atoms, members = group + entry.needs, atoms + len(entry.atoms), members + 1
        largest = np.maximum(largest, group)
    edges, triplets, pairs, within_edges, within_triplets = (int(x) for x in largest)
    neighbors = max(e.neighbors for e in entries)
    grow = lambda n: math.ceil(n * multiplier) + 1  # noqa: E731
    return Capacities(
        Capacity(grow(edges), grow(triplets), grow(neighbors), pairs=grow(pairs)),
        model_capacity(within_edges, within_triplets, multiplier),
    )


def _needs(atoms: Atoms, config: M3GNetConfig, skin: float) -> tuple[tuple[int, ...], int]:
    """A structure's counts: the list's edges, triplets and candidate pairs (with
    ``skin``), the edges and triplets within the cutoffs; and the most bonds of one
    atom within the three-body cutoff and the skin."""
    with_skin = capacity_for([atoms], config, 1.0, skin=skin)
    within = capacity_for([atoms], config, 1.0)
    counts = (
        with_skin.edges,
        with_skin.triplets,
        with_skin.pairs + 1,
        within.edges,
        within.triplets,
    )
    return tuple(n - 1 for n in counts), with_skin.neighbors - 1


def _fill(running, queue, entries, slots, capacities, multiplier) -> list[int]:
    """``running`` and the waiting structures (taken from ``queue`` in order) that
    fit the slots and the capacities (each structure's counts with headroom)."""
    atoms = sum(len(entries[k].atoms) for k in running)
    needs = np.sum([entries[k].needs for k in running], axis=0) * multiplier if running else 0
    limit = None
    if capacities is not None:
        c = capacities
        limit = np.array(
            [c.list.edges, c.list.triplets, c.list.pairs, c.model.edges, c.model.triplets]
        )
    out = list(running)
    while queue and len(out) < slots[1] - 1:
        entry = entries[queue[0]]
        more = needs + np.asarray(entry.needs) * multiplier
        if atoms + len(entry.atoms) > slots[0] - 1 or (
            limit is not None and out and np.any(more > limit)
        ):
            break
        out.append(queue.pop(0))
        atoms += len(entry.atoms)
        needs = more
    return out


def _pack(batch, slots, settings, dtype, species: int):
    """The union of ``batch`` in the fixed slots: its systems, targets, state and
    FIRE state; the atoms and systems left over are padding (never running)."""
    n_slots, g_slots = slots
    count = len(batch)
    n_node = np.zeros(g_slots, int)
    n_node[:count] = [len(e.atoms) for e in batch]
    n_node[-1] = n_slots - n_node.sum()
    pad = n_node[-1]
    empty = g_slots - count
    big = np.eye(3) * 100.0
    numbers = np.concatenate([e.atoms.numbers for e in batch] + [np.zeros(pad, int)])
    systems = Systems(
        jax.nn.one_hot(numbers, species, dtype=dtype),
        jnp.asarray(np.concatenate([e.atoms.get_masses() for e in batch] + [np.ones(pad)]), dtype),
        jnp.asarray(n_node),
        jnp.asarray(np.repeat(np.arange(g_slots), n_node)),
        jnp.zeros(g_slots, dtype),
    )
    stack = lambda rows, filler: np.concatenate(
        [rows, np.broadcast_to(filler, (empty, *np.shape(filler)))]
    )  # noqa: E731
    targets = Targets(
        jnp.asarray(stack(np.stack([e.atoms.cell.array for e in batch]), big), dtype),
        jnp.asarray(stack(np.array([e.pressure_gpa for e in batch]) * GPa, 0.0), dtype),
        jnp.asarray(stack(np.array([len(e.atoms) for e in batch], float), 1.0), dtype),
        jnp.asarray(stack(np.array([e.max_edges for e in batch]), 2**30), jnp.int32),
    )
    positions = jnp.asarray(
        np.concatenate([e.positions for e in batch] + [np.zeros((pad, 3))]), dtype
    )
    lattice = jnp.asarray(stack(np.stack([e.lattice for e in batch]), big), dtype)
    status = stack(np.array([e.status for e in batch]), PADDING)
    steps = stack(np.array([e.steps for e in batch]), 0)
    state = State(
        positions,
        jnp.zeros_like(positions),
        lattice,
        jnp.zeros_like(positions),
        jnp.zeros(g_slots, dtype),
        jnp.zeros((g_slots, 3, 3), dtype),
        jnp.zeros((g_slots, 2), jnp.uint32),
        jnp.asarray(status, jnp.int32),
        jnp.asarray(steps, jnp.int32),
        jnp.zeros((), bool),
        None,
    )
    rows = list(zip(*(e.fire for e in batch), strict=True))
    fire = Fire(
        jnp.asarray(np.concatenate([*rows[0], np.zeros((pad, 3))]), dtype),
        jnp.asarray(stack(np.stack(rows[1]), np.zeros((3, 3))), dtype),
        jnp.asarray(stack(np.stack(rows[2]), np.zeros((3, 3))), dtype),
        jnp.asarray(stack(np.array(rows[3]), settings.dt), dtype),
        jnp.asarray(stack(np.array(rows[4]), settings.a), dtype),
        jnp.asarray(stack(np.array(rows[5]), 0), jnp.int32),
        jnp.asarray(stack(np.array(rows[6]), False), bool),
    )
    return systems, targets, state, fire


def _unpack(state: State, fire: Fire, batch: list[_Entry]) -> None:
    """Each entry's rows of a union's state and FIRE state."""
    state, fire = jax.tree.map(np.asarray, (state._replace(nbrs=None), fire))
    start = 0
    for g, entry in enumerate(batch):
        part = slice(start, start + len(entry.atoms))
        start += len(entry.atoms)
        entry.positions, entry.lattice = state.positions[part], state.lattice[g]
        entry.forces, entry.energy = state.forces[part], state.energy[g]
        entry.stress = state.stress[g]
        entry.status, entry.steps = int(state.status[g]), int(state.steps[g])
        entry.fire = (fire.velocity[part], *(field[g] for field in fire[1:]))


def _relaxed(entry: _Entry) -> Atoms:
    """The relaxed copy: the final geometry, single-point results (energy eV,
    forces eV/Å, stress eV/Å³) and ``relax``'s ``info``."""
    copy = _geometry(entry)
    copy.calc = SinglePointCalculator(
        copy,
        energy=float(entry.energy),
        free_energy=float(entry.energy),
        forces=np.asarray(entry.forces, float),
        stress=full_3x3_to_voigt_6_stress(np.asarray(entry.stress, float)),
    )
    names = {CONVERGED: "converged", NOT_CONVERGED: "not converged", RUNNING: "not converged"}
    name = names.get(entry.status, "failed")
    copy.info.update(
        relax_status=name,
        relax_converged=name == "converged",
        relax_steps=entry.steps,
        relax_pressure_gpa=entry.pressure_gpa,
    )
    if name == "failed":
        copy.info["relax_error"] = REASONS[entry.status]
    return copy
