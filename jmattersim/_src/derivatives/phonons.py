"""Phonons from exact force constants, in phonopy.

phonopy finds the displacements its symmetry needs (one for diamond Si) and
builds the force constants from the forces they cause. Here those forces are not
computed on displaced supercells: they are the exact linear response
``F_j = -sum_a u_a d2E/dr_ia dr_j`` from the Hessian rows of the displaced atoms
(:func:`jmattersim.derivatives.hessian_columns`, one batched call). phonopy's own solver,
symmetrisation and sum rules then apply unchanged, and since its solver is linear
in the forces, the force constants it returns are the exact second derivatives:
no finite-displacement error, no float noise amplified by 1/amplitude.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms

from ..checkpoint import Model
from ..checks import structure_label
from .hessian import rows_and_forces
from .minimum import warn_residual

if TYPE_CHECKING:  # phonopy is the optional "phonons" extra
    from phonopy import Phonopy

AMPLITUDE = 0.01  # Å, phonopy's and upstream's displacement; the exact forces scale with it
IMAGINARY_THRESHOLD = -0.299  # THz: below this a mode counts as imaginary (upstream's check)
RELAX_FMAX = 1e-3  # eV/Å, relax=True


def require_phonopy():
    """phonopy, or an ImportError saying how to install it."""
    try:
        import phonopy
    except ImportError as e:
        raise ImportError('phonons need phonopy: pip install "jmattersim[phonons]"') from e
    return phonopy


def phonopy_atoms(atoms: Atoms):
    """ASE ``Atoms`` as phonopy's ``PhonopyAtoms`` (symbols, cell, positions, masses)."""
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(
        symbols=atoms.get_chemical_symbols(),
        cell=np.asarray(atoms.cell),
        positions=atoms.positions,
        masses=atoms.get_masses(),
    )


def primitive_matrix_of(unitcell, primitive_matrix: Any, symprec: float):
    """phonopy's primitive matrix (3, 3) of ``unitcell`` (``PhonopyAtoms``), with
    ``"auto"`` resolved from its symmetry here, as phonopy would: our documented
    default, so phonopy's warning about its own changed default does not apply."""
    from phonopy.structure.cells import get_primitive_matrix_with_auto

    return get_primitive_matrix_with_auto(unitcell, primitive_matrix, symprec=symprec)


def ase_atoms(cell) -> Atoms:
    """phonopy's ``PhonopyAtoms`` as periodic ASE ``Atoms``."""
    return Atoms(
        symbols=cell.symbols,
        cell=cell.cell,
        positions=cell.positions,
        masses=cell.masses,
        pbc=True,
    )


def exact_displacement_forces(
    model: Model,
    supercell: Atoms,
    displacements: Sequence[tuple[int, np.ndarray]],
    *,
    atoms_chunk: int | None = None,
    dtype=None,
) -> tuple[np.ndarray, np.ndarray]:
    """The forces a finite-displacement code would measure, exactly linearised.

    Args:
        model: the model.
        supercell: the undisplaced supercell.
        displacements: (atom index, displacement (3,) Å) pairs.
        atoms_chunk: passed to :func:`jmattersim.derivatives.hessian_columns`.
        dtype: float type of the Hessian.

    Returns:
        (D, N, 3) eV/Å: ``-H[i] . u`` for each displacement, float64; and the
        residual forces (N, 3) eV/Å of the undisplaced supercell.
    """
    displaced = sorted({int(i) for i, _ in displacements})
    rows, residual = rows_and_forces(
        model, supercell, displaced, atoms_chunk=atoms_chunk, dtype=dtype
    )
    rows = rows.astype(np.float64)
    where = {atom: k for k, atom in enumerate(displaced)}
    forces = [
        -np.einsum("a,ajb->jb", np.asarray(u, np.float64), rows[where[int(i)]])
        for i, u in displacements
    ]
    return np.stack(forces), residual


def _relaxed(model: Model, atoms: Atoms, relax: bool | dict, symprec: float, dtype) -> Atoms:
    """Positions and cell relaxed with the space group kept (ASE's FixSymmetry)."""
    from ase.constraints import FixSymmetry

    from ..relax import relax as relax_structures

    options = {"fmax": RELAX_FMAX, "max_steps": 2000, "optimizer": "BFGS"}
    options.update(relax if isinstance(relax, dict) else {})
    start = atoms.copy()
    start.calc = None
    start.set_constraint(FixSymmetry(start, symprec=max(symprec, 1e-4)))
    out = relax_structures(model, start, dtype=dtype, **options)
    out.set_constraint()
    if out.info.get("relax_status") != "converged":
        import warnings

        warnings.warn(
            f"phonons: the relaxation ended '{out.info.get('relax_status')}' after "
            f"{out.info.get('relax_steps')} steps {out.info.get('relax_error', '')}",
            stacklevel=3,
        )
    return out


