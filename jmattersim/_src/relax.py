"""Relaxation of positions and cell, many structures at once.

ASE's optimisers and cell filters do the stepping, one instance per structure
(FIRE and ``FrechetCellFilter`` by default, as upstream's ``BatchRelaxer``); at
every step the energies, forces and stresses of all structures still moving come
from one :func:`jmattersim._src.engine.run` (host neighbour lists rebuilt at every step,
exact; batches packed into the engine's budgets, so the compiled functions are
those of the calculator and ``evaluate``).

A structure that cannot go on (a cell collapsing, atoms piling up, a non-finite
energy) stops with status ``"failed"`` and the reason; the others go on.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import scipy.linalg
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.filters import ExpCellFilter, FrechetCellFilter
from ase.optimize import BFGS, FIRE, LBFGS
from ase.units import GPa

from . import engine
from .checkpoint import Model
from .checks import InvalidStructureError, structure_label
from .graph import check_structures, checked_graph
from .progress import progress_bar

OPTIMIZERS = {"FIRE": FIRE, "BFGS": BFGS, "LBFGS": LBFGS}  # by upper-case name
FILTERS = {"FrechetCellFilter": FrechetCellFilter, "ExpCellFilter": ExpCellFilter}
STATUSES = ("converged", "not converged", "failed")


class _Run:
    """One structure's relaxation: its atoms, optimiser and state."""

    def __init__(
        self,
        atoms: Atoms,
        label: str,
        optimizer,
        cell_filter,
        kwargs: dict,
        fmax: float,
        pressure_gpa: float = 0.0,
    ):
        self.atoms = atoms
        self.label = label
        self.pressure_gpa = pressure_gpa
        # the pressure only where one is asked for: any filter class may be passed
        pressure = {"scalar_pressure": pressure_gpa * GPa} if pressure_gpa else {}
        self.target = cell_filter(atoms, **pressure) if cell_filter is not None else atoms
        _speed_up_frechet(self.target)
        self.opt = optimizer(self.target, logfile=None, **kwargs)
        self.opt.fmax = fmax
        self.status = "not converged"
        self.reason = ""
        self.start_edges: int | None = None
        self.start_volume = atoms.get_volume() if atoms.pbc.all() else None

    def fail(self, reason: str) -> None:
        self.status, self.reason = "failed", reason
        self.atoms.calc = None  # no results for a geometry that was not evaluated


def _speed_up_frechet(target: Any) -> None:
    """``FrechetCellFilter``'s matrix functions, the same values in a fraction of the
    time (they took half of each step on small cells): its logarithm of the
    deformation gradient, asked for three times per step, computed once per matrix; the
    Fréchet derivative of ``expm`` (nine per step) as the corner of one 6x6
    ``expm`` (Higham's block form) instead of scipy's ``expm_frechet``."""
    utility = getattr(target, "_utility", None)
    if isinstance(target, FrechetCellFilter) and hasattr(utility, "expm_frechet"):
        utility.logm = _CachedLogm()
        utility.expm_frechet = _expm_frechet_block


