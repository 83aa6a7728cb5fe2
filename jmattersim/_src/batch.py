"""``forward_batch``: a PyTorch-style batch API (atom types, positions, lattices and
per-structure sizes in, as :mod:`jmattersim._src.tensors` lays them out; energies,
forces and stresses in GPa out).

Three ways to a topology, one model underneath:

- concrete inputs: host neighbour lists, packed into the budgets of
  :mod:`jmattersim._src.engine` (the path of the calculator and ``evaluate``);
- ``neighbors=``: a list built on the host beforehand (:func:`neighbor_list`), for
  inputs traced by ``jit``/``grad``: distances are recomputed inside from the
  traced positions and lattice, and a list built with a ``skin`` stays valid
  while atoms move less than ``skin / 2`` (``neighbors_stale`` says when not);
- ``capacity=``: the topology rebuilt inside the traced function from all
  candidate pairs (:func:`jmattersim._src.neighbors.topology`), when no list can be
  built beforehand (the in-jit path of :func:`jmattersim.energy_fn`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jraph
import numpy as np
from ase import Atoms

from . import engine
from .array_checks import check_arrays
from .arrays import Array
from .batch_energy import batch_predict
from .capacity import Capacity, bucket
from .checkpoint import Model
from .checks import structure_label
from .energy import energies, forces_and_stress
from .graph import StructureGraph, graph_of
from .neighbor_list import NeighborList, neighbors_stale
from .predictions import Predictions
from .tensors import (
    atoms_arrays,
    batch_index_to_sizes,
    graphs_tuple,
    pad_graph,
    sizes_to_batch_index,
)


def _is_traced(*xs: Any) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in xs)


def forward_batch(
    model: Model,
    atoms_list: Sequence[Atoms] | None = None,
    *,
    atom_types: Array | None = None,
    positions: Array | None = None,
    lattice: Array | None = None,
    sizes: Sequence[int] | None = None,
    batch_index: Sequence[int] | None = None,
    pbc: Array | None = None,
    include_forces: bool = False,
    include_stresses: bool = False,
    soft_normalize: bool = True,
    positions_are_fractional: bool = False,
    neighbors: NeighborList | None = None,
    capacity: Capacity | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, Array]:
    """Energies (and forces, stresses) of a batch of crystals: a PyTorch-compatible
    batch signature.

    Concrete inputs are checked first
    ([`check_arrays`][jmattersim.checks.check_arrays]): an
    [`InvalidStructureError`][jmattersim.InvalidStructureError] names the
    structure, the atom and the problem. They run through the evaluation engine
    (host neighbour lists, a few fixed budgets, compiled functions shared with
    the calculator and ``evaluate``).

    Differentiable: ``jax.grad`` of a function of the outputs reaches
    atom_types, positions and lattice (forces and stresses included). Under
    ``jit``/``grad`` pass ``neighbors`` (built beforehand from concrete
    positions) or ``capacity`` (the topology rebuilt inside from all candidate
    pairs; slower); outputs are NaN if a capacity is too small.

    Args:
        model: the [`Model`][jmattersim.Model].
        atoms_list: G ASE structures; any of the arrays below may then be
            omitted.
        atom_types: (ΣN, max_z + 1), one-hot or any distribution over elements
            (columns are atomic numbers 0..max_z).
        positions: (ΣN, 3) Cartesian Å (fractional with
            ``positions_are_fractional``).
        lattice: (G, 3, 3) Å, rows are lattice vectors.
        sizes: (G,) atoms per structure (or give ``batch_index``).
        batch_index: (ΣN,) sorted graph index of each atom.
        pbc: (G, 3) bool periodic directions (default: all periodic).
        include_forces: also return forces.
        include_stresses: also return stresses.
        soft_normalize: apply the per-element scale and shift as
            ``atom_types @ scale`` (True), or those of each atom's most likely
            element (False).
        positions_are_fractional: ``positions`` are fractional coordinates.
        neighbors: a [`NeighborList`][jmattersim.batch.NeighborList] built
            beforehand, for traced inputs.
        capacity: a [`Capacity`][jmattersim.Capacity]: the
            topology is rebuilt inside, for traced inputs.
        mesh: spread the batches over the devices of this mesh
            ([`graph_mesh`][jmattersim.batch.graph_mesh]); concrete inputs only.

    Returns:
        A dict: ``total_energy`` (G,) eV; ``forces`` (ΣN, 3) eV/Å with
        ``include_forces``; ``stresses`` (G, 3, 3) **GPa** with
        ``include_stresses`` (upstream's batch unit; ASE's sign, positive under
        tension); ``neighbors_stale`` () bool with ``neighbors``.

    Raises:
        InvalidStructureError: a concrete input is unfit for the model.
        ValueError: inputs are missing, or traced without ``neighbors`` or
            ``capacity``.
    """
    config = model.config
    if atoms_list is not None:
        at0, pos0, lat0, sizes0, pbc0 = atoms_arrays(atoms_list, config)
        atom_types = at0 if atom_types is None else atom_types
        lattice = lat0 if lattice is None else lattice
        sizes = sizes0 if sizes is None and batch_index is None else sizes
        pbc = pbc0 if pbc is None else pbc
        if positions is None:
            positions, positions_are_fractional = pos0, False
    if atom_types is None or positions is None or lattice is None:
        raise ValueError(
            "forward_batch needs atom_types, positions and lattice "
            "(or atoms_list to take them from)"
        )
    if sizes is None:
        if batch_index is None:
            raise ValueError("forward_batch needs sizes or batch_index (or atoms_list)")
        sizes = batch_index_to_sizes(batch_index, len(lattice))
    sizes = np.asarray(sizes, dtype=np.int64)
    traced = _is_traced(atom_types, positions, lattice)
    if traced:
        dtype = jnp.result_type(positions, lattice)
    else:
        dtype = np.result_type(
            jnp.asarray(positions).dtype, jnp.asarray(lattice).dtype, jnp.asarray(atom_types).dtype
        )
    lattice = jnp.asarray(lattice, dtype).reshape(-1, 3, 3)
    positions = jnp.asarray(positions, dtype)
    atom_types = jnp.asarray(atom_types, dtype)
    if positions_are_fractional:
        positions = jnp.einsum("ni,nij->nj", positions, lattice[sizes_to_batch_index(sizes)])
    pbc = np.ones((len(sizes), 3), bool) if pbc is None else np.asarray(pbc, bool)
    n_atoms, n_graphs = int(sizes.sum()), len(sizes)
    derivatives = include_forces or include_stresses
    if not traced:  # inside jit, see jmattersim.checks.checked_energy_fn
        labels = None
        if atoms_list is not None and len(atoms_list) == n_graphs:
            labels = [structure_label(k, a.numbers) for k, a in enumerate(atoms_list)]
        check_arrays(atom_types, positions, lattice, sizes, config, labels=labels)

    extra = {}
    if neighbors is not None:
        out, stale = _with_neighbors(
            model,
            atom_types,
            positions,
            lattice,
            sizes,
            pbc,
            neighbors,
            soft_normalize,
            derivatives,
        )
        extra["neighbors_stale"] = stale
    elif capacity is not None:
        n_node, n_graph = bucket(n_atoms), n_graphs + 1
        graph = pad_graph(graphs_tuple(atom_types, positions, lattice, sizes, pbc), n_node, n_graph)
        out, _ = batch_predict(
            config, capacity, model.astype(dtype).params, graph, soft_normalize, derivatives
        )
    elif traced:
        raise ValueError(
            "forward_batch under jit/grad tracing needs neighbors= (a list "
            "built beforehand with jmattersim.batch.neighbor_list) or capacity="
        )
    else:
        out = _concrete(
            model,
            np.asarray(atom_types),
            np.asarray(positions, float),
            np.asarray(lattice, float),
            sizes,
            pbc,
            derivatives,
            dtype,
            mesh,
            soft_normalize,
        )
    result = {"total_energy": out.energy[:n_graphs], **extra}
    if include_forces:
        result["forces"] = out.forces[:n_atoms]
    if include_stresses:
        result["stresses"] = out.stress_gpa[:n_graphs]  # upstream's key and unit
    return result


def _concrete(
    model: Model,
    atom_types,
    positions,
    lattice,
    sizes,
    pbc,
    derivatives: bool,
    dtype,
    mesh,
    soft_normalize: bool,
) -> Predictions:
    """forward_batch on concrete arrays: host graphs through the engine."""
    starts = np.concatenate([[0], np.cumsum(sizes)])
    graphs: list[StructureGraph] = [
        graph_of(
            positions[starts[g] : starts[g + 1]],
            lattice[g],
            pbc[g],
            model.config,
            atom_types=atom_types[starts[g] : starts[g + 1]],
        )
        for g in range(len(sizes))
    ]
    outs = engine.run(
        model,
        graphs,
        derivatives=derivatives,
        dtype=dtype,
        mesh=mesh,
        soft_normalize=soft_normalize,
    )
    energy = jnp.asarray(np.array([o.energy for o in outs], dtype))
    if not derivatives:
        return Predictions(energy, None, None)
    return Predictions(
        energy,
        jnp.asarray(np.concatenate([o.forces for o in outs])),
        jnp.asarray(np.stack([o.stress for o in outs])),
    )


def _with_neighbors(
    model: Model,
    atom_types,
    positions,
    lattice,
    sizes,
    pbc,
    nbrs: NeighborList,
    soft_normalize: bool,
    derivatives: bool,
) -> tuple[Predictions, Array]:
    """forward_batch with a host-built list: the batch padded to the list's budget,
    distances recomputed, pairs beyond the cutoffs masked."""
    budget = nbrs.budget
    dtype = positions.dtype
    graph = pad_graph(
        graphs_tuple(atom_types, positions, lattice, sizes, pbc), budget.nodes, budget.graphs
    )
    real = jraph.get_graph_padding_mask(graph._replace(n_node=jnp.asarray(graph.n_node)))
    lat = graph.globals["lattice"]
    topo = nbrs.topology._replace(shifts=jnp.asarray(nbrs.topology.shifts, dtype))
    params = model.astype(dtype).params

    def energy_of(pos, strain=None):
        e = energies(
            model.config,
            params,
            graph.nodes["atom_types"],
            pos,
            lat,
            graph.n_node,
            topo,
            strain,
            soft_normalize,
            within_cutoffs=True,
        )
        return jnp.where(real, e, 0.0)

    stale = neighbors_stale(nbrs, graph.nodes["positions"], lat)
    if not derivatives:
        return Predictions(energy_of(graph.nodes["positions"]), None, None), stale
    return forces_and_stress(energy_of, graph.nodes["positions"], lat, real), stale
