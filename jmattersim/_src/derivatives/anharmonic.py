"""Third-order force constants and lattice thermal conductivity, in phono3py.

phono3py displaces pairs of atoms (u1 on atom i, then u2 on atom j) and builds
fc3 from the forces, with a solver linear in them: the fc2 of the structure
displaced by u1 is fitted to ``F(u1 + u2) - F(u1)`` over the u2, and fc3 to its
change with u1. Here those forces are the exact polynomial a finite-difference
code approximates, ``F(u1) = -H u1`` and ``F(u1 + u2) = -H (u1 + u2) - Φ3[u1, u2]``,
with H the exact Hessian (phonopy's symmetry-distributed fc2, see
:mod:`jmattersim._src.derivatives.phonons`) and ``Φ3[u1, u2] = d3E/dr dr dr . u1 . u2`` the
exact mixed third derivative (a ``jax.linearize`` of a Hessian-vector product,
one compiled call per first displacement and chunk of second displacements).
phono3py's solver then returns the exact third derivatives, and its
symmetrisation and thermal-conductivity code apply unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from ase import Atoms

from ..arrays import default_float
from ..checkpoint import Model
from ..checks import structure_label
from ..config import M3GNetConfig
from .chunks import chunked
from .hessian import gradient_in_positions
from .minimum import warn_residual
from .phonons import (
    AMPLITUDE,
    ase_atoms,
    default_mesh,
    exact_displacement_forces,
    phonopy_atoms,
    primitive_matrix_of,
    supercell_matrix_of,
)

if TYPE_CHECKING:  # phono3py is the optional "phonons" extra
    from phono3py import Phono3py

PAIRS_CHUNK = 8  # second displacements per compiled call (larger is slower on CPU)


def _mixed(config: M3GNetConfig, n_real: int):
    """f(params, batch, x, u1 (n, 3), U2 (T, n, 3)) -> (H(x) u1 (n, 3), (T, n, 3)) eV/Å
    (u in Å): the Hessian-vector product, and Φ3[u1, u2_t], its derivative along
    each u2_t."""

    def mixed(params, batch, x, u1, second):
        grad = gradient_in_positions(config, params, batch, n_real)

        def hvp(y):
            return jax.jvp(grad, (y,), (u1,))[1]

        product, along = jax.linearize(hvp, x)
        return product, jax.vmap(along)(second)

    return mixed


def mixed_third_derivatives(
    model: Model,
    supercell: Atoms,
    first: tuple[int, np.ndarray],
    second: Sequence[tuple[int, np.ndarray]],
    *,
    chunk: int | None = None,
    dtype=None,
) -> np.ndarray:
    """``Φ3[u1, u2]`` for one first displacement and many second ones.

    Args:
        model: the model.
        supercell: the undisplaced supercell (N atoms).
        first: (atom, displacement (3,) Å).
        second: (atom, displacement (3,) Å) pairs.
        chunk: second displacements per compiled call (padded: one shape for every
            call); default PAIRS_CHUNK, fewer where one call would exceed the
            memory budget.
        dtype: float type (float64 under x64 by default).

    Returns:
        (len(second), N, 3) eV/Å: ``sum d3E/dr_k dr_i dr_j u1_i u2_j``, float64.

    Raises:
        MemoryError: a given ``chunk`` would need more memory than is available.
    """
    dtype = np.dtype(dtype or default_float())
    n = len(supercell)
    u1 = np.zeros((n, 3), dtype)
    u1[first[0]] = first[1]

    def displacements(start: int, stop: int, size: int) -> tuple[np.ndarray]:
        """(size, N, 3): the second displacements ``[start, stop)``, padded with zeros."""
        out = np.zeros((size, n, 3), dtype)
        for k, (atom, u2) in enumerate(second[start:stop]):
            out[k, atom] = u2
        return (out,)

    _, phis = chunked(
        model,
        supercell,
        _mixed,
        len(second),
        displacements,
        fixed=(u1,),
        cap=PAIRS_CHUNK,
        size=chunk,
        snug=False,
        what="fc3",
        dtype=dtype,
    )
    return phis.astype(np.float64)


def _mixed_by_span(model, supercell, first, pairs, dtype) -> np.ndarray:
    """Φ3[u1, u2] for every (atom, u2) in ``pairs``, from one evaluation per direction
    of an orthonormal basis of each atom's displacements (phono3py's ± pairs and
    repeated directions cost nothing more: Φ3 is linear in u2)."""
    basis, where = [], []
    for atom in sorted({j for j, _ in pairs}):
        vectors = np.array([u for j, u in pairs if j == atom])
        _, sv, vt = np.linalg.svd(vectors, full_matrices=False)
        rank = int((sv > 1e-8 * sv[0]).sum())
        where.append((atom, len(basis), vt[:rank]))
        basis.extend((atom, v) for v in vt[:rank])
    phis = mixed_third_derivatives(model, supercell, first, basis, dtype=dtype)
    table = {atom: (start, vt) for atom, start, vt in where}
    out = []
    for atom, u2 in pairs:
        start, vt = table[atom]
        out.append(np.einsum("r,rjb->jb", vt @ u2, phis[start : start + len(vt)]))
    return np.array(out)


def fc3(
    model: Model,
    atoms: Atoms,
    supercell_matrix: Any,
    *,
    phonon_supercell_matrix: Any = None,
    primitive_matrix: Any = "auto",
    symprec: float = 1e-5,
    cutoff_pair_distance: float | None = None,
    dtype=None,
) -> Phono3py:
    """Exact third-order (and second-order) force constants, in a ``phono3py.Phono3py``.

    phono3py chooses the displacement pairs its symmetry needs; each pair gets
    the exact mixed third derivative of the energy instead of a force
    calculation on a doubly displaced supercell, and phono3py's own solver and
    symmetrisation (as upstream MatterSim's ``bte.py`` runs them) build fc2 and
    fc3 from them, free of finite-displacement error.

    Args:
        model: the [`Model`][jmattersim.Model].
        atoms: the unit cell (periodic), at a minimum (else a warning names the
            largest residual force).
        supercell_matrix: int, (3,) or (3, 3): the supercell for fc3.
        phonon_supercell_matrix: the supercell for fc2 (default: the fc3 one).
        primitive_matrix: phonopy's primitive matrix ("auto" finds it).
        symprec: symmetry tolerance, Å.
        cutoff_pair_distance: phono3py's pair cutoff, Å (default: all pairs).
        dtype (numpy dtype or None): float64 under ``jax_enable_x64``, else float32.

    Returns:
        ``phono3py.Phono3py`` with ``fc2`` (eV/Å²) and ``fc3`` (eV/Å³, compact:
        (n_primitive, N, N, 3, 3, 3)) set and symmetrised.

    Raises:
        ImportError: phono3py is not installed (``pip install "jmattersim[phonons]"``).
        InvalidStructureError: bad input, naming the structure and the problem.
    """
    try:
        from phono3py import Phono3py
        from phonopy import Phonopy
    except ImportError as e:
        raise ImportError('fc3 needs phono3py: pip install "jmattersim[phonons]"') from e
    if not np.all(atoms.pbc):
        raise ValueError(
            f"{structure_label(None, atoms.numbers)}: fc3 needs a structure periodic in all "
            "three directions"
        )
    matrix = supercell_matrix_of(supercell_matrix)
    phonon_matrix = (
        matrix if phonon_supercell_matrix is None else supercell_matrix_of(phonon_supercell_matrix)
    )
    unitcell = phonopy_atoms(atoms)
    primitive_matrix = primitive_matrix_of(unitcell, primitive_matrix, symprec)
    ph3 = Phono3py(
        unitcell,
        supercell_matrix=matrix,
        primitive_matrix=primitive_matrix,
        phonon_supercell_matrix=phonon_matrix,
        symprec=symprec,
        log_level=0,
    )
    ph3.generate_displacements(distance=AMPLITUDE, cutoff_pair_distance=cutoff_pair_distance)

    # the full Hessian of the fc3 supercell, by symmetry from a few exact rows
    harmonic = Phonopy(
        unitcell, supercell_matrix=matrix, primitive_matrix=primitive_matrix, symprec=symprec
    )
    harmonic.generate_displacements(distance=AMPLITUDE)
    displacements = [(d["number"], d["displacement"]) for d in harmonic.dataset["first_atoms"]]
    harmonic.forces, residual = exact_displacement_forces(
        model, ase_atoms(harmonic.supercell), displacements, dtype=dtype
    )
    warn_residual(atoms, residual[harmonic.supercell.u2s_map], what="fc3")
    harmonic.produce_force_constants(show_drift=False)
    hessian = np.asarray(harmonic.force_constants)  # (N, N, 3, 3), [i, j, a, b]

    def linear(atom: int, u: np.ndarray) -> np.ndarray:
        return -np.einsum("a,jab->jb", np.asarray(u, float), hessian[atom])

    # fc2 in the phonon supercell from exact linear forces, as upstream's bte.py
    # produces it (symmetrised)
    displacements = [(d["number"], d["displacement"]) for d in ph3.phonon_dataset["first_atoms"]]
    if np.array_equal(phonon_matrix, matrix):
        ph3.phonon_forces = np.stack([linear(int(i), u) for i, u in displacements])
    else:
        ph3.phonon_forces, _ = exact_displacement_forces(
            model, ase_atoms(ph3.phonon_supercell), displacements, dtype=dtype
        )
    ph3.produce_fc2()
    ph3.symmetrize_fc2()

    supercell = ase_atoms(ph3.supercell)
    dataset = ph3.dataset
    count = max(
        [d["id"] for d in dataset["first_atoms"]]
        + [s["id"] for d in dataset["first_atoms"] for s in d["second_atoms"]]
    )
    forces = np.zeros((count, len(supercell), 3))
    for first in dataset["first_atoms"]:
        i, u1 = int(first["number"]), np.asarray(first["displacement"], float)
        f1 = linear(i, u1)
        forces[first["id"] - 1] = f1
        seconds = [s for s in first["second_atoms"] if s.get("included", True)]
        pairs = [(int(s["number"]), np.asarray(s["displacement"], float)) for s in seconds]
        for s, (j, u2), phi in zip(
            seconds, pairs, _mixed_by_span(model, supercell, (i, u1), pairs, dtype), strict=True
        ):
            forces[s["id"] - 1] = f1 + linear(j, u2) - phi
    ph3.forces = forces
    ph3.produce_fc3()
    ph3.symmetrize_fc3()
    return ph3


def thermal_conductivity(
    model: Model,
    atoms: Atoms,
    supercell_matrix: Any,
    *,
    mesh: Any = None,
    temperatures: Sequence[float] = (300.0,),
    method: str = "RTA",
    is_isotope: bool = False,
    ph3: Phono3py | None = None,
    **fc3_options: Any,
) -> tuple[np.ndarray, np.ndarray, Phono3py]:
    """Lattice thermal conductivity from exact fc2 and fc3 (phono3py).

    Args:
        model: the [`Model`][jmattersim.Model].
        atoms: the unit cell, at a minimum.
        supercell_matrix: int, (3,) or (3, 3): the supercell for fc3 (and fc2).
        mesh: q-point mesh (3 ints); default upstream's (6x the supercell
            diagonal, 3x if anisotropic).
        temperatures: K.
        method: "RTA" or "LBTE" (phono3py's solvers).
        is_isotope: include isotope scattering.
        ph3: a ``Phono3py`` with force constants (from [`fc3`][jmattersim.derivatives.fc3])
            to reuse; else computed.
        **fc3_options: passed to [`fc3`][jmattersim.derivatives.fc3].

    Returns:
        (temperatures (T,) K, kappa (T, 6) W/(m K) in Voigt order xx, yy, zz,
        yz, xz, xy, the ``Phono3py``).
    """
    if method.upper() not in ("RTA", "LBTE"):
        raise ValueError(f'method must be "RTA" or "LBTE", not {method!r}')
    if ph3 is None:
        ph3 = fc3(model, atoms, supercell_matrix, **fc3_options)
    ph3.mesh_numbers = default_mesh(supercell_matrix_of(supercell_matrix)) if mesh is None else mesh
    ph3.init_phph_interaction()
    temps = np.asarray(temperatures, dtype=float)
    ph3.run_thermal_conductivity(
        temperatures=temps, is_LBTE=method.upper() == "LBTE", is_isotope=is_isotope
    )
    kappa = np.asarray(ph3.thermal_conductivity.kappa)
    kappa = kappa.reshape(-1, len(temps), 6)[0]
    return temps, kappa, ph3
