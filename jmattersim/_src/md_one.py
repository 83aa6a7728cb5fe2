"""Molecular dynamics of one structure with jax-md: steps in ``lax.scan`` chunks, the neighbour list
checked every step (rebuilt once an atom has moved half the skin), re-allocation and
a redo of the chunk on overflow, trajectory output and a progress bar at chunk edges.

Units: eV, Å, amu; jax-md's time unit is Å sqrt(amu/eV) (``ase.units.fs`` of it
is one fs), so momenta are ASE's. Temperatures are kelvin at this interface, k_B T
in eV inside; pressure in GPa here, eV/Å^3 inside.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from jax_md import quantity, simulate, space

from .checkpoint import Model
from .energy import EV_PER_A3_TO_GPA
from .integrators import ONE_SYSTEM_ENSEMBLES
from .jax_md import atoms_to_jax_md, mattersim_neighbor_list, neighbor_properties, one_hot
from .progress import progress_bar

ENSEMBLES = ONE_SYSTEM_ENSEMBLES
"""The ensembles [`md`][jmattersim.md] runs on one structure, by the names of jax-md's
integrators."""


def _simulator(
    ensemble: str,
    energy_fn: Callable,
    shift_fn: Callable,
    dt: float,
    kT: float,
    pressure: float,
    tau_t: float,
    tau_p: float,
    friction: float,
):
    if ensemble == "nve":
        return simulate.nve(energy_fn, shift_fn, dt)
    if ensemble == "nvt_nose_hoover":
        return simulate.nvt_nose_hoover(energy_fn, shift_fn, dt, kT, tau=tau_t)
    if ensemble == "nvt_langevin":
        return simulate.nvt_langevin(energy_fn, shift_fn, dt, kT, gamma=friction)
    if ensemble == "npt_nose_hoover":
        return simulate.npt_nose_hoover(
            energy_fn,
            shift_fn,
            dt,
            pressure,
            kT,
            barostat_kwargs={"tau": tau_p},
            thermostat_kwargs={"tau": tau_t},
        )
    raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")


def _without_precision_warning(fn: Callable) -> Callable:
    """``fn`` (a function jit traces) without jax-md's float32 warning: its sums ask for float64
    (``util.high_precision_sum``) and JAX warns when x64 is off and gives float32."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="Explicitly requested dtype float64", category=UserWarning
            )
            return fn(*args, **kwargs)

    return wrapped