def default_mesh(supercell_matrix: np.ndarray) -> np.ndarray:
    """Upstream's q-point mesh for a supercell: 6x its diagonal if isotropic, else 3x."""
    diagonal = np.diag(supercell_matrix)
    return (6 if len(set(diagonal.tolist())) == 1 else 3) * diagonal


def supercell_matrix_of(supercell_matrix: Any) -> np.ndarray:
    """An int, (3,) or (3, 3) supercell specification as a (3, 3) int matrix."""
    m = np.asarray(supercell_matrix, dtype=int)
    if m.ndim == 0:
        return np.eye(3, dtype=int) * int(m)
    if m.shape == (3,):
        return np.diag(m)
    if m.shape == (3, 3):
        return m
    raise ValueError(f"supercell_matrix must be an int, (3,) or (3, 3), not shape {m.shape}")


def phonons(
    model: Model,
    atoms: Atoms,
    supercell_matrix: Any,
    *,
    relax: bool | dict = False,
    mesh: Any = None,
    band_path: str | Sequence | None = "auto",
    primitive_matrix: Any = "auto",
    symprec: float = 1e-5,
    atoms_chunk: int | None = None,
    dtype=None,
) -> Phonopy:
    """Phonons from exact force constants: a ``phonopy.Phonopy``, ready to use.

    The displacements phonopy's symmetry analysis asks for get exactly linear
    forces from the Hessian rows of the displaced atoms (one batched call);
    phonopy builds and symmetrises the force constants from them as it would
    from finite-displacement forces (upstream MatterSim's ``PhononWorkflow``),
    so they are the exact second derivatives, free of displacement error.

    Args:
        model: the [`Model`][jmattersim.Model].
        atoms: the unit cell (ASE ``Atoms``, periodic), at a minimum (else a
            warning names the largest residual force), or ``relax=True``.
        supercell_matrix: int, (3,) or (3, 3): the supercell for the force constants.
        relax: relax positions and cell first, keeping the space group
            ([`relax`][jmattersim.relax] with ASE's ``FixSymmetry``, BFGS, fmax
            1e-3 eV/Å); a dict overrides those options.
        mesh: q-point mesh (3 ints, or phonopy's length) for ``run_mesh``;
            default upstream's: 6x the supercell diagonal (3x if anisotropic).
            Γ-centred (phonopy's symmetry reduction then applies to even meshes).
            ``False`` skips it.
        band_path: "auto" (seekpath's path, phonopy's ``auto_band_structure``),
            a sequence of paths of reduced q-points, or None.
        primitive_matrix: phonopy's primitive matrix ("auto" finds it).
        symprec: symmetry tolerance, Å.
        atoms_chunk: atoms per compiled Hessian call (see
            [`hessian_columns`][jmattersim.derivatives.hessian_columns]).
        dtype (numpy dtype or None): float64 under ``jax_enable_x64``, else float32.

    Returns:
        ``phonopy.Phonopy`` with ``force_constants`` (N, N, 3, 3) eV/Å² set and
        symmetrised, the mesh and the band structure run (frequencies in THz).
        [`phonon_spectrum`][jmattersim.derivatives.phonon_spectrum] gives them as arrays and a plot.

    Raises:
        ImportError: phonopy is not installed (``pip install "jmattersim[phonons]"``).
        InvalidStructureError: bad input, naming the structure and the problem.
    """
    require_phonopy()
    from phonopy import Phonopy

    if not np.all(atoms.pbc):
        raise ValueError(
            f"{structure_label(None, atoms.numbers)}: phonons need a structure periodic in all "
            "three directions"
        )
    if relax:
        atoms = _relaxed(model, atoms, relax, symprec, dtype)
    matrix = supercell_matrix_of(supercell_matrix)
    unitcell = phonopy_atoms(atoms)
    phonon = Phonopy(
        unitcell,
        supercell_matrix=matrix,
        primitive_matrix=primitive_matrix_of(unitcell, primitive_matrix, symprec),
        symprec=symprec,
    )
    phonon.generate_displacements(distance=AMPLITUDE)
    displacements = [(d["number"], d["displacement"]) for d in phonon.dataset["first_atoms"]]
    phonon.forces, residual = exact_displacement_forces(
        model, ase_atoms(phonon.supercell), displacements, atoms_chunk=atoms_chunk, dtype=dtype
    )
    # the unit cell's residual forces: those of its atoms' images in the supercell
    warn_residual(atoms, residual[phonon.supercell.u2s_map], what="phonons")
    phonon.produce_force_constants(show_drift=False)
    phonon.symmetrize_force_constants(show_drift=False)
    if mesh is not False:
        phonon.run_mesh(default_mesh(matrix) if mesh is None else mesh, is_gamma_center=True)
    if isinstance(band_path, str):
        if band_path != "auto":
            raise ValueError(
                f'band_path must be "auto", a sequence of paths or None, not {band_path!r}'
            )
        phonon.auto_band_structure()
    elif band_path is not None:
        phonon.run_band_structure([np.asarray(p, float) for p in band_path])
    return phonon


