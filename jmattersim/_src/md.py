"""``jmattersim.md``: molecular dynamics of one structure (on jax-md's integrators and
neighbour lists, :mod:`jmattersim._src.md_one`) or of many at once (one padded
disjoint union, :mod:`jmattersim._src.md_many`).

Units: eV, Å, amu, fs; temperatures in K, pressures in GPa.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

from .checkpoint import Model


def md(
    model: Model,
    atoms: Atoms | Sequence[Atoms],
    steps: int,
    dt: float = 1.0,
    ensemble: str = "nve",
    temperature: float | Sequence[float] = 300.0,
    pressure: float = 0.0,
    *,
    tau_t: float = 100.0,
    tau_p: float = 1000.0,
    friction: float = 0.01,
    chunk: int = 100,
    log_every: int = 10,
    trajectory: str | None = None,
    progress: bool = True,
    seed: int = 0,
    dr_threshold: float = 0.25,
    capacity_multiplier: float = 1.25,
    remat: bool = False,
    min_distance: float = 0.5,
    dtype=None,
) -> tuple[Atoms, dict[str, np.ndarray]] | tuple[list[Atoms], list[dict[str, np.ndarray]]]:
    """Runs molecular dynamics with jax-md from a periodic ASE structure, or of many
    structures at once.

    A list of structures runs as one padded disjoint union, every system advanced
    by one compiled step with its own cell, temperature, momenta and random stream
    ("nve" and "nvt_langevin"); a system that fails (non-finite energy or forces,
    atoms closer than ``min_distance``) stops alone, and the others go on.

    The starting momenta are a structure's own if it has any (as ASE's MD), else
    Maxwell-Boltzmann at its temperature from the random ``seed``.

    Steps run ``chunk`` at a time in one compiled ``lax.scan`` (``steps`` is
    rounded up to whole chunks); the neighbour list is checked every step and
    rebuilt once an atom has moved ``dr_threshold / 2``, and a chunk whose list
    overflowed is redone after a re-allocation (1.5x more
    headroom each time). Also available as ``jmattersim.md``.

    Args:
        model: the [`Model`][jmattersim.Model].
        atoms: the periodic starting structure, or a list of them.
        steps: number of time steps.
        dt: time step, fs.
        ensemble: one of [`ENSEMBLES`][jmattersim.jax_md.ENSEMBLES].
        temperature: K: the initial Maxwell-Boltzmann momenta and the
            thermostat's target (with many structures: one, or one each).
        pressure: GPa (NPT).
        tau_t: fs, the Nose-Hoover thermostat's time scale.
        tau_p: fs, the Nose-Hoover barostat's time scale.
        friction: 1/fs (Langevin).
        chunk: steps per compiled ``lax.scan``; a multiple of ``log_every``.
        log_every: steps between log entries.
        trajectory: a file (``.traj``, ``.xyz``/``.extxyz``) to which a frame is
            written at each chunk edge (many structures: a pattern with
            ``{index}``, or a list of files).
        progress: show a progress bar (tqdm).
        seed: random seed of the initial momenta (and the Langevin noise).
        dr_threshold: neighbour-list skin, Å.
        capacity_multiplier: neighbour-list headroom.
        remat: recompute each interaction block in the backward pass: less
            memory for very large cells, about 1.5x the time of a step.
        min_distance: Å, many structures: a system whose atoms come closer stops.
        dtype (numpy dtype or None): float64 under x64, float32 otherwise.

    Returns:
        ``(final, log)``: the final structure (positions, cell, momenta; a
        single-point calculator with energy eV and forces eV/Å) and a dict of
        arrays, one entry per log step: ``time_fs`` fs, ``potential_energy``,
        ``kinetic_energy`` and ``conserved`` (the ensemble's invariant) eV,
        ``temperature`` K, ``volume`` Å³, ``pressure`` GPa, and
        ``reallocations`` (a count). With a list of structures, ``(finals, logs)``,
        one each; each log also holds ``status`` ("finished" or "failed"),
        ``reason`` (or None) and ``steps`` (the steps it completed); a stopped
        system's entries repeat its last state.
    """
    options = dict(
        friction=friction,
        chunk=chunk,
        log_every=log_every,
        trajectory=trajectory,
        progress=progress,
        seed=seed,
        dr_threshold=dr_threshold,
        capacity_multiplier=capacity_multiplier,
        dtype=dtype,
    )
    if isinstance(atoms, Atoms):
        from .md_one import md_one  # imports jax-md (seconds)

        return md_one(
            model,
            atoms,
            steps,
            dt,
            ensemble,
            temperature,
            pressure,
            tau_t=tau_t,
            tau_p=tau_p,
            remat=remat,
            **options,
        )
    from .md_many import md_many

    return md_many(
        model, atoms, steps, dt, ensemble, temperature, min_distance=min_distance, **options
    )