def md_one(
    model: Model,
    atoms: Atoms,
    steps: int,
    dt: float,
    ensemble: str,
    temperature: float,
    pressure: float,
    *,
    tau_t: float,
    tau_p: float,
    friction: float,
    chunk: int,
    log_every: int,
    trajectory: str | None,
    progress: bool,
    seed: int,
    dr_threshold: float,
    capacity_multiplier: float,
    remat: bool,
    dtype,
) -> tuple[Atoms, dict[str, np.ndarray]]:
    """[`md`][jmattersim.md] of one structure on jax-md's integrators (see there)."""
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    if chunk % log_every:
        raise ValueError("chunk must be a multiple of log_every")
    R, box, species = atoms_to_jax_md(atoms, dtype)
    dtype = R.dtype
    mass = jnp.asarray(atoms.get_masses(), dtype)
    neighbor_fn, energy_fn = mattersim_neighbor_list(
        model,
        box,
        species,
        dr_threshold=dr_threshold,
        capacity_multiplier=capacity_multiplier,
        remat=remat,
        dtype=dtype,
    )
    _, shift_fn = space.periodic_general(box, fractional_coordinates=True)
    kT = units.kB * temperature
    p_internal = pressure / EV_PER_A3_TO_GPA
    init_fn, apply_fn = _simulator(
        ensemble,
        energy_fn,
        shift_fn,
        dt * units.fs,
        kT,
        p_internal,
        tau_t * units.fs,
        tau_p * units.fs,
        friction / units.fs,
    )
    npt = ensemble == "npt_nose_hoover"

    def box_of(state):
        return simulate.npt_box(state) if npt else box

    atom_types = one_hot(species, model.config.num_species, dtype)
    typed = model.astype(dtype)

    def invariant(state, nbrs):
        b = box_of(state)
        props = neighbor_properties(typed, atom_types, state.position, b, nbrs, remat=remat)
        pe = props.energy[0]
        ke = quantity.kinetic_energy(momentum=state.momentum, mass=state.mass)
        if ensemble == "nvt_nose_hoover":
            conserved = simulate.nvt_nose_hoover_invariant(energy_fn, state, kT, neighbor=nbrs)
        elif npt:
            conserved = simulate.npt_nose_hoover_invariant(
                energy_fn, state, p_internal, kT, neighbor=nbrs
            )
        else:
            conserved = pe + ke
        volume = jnp.abs(jnp.linalg.det(b))
        # jax-md's quantity.pressure, (2 KE - dU/d(isotropic strain)) / (3 V), from the
        # stress of the same reverse pass as the energy
        pres = (2 * ke / volume - jnp.trace(props.stress[0])) / 3
        return jnp.stack([pe, ke, conserved, volume, pres])

    def step(carry, _):
        state, nbrs = carry
        state = apply_fn(state, neighbor=nbrs)
        nbrs = nbrs.update(state.position, box=box_of(state))
        return (state, nbrs), None

    def logged(carry, _):
        carry, _ = jax.lax.scan(step, carry, None, length=log_every)
        return carry, invariant(*carry)

    @jax.jit
    @_without_precision_warning
    def run_chunk(state, nbrs):
        return jax.lax.scan(logged, (state, nbrs), None, length=chunk // log_every)

    key = jax.random.PRNGKey(seed)
    headroom, reallocations = capacity_multiplier, 0
    nbrs = neighbor_fn.allocate(R)
    while bool(nbrs.did_buffer_overflow):  # only with a capacity_multiplier below 1
        headroom *= 1.5
        reallocations += 1
        nbrs = neighbor_fn.allocate(R, capacity_multiplier=headroom)

    own = atoms.get_momenta()  # the atoms' own momenta if they have any (as ASE's MD)
    momenta = jnp.asarray(own, dtype) if np.any(own) else None

    @jax.jit
    @_without_precision_warning
    def start(key, R, nbrs):
        kw = {"mass": mass, "neighbor": nbrs, "momenta": momenta}
        if ensemble == "nve":
            state = init_fn(key, R, kT, **kw)
        elif npt:
            state = init_fn(key, R, box, **kw)
        else:
            state = init_fn(key, R, **kw)
        return state, invariant(state, nbrs)

    state, first = start(key, R, nbrs)
    log = [np.asarray(first)]
    if trajectory:
        ase.io.write(trajectory, _frame(atoms, state, box_of(state), log[-1][0]))
    n_chunks = math.ceil(steps / chunk)
    bar = progress_bar(progress, total=n_chunks * chunk, unit="step")
    for _ in range(n_chunks):
        while True:
            (new_state, new_nbrs), obs = run_chunk(state, nbrs)
            if not bool(new_nbrs.did_buffer_overflow):
                break
            headroom *= 1.5  # re-allocate at the chunk's start and redo it
            reallocations += 1
            nbrs = neighbor_fn.allocate(
                state.position, box=box_of(state), capacity_multiplier=headroom
            )
        state, nbrs = new_state, new_nbrs
        log.append(np.asarray(obs))
        if trajectory:
            ase.io.write(
                trajectory, _frame(atoms, state, box_of(state), log[-1][-1, 0]), append=True
            )
        bar.update(chunk)
    bar.close()
    table = np.concatenate([log[0][None]] + log[1:])
    n = len(atoms)
    out = {
        "time_fs": np.arange(len(table)) * log_every * dt,
        "potential_energy": table[:, 0],
        "kinetic_energy": table[:, 1],
        "temperature": 2 * table[:, 1] / (3 * n * units.kB),
        "conserved": table[:, 2],
        "volume": table[:, 3],
        "pressure": table[:, 4] * EV_PER_A3_TO_GPA,
        "reallocations": np.asarray(reallocations),
    }
    return _frame(atoms, state, box_of(state), table[-1, 0]), out


def _frame(atoms: Atoms, state: Any, box, energy: float) -> Atoms:
    """ASE Atoms of a jax-md state (cell = box.T, r = R @ box.T), energy and forces."""
    cell = np.asarray(box, float).T
    frame = Atoms(
        atoms.numbers,
        cell=cell,
        pbc=atoms.pbc,
        scaled_positions=np.asarray(state.position, float) % 1.0,
    )
    frame.set_momenta(np.asarray(state.momentum, float))
    frame.calc = SinglePointCalculator(
        frame, energy=float(energy), forces=np.asarray(state.force, float)
    )
    return frame