class _CachedLogm:
    """``scipy.linalg.logm`` remembering its last few arguments and results."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.known: dict[bytes, np.ndarray] = {}

    def __call__(self, a: np.ndarray) -> np.ndarray:
        key = np.ascontiguousarray(a).tobytes()
        if key not in self.known:
            if len(self.known) >= self.size:
                self.known.pop(next(iter(self.known)))
            self.known[key] = scipy.linalg.logm(a)
        return self.known[key].copy()


def _expm_frechet_block(a: np.ndarray, e: np.ndarray, compute_expm: bool = True):
    """``scipy.linalg.expm_frechet``: L(a, e) from expm([[a, e], [0, a]]) = [[expm(a),
    L], [0, expm(a)]]."""
    n = a.shape[0]
    block = np.zeros((2 * n, 2 * n), dtype=np.result_type(a, e))
    block[:n, :n] = block[n:, n:] = a
    block[:n, n:] = e
    full = scipy.linalg.expm(block)
    return (full[:n, :n], full[:n, n:]) if compute_expm else full[:n, n:]


def relax(
    model: Model,
    atoms: Atoms | Sequence[Atoms],
    fmax: float = 0.02,
    smax: float | None = None,
    max_steps: int = 1000,
    relax_cell: bool = True,
    optimizer: str | type = "FIRE",
    cell_filter: str | type = "FrechetCellFilter",
    optimizer_kwargs: dict[str, Any] | None = None,
    max_edge_growth: float = 8.0,
    dtype=None,
    progress: bool = False,
    pressure_gpa: float | Sequence[float] = 0.0,
    driver: str = "auto",
    batch_atoms: int | None = None,
    memory_gb: float | None = None,
) -> Atoms | list[Atoms]:
    """Relaxes one structure or many together, as ASE's optimisers and cell filters do.

    Two drivers take the same steps (equal in float64):

    - ``"compiled"``: FIRE on ``FrechetCellFilter``'s coordinates (or the positions
      alone) for all structures at once in one compiled loop
      (:mod:`jmattersim._src.relax_many`): a skin neighbour list kept on the
      device, energies, forces and stresses from one reverse pass, no host work
      per step. Periodic structures, FIRE, and ``FrechetCellFilter`` or no cell.
    - ``"ase"``: one ASE optimiser per structure on the host; at every step all
      structures still moving are evaluated in one engine call (host neighbour
      lists rebuilt). Any optimiser and filter, molecules and slabs.

    ``"auto"`` takes the compiled driver on an accelerator for more than one
    structure where it applies, else ASE's (on a CPU the model's work dominates a
    step, and the host driver evaluates only the structures still moving). A structure that
    cannot go on (atoms closer than 0.5 Å, a collapsing cell, a non-finite energy)
    stops with status "failed"; the others go on. Computes in float64 under x64,
    float32 otherwise.

    Args:
        model: the [`Model`][jmattersim.Model].
        atoms: one ASE structure or a sequence of them (not modified).
        fmax: eV/Å, the optimiser's convergence criterion (with a cell filter it
            applies to the filter's generalised forces, as in ASE and upstream's
            ``BatchRelaxer``).
        smax: GPa; if given, also require every component of the stress's
            deviation from the target (``stress + pressure_gpa * I``) below it.
        max_steps: optimiser steps per structure.
        relax_cell: relax the cell too (periodic structures only).
        optimizer: "FIRE", "BFGS", "LBFGS" or an ASE ``Optimizer`` class.
        cell_filter: "FrechetCellFilter", "ExpCellFilter" or an ASE filter class,
            used when ``relax_cell``.
        optimizer_kwargs: passed to the optimiser.
        max_edge_growth: a structure whose neighbour count grows beyond this
            factor of its start is failed as a collapsing cell.
        dtype (numpy dtype or None): float32 or float64 (default: float64 under
            x64, float32 otherwise).
        progress: show a progress bar (tqdm).
        pressure_gpa: GPa, the external hydrostatic pressure (one for all, or one
            per structure): the cell filter minimises the enthalpy E + pV, as
            upstream's ``pressure_in_GPa`` (ASE's ``scalar_pressure``, in eV/Å³
            there). Needs ``relax_cell``.
        driver: "auto", "compiled" or "ase" (see above).
        batch_atoms: the compiled driver's atom slots (default 256 on a CPU, 4096
            on an accelerator): structures wait in a queue and take the slots of
            those that stop, so one compiled program serves them all.
        memory_gb: the compiled driver's budget, GB, for its compiled chunk (device
            memory on an accelerator) as XLA measures it: the slots start from all
            the structures (or ``batch_atoms``) and shrink in proportion, one
            compilation each, until the chunk fits.

    Returns:
        Relaxed copies (one ``Atoms`` for one, a list for a sequence). Each
        carries a single-point calculator (energy eV, forces (N, 3) eV/Å,
        stress eV/Å³ at the last evaluated geometry) and ``info["relax_status"]``
        ("converged", "not converged" or "failed"), ``info["relax_converged"]``,
        ``info["relax_steps"]``, ``info["relax_pressure_gpa"]`` and, when
        failed, ``info["relax_error"]`` (the reason).

    Raises:
        InvalidStructureError: a starting structure is unfit for the model.
        ValueError: ``relax_cell`` with a structure that is not periodic in all
            three directions; a pressure without ``relax_cell``; as many
            pressures as structures not given; ``driver="compiled"`` where it
            does not apply (the message says why).
    """
    single = isinstance(atoms, Atoms)
    structures = [atoms] if single else list(atoms)
    check_structures(structures, model.config)
    if isinstance(optimizer, str):
        optimizer = OPTIMIZERS[optimizer.upper()]
    if isinstance(cell_filter, str):
        cell_filter = FILTERS[cell_filter]
    if relax_cell and not all(a.pbc.all() for a in structures):
        raise ValueError(
            "relaxing the cell needs periodic structures (pbc all True); "
            "pass relax_cell=False for molecules and slabs"
        )
    pressures = _pressures(pressure_gpa, len(structures), relax_cell)
    if _compiled(driver, structures, optimizer, cell_filter, relax_cell, optimizer_kwargs):
        from .relax_many import FireSettings, relax_many

        settings = FireSettings(
            fmax, smax if relax_cell else None, max_steps, relax_cell, **(optimizer_kwargs or {})
        )
        out = relax_many(
            model,
            structures,
            settings,
            pressures,
            max_edge_growth,
            dtype,
            progress,
            batch_atoms=batch_atoms,
            memory_gb=memory_gb,
        )
        return out[0] if single else out
    runs = [
        _Run(
            a.copy(),
            structure_label(k, a.numbers),
            optimizer,
            cell_filter if relax_cell else None,
            optimizer_kwargs or {},
            fmax,
            pressures[k],
        )
        for k, a in enumerate(structures)
    ]
    active = list(runs)
    bar = progress_bar(progress, total=len(runs), unit="structure", desc="relax")
    with warnings.catch_warnings():  # FrechetCellFilter's logm of a nearly exact matrix
        warnings.filterwarnings("ignore", "logm result may be inaccurate")
        while active:
            still = _step(
                model, active, max_steps, smax if relax_cell else None, max_edge_growth, dtype
            )
            bar.update(len(active) - len(still))
            active = still
    bar.close()
    out = []
    for run in runs:
        run.atoms.info.update(
            relax_status=run.status,
            relax_converged=run.status == "converged",
            relax_steps=int(run.opt.nsteps),
            relax_pressure_gpa=run.pressure_gpa,
        )
        if run.reason:
            run.atoms.info["relax_error"] = run.reason
        out.append(run.atoms)
    return out[0] if single else out


def _compiled(
    driver: str,
    structures: Sequence[Atoms],
    optimizer: type,
    cell_filter: type,
    relax_cell: bool,
    optimizer_kwargs: dict[str, Any] | None,
) -> bool:
    """Whether ``driver`` (checked) runs the compiled driver for these settings."""
    from .relax_many import FIRE_OPTIONS

    if driver not in ("auto", "compiled", "ase"):
        raise ValueError(f"driver: 'auto', 'compiled' or 'ase', not {driver!r}")
    unknown = set(optimizer_kwargs or {}) - FIRE_OPTIONS
    why = (
        "it runs FIRE only" * (optimizer is not FIRE)
        or "its cell filter is FrechetCellFilter"
        * (relax_cell and cell_filter is not FrechetCellFilter)
        or "it needs periodic structures" * (not all(a.pbc.all() for a in structures))
        or f"FIRE options {sorted(unknown)} are not among {sorted(FIRE_OPTIONS)}" * bool(unknown)
    )
    if driver == "compiled" and why:
        raise ValueError(f"driver='compiled' does not apply: {why}")
    # on a CPU the model's work dominates a step and the host driver, which evaluates
    # only the structures still moving, is the faster (docs/benchmarks.md); on an
    # accelerator the host's work per step dominates
    accelerated = jax.default_backend() != "cpu"
    return driver == "compiled" or (
        driver == "auto" and not why and len(structures) > 1 and accelerated
    )


def _pressures(pressure_gpa: float | Sequence[float], count: int, relax_cell: bool) -> list:
    """One external pressure (GPa) per structure, checked."""
    given = np.asarray(pressure_gpa, dtype=float).reshape(-1)
    if given.size not in (1, count):
        raise ValueError(
            f"pressure_gpa: one pressure or one per structure ({count}), not {given.size}"
        )
    if not np.all(np.isfinite(given)):
        raise ValueError(f"pressure_gpa must be finite, not {pressure_gpa}")
    if not relax_cell and np.any(given != 0):
        raise ValueError("an external pressure needs relax_cell=True (the cell carries it)")
    return np.broadcast_to(given, (count,)).tolist()


def _step(
    model: Model,
    active: list[_Run],
    max_steps: int,
    smax: float | None,
    max_edge_growth: float,
    dtype,
) -> list[_Run]:
    """Evaluates every active structure at once, then steps each one that has not
    converged; returns those still going."""
    graphs, evaluated = [], []
    for run in active:
        try:
            g = checked_graph(run.atoms, model.config, run.label)
        except InvalidStructureError as e:
            run.fail(e.problem)
            continue
        run.start_edges = run.start_edges or max(g.n_edge, 1)
        if g.n_edge > max_edge_growth * run.start_edges:
            volume = run.atoms.get_volume() / run.start_volume if run.start_volume else 1.0
            run.fail(
                f"the cell collapsed: {g.n_edge} neighbour pairs, "
                f"{g.n_edge / run.start_edges:.1f} times its start, at "
                f"{volume:.0%} of its starting volume"
            )
            continue
        graphs.append(g)
        evaluated.append(run)
    results = engine.run(model, graphs, dtype=dtype) if graphs else []
    still = []
    for run, out in zip(evaluated, results, strict=True):
        if not (
            np.isfinite(out.energy)
            and np.isfinite(out.forces).all()
            and np.isfinite(out.stress).all()
        ):
            run.fail("the model returned a non-finite energy, forces or stress")
            continue
        run.atoms.calc = SinglePointCalculator(
            run.atoms,
            energy=out.energy,
            free_energy=out.energy,
            forces=out.forces,
            stress=out.stress,
        )
        done = run.opt.gradient_converged(run.opt.optimizable.get_gradient())
        if done and smax is not None:
            target = -run.pressure_gpa * np.eye(3)
            done = float(np.abs(out.stress_gpa - target).max()) < smax
        if done:
            run.status = "converged"
        elif run.opt.nsteps < max_steps:
            run.opt.step()
            run.opt.nsteps += 1
            still.append(run)
    return still
