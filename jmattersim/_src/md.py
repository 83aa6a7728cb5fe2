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
    pressure: float | Sequence[float] = 0.0,
    *,
    tau_t: float = 100.0,
    tau_p: float = 1000.0,
    compressibility: float | Sequence[float] = 0.01,
    friction: float = 0.01,
    chunk: int = 100,
    log_every: int = 10,
    trajectory: str | None = None,
    checkpoint: str | None = None,
    batch_atoms: int | None = None,
    memory_gb: float | None = None,
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
    by one compiled step with its own cell, temperature, pressure, momenta,
    thermostat and random stream (in "nve", "nvt_langevin", "nvt_nose_hoover", or
    "npt_crescale", a barostat under which each triclinic cell changes shape); a
    system that fails (non-finite energy or forces, atoms closer than
    ``min_distance``) stops alone, and the others go on. One structure in
    "npt_crescale" runs the same way.

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
        ensemble: one of [`ENSEMBLES`][jmattersim.jax_md.ENSEMBLES] (one
            structure, jax-md's integrators), or "nve", "nvt_langevin",
            "nvt_nose_hoover" or "npt_crescale" (many).
        temperature: K: the initial Maxwell-Boltzmann momenta and the
            thermostat's target (with many structures: one, or one each).
        pressure: GPa, the barostat's target (NPT; with many structures: one,
            or one each).
        tau_t: fs, the Nose-Hoover thermostat's period.
        tau_p: fs, the barostat's time scale (Nose-Hoover; the relaxation time
            of "npt_crescale").
        compressibility: 1/GPa, "npt_crescale"'s guess of the compressibility
            (0.01: a bulk modulus of 100 GPa; one, or one per structure); it sets
            how fast the cell follows, not where it goes (far too large makes
            the cell overshoot).
        friction: 1/fs (Langevin, and the atoms of "npt_crescale").
        chunk: steps per compiled ``lax.scan``; a multiple of ``log_every``.
        log_every: steps between log entries.
        trajectory: a file (``.traj``, ``.xyz``/``.extxyz``) to which a frame is
            written at each chunk edge (many structures: a pattern with
            ``{index}``, or a list of files).
        checkpoint: a directory where the run saves its whole state at every
            chunk edge (Orbax); called again with the same directory and
            arguments, a killed run resumes from its last chunk edge and ends as
            an uninterrupted one would (its trajectory files cut back to that
            edge); more ``steps`` extend a finished run. A batch of one for one
            structure (not with "npt_nose_hoover").
        batch_atoms: many structures: at most this many atoms in one union; a
            longer list runs in consecutive batches, each padded to the same
            slots, so one compiled step serves them all (None: one union).
        memory_gb: many structures: the memory the compiled step may use, GB
            (device memory on an accelerator): its arguments, outputs and
            temporaries as XLA measures them once it is compiled. The batches
            shrink (in proportion, one more compilation each time) until the step
            fits. On a CPU, compilation itself takes host memory besides.
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
        ``temperature`` K, ``volume`` Å³, ``pressure`` GPa, ``stress`` GPa
        (many structures: Voigt rows, ASE's sign), and
        ``reallocations`` (a count). With a list of structures, ``(finals, logs)``,
        one each; each log also holds ``status`` ("finished" or "failed"),
        ``reason`` (or None), ``steps`` (the steps it completed) and ``batch``
        (the batch it ran in); a stopped system's entries repeat its last state.
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
    from .integrators import ENSEMBLES as MANY_ENSEMBLES
    from .integrators import ONE_SYSTEM_ENSEMBLES as ONE_ENSEMBLES

    alone = isinstance(atoms, Atoms)
    if alone and ensemble not in ONE_ENSEMBLES + MANY_ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ONE_ENSEMBLES + MANY_ENSEMBLES}")
    if alone and checkpoint is not None and ensemble not in MANY_ENSEMBLES:
        raise ValueError(f"checkpoint: runs in one of {MANY_ENSEMBLES}, not {ensemble!r}")
    if alone and ensemble in ONE_ENSEMBLES and checkpoint is None:
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

    if alone and trajectory is not None:
        options["trajectory"] = [trajectory]
    finals, logs = md_many(
        model,
        [atoms] if alone else atoms,
        steps,
        dt,
        ensemble,
        temperature,
        pressure,
        tau_t=tau_t,
        tau_p=tau_p,
        compressibility=compressibility,
        checkpoint=checkpoint,
        batch_atoms=batch_atoms,
        memory_gb=memory_gb,
        min_distance=min_distance,
        **options,
    )
    return (finals[0], logs[0]) if alone else (finals, logs)