@dataclasses.dataclass(frozen=True)
class PhononSpectrum:
    """Band structure and density of states, from
    [`phonon_spectrum`][jmattersim.derivatives.phonon_spectrum].

    Attributes:
        distances: per band segment, (Q,) path length (phonopy's units, 1/Å).
        frequencies: per band segment, (Q, 3 n_atoms) THz (negative: imaginary).
        labels: the high-symmetry points' labels along the path (may be empty).
        connections: per segment, whether the next one starts where it ends.
        dos_frequencies: (M,) THz.
        dos: (M,) states per THz per unit cell.
        min_frequency: the lowest band frequency, THz.
        has_imaginary: a band frequency below -0.299 THz (upstream's threshold).
        figure: the matplotlib figure (bands beside the DOS), or None.
    """

    distances: list[np.ndarray]
    frequencies: list[np.ndarray]
    labels: list[str]
    connections: list[bool]
    dos_frequencies: np.ndarray
    dos: np.ndarray
    min_frequency: float
    has_imaginary: bool
    figure: Any = None


def phonon_spectrum(phonon: Phonopy, *, npoints: int = 101, plot: bool = True) -> PhononSpectrum:
    """Band structure and DOS of a ``Phonopy`` with force constants, as arrays and a plot.

    Args:
        phonon: a ``phonopy.Phonopy`` with force constants (from
            [`phonons`][jmattersim.derivatives.phonons], or any other).
        npoints: q-points per band segment when no band structure has been run
            (the "auto" path is run then).
        plot: draw the figure (matplotlib).

    Returns:
        A [`PhononSpectrum`][jmattersim.derivatives.PhononSpectrum], frequencies in THz.
    """
    if phonon.band_structure is None:
        phonon.auto_band_structure(npoints=npoints)
    if phonon.mesh is None:
        phonon.run_mesh(100.0)
    if phonon.total_dos is None:
        phonon.run_total_dos()
    bands, dos = phonon.band_structure, phonon.total_dos
    frequencies = [np.asarray(f) for f in bands.frequencies]
    lowest = float(min(f.min() for f in frequencies))
    labels = list(bands.labels or [])
    spectrum = PhononSpectrum(
        distances=[np.asarray(d) for d in bands.distances],
        frequencies=frequencies,
        labels=labels,
        connections=list(bands.path_connections),
        dos_frequencies=np.asarray(dos.frequency_points),
        dos=np.asarray(dos.dos),
        min_frequency=lowest,
        has_imaginary=lowest < IMAGINARY_THRESHOLD,
    )
    if plot:
        spectrum = dataclasses.replace(spectrum, figure=plot_spectrum(spectrum))
    return spectrum


def _ticks(spectrum: PhononSpectrum) -> tuple[list[float], list[str]]:
    """Segment ends along the path and their labels ("X|Y" at a jump)."""
    ticks = [float(spectrum.distances[0][0])]
    labels = iter(spectrum.labels)
    names = [next(labels, "")]
    for segment, connected in zip(spectrum.distances, spectrum.connections, strict=True):
        ticks.append(float(segment[-1]))
        end = next(labels, "")
        names.append(end if connected else f"{end}|{next(labels, '')}")
    names[-1] = names[-1].rstrip("|")
    names = [_pretty(name) for name in names]
    return ticks, names if any(names) else []


def _pretty(label: str) -> str:
    """phonopy's TeX labels ("$\\Gamma$", "$\\mathrm{X}$") as plain text."""
    for tex, text in (("\\Gamma", "Γ"), ("\\mathrm{", ""), ("}", ""), ("$", ""), ("GAMMA", "Γ")):
        label = label.replace(tex, text)
    return label


def plot_spectrum(
    spectrum: PhononSpectrum, *, overlay: PhononSpectrum | None = None, labels=("", "")
):
    """Bands beside the DOS (matplotlib); ``overlay``, if given, dashed on top."""
    import matplotlib.pyplot as plt

    figure, (bands, dos) = plt.subplots(
        1, 2, figsize=(8, 4), sharey=True, gridspec_kw={"width_ratios": [3, 1]}
    )
    for spec, style, label in ((spectrum, "-", labels[0]), (overlay, "--", labels[1])):
        if spec is None:
            continue
        color = "C0" if style == "-" else "C3"
        for k, (d, f) in enumerate(zip(spec.distances, spec.frequencies, strict=True)):
            bands.plot(d, f, style, color=color, lw=1, label=label if k == 0 and label else None)
        dos.plot(spec.dos, spec.dos_frequencies, style, color=color, lw=1)
    ticks, names = _ticks(spectrum)
    for x in ticks:
        bands.axvline(x, color="0.7", lw=0.5)
    bands.set_xticks(ticks, names) if names else bands.set_xticks([])
    bands.axhline(0, color="0.5", lw=0.5)
    bands.set_xlim(ticks[0], ticks[-1])
    bands.set_ylabel("frequency (THz)")
    if any(labels):
        bands.legend(loc="best")
    dos.set_xlabel("DOS (1/THz)")
    figure.tight_layout()
    return figure
