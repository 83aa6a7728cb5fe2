"""Batches of crystals given as tensors, and ``forward_batch``: a PyTorch-style
batch API (atom types, positions, lattices and per-structure sizes in; energies,
forces and stresses in GPa out).

A batch is the concatenation of its structures (PyG style): atom_types (ΣN, max_z+1),
one-hot or any distribution over elements; positions (ΣN, 3); lattice (G, 3, 3)
rows; and the atom counts ``sizes`` (G,) (or a per-atom ``batch_index``).

Three ways to a topology, one model underneath:

- concrete inputs: host neighbour lists, packed into the budgets of
  :mod:`jmattersim.engine` (the path of the calculator and ``evaluate``);
- ``neighbors=``: a list built on the host beforehand (:func:`neighbor_list`), for
  inputs traced by ``jit``/``grad``: distances are recomputed inside from the
  traced positions and lattice, and a list built with a ``skin`` stays valid
  while atoms move less than ``skin / 2`` (``neighbors_stale`` says when not);
- ``capacity=``: the topology rebuilt inside the traced function from all
  candidate pairs (:func:`jmattersim.neighbors.topology`), when no list can be
  built beforehand (the in-jit path of :func:`jmattersim.energy_fn`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jraph
import numpy as np
from ase import Atoms

from . import engine
from .arrays import Array, default_float
from .checkpoint import Model
from .config import M3GNetConfig
from .energy import EV_PER_A3_TO_GPA, Predictions, batch_predict, energies
from .geometry import periodic_cell
from .graph import StructureGraph, graph_of
from .neighbors import Topology, TopologyCapacity, bucket_up
from .padding import BatchBudget, pad, tight_budget, total_counts
from .validate import check_arrays, structure_label


def sizes_to_batch_index(sizes: Sequence[int] | np.ndarray) -> np.ndarray:
    """(ΣN,) graph index of each atom, from the atom counts (G,)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    return np.repeat(np.arange(len(sizes)), sizes)


def batch_index_to_sizes(batch_index: Sequence[int] | np.ndarray,
                         n_graphs: int | None = None) -> np.ndarray:
    """(G,) atom counts from a sorted per-atom graph index (ΣN,)."""
    batch_index = np.asarray(batch_index, dtype=np.int64)
    if batch_index.size and np.any(np.diff(batch_index) < 0):
        raise ValueError("batch_index must be sorted: the atoms of each graph contiguous")
    return np.bincount(batch_index, minlength=n_graphs or 0)


def graphs_tuple(atom_types: Array, positions: Array, lattice: Array,
                 sizes: Sequence[int] | np.ndarray, pbc: Array | None = None
                 ) -> jraph.GraphsTuple:
    """An unpadded jraph graph of a batch (no edges: the topology comes separately).
    pbc (G, 3) bool, default all periodic."""
    sizes = np.asarray(sizes, dtype=np.int32)
    if pbc is None:
        pbc = np.ones((len(sizes), 3), bool)
    return jraph.GraphsTuple(
        nodes={"atom_types": atom_types, "positions": positions},
        edges=None, senders=np.zeros(0, np.int32), receivers=np.zeros(0, np.int32),
        globals={"lattice": lattice, "pbc": jnp.asarray(pbc, bool)},
        n_node=sizes, n_edge=np.zeros(len(sizes), np.int32),
    )


def pad_graph(graph: jraph.GraphsTuple, n_node: int, n_graph: int) -> jraph.GraphsTuple:
    """Pads like :func:`jraph.pad_with_graphs` (one padding graph holds the
    padding nodes, empty graphs after it), but traceable: works on arrays being
    differentiated or jit-compiled. Padding lattices are unit cubes."""
    real_nodes, real_graphs = int(np.sum(graph.n_node)), len(graph.n_node)
    if n_node <= real_nodes or n_graph <= real_graphs:
        raise ValueError(f"cannot pad {real_nodes} nodes / {real_graphs} graphs to "
                         f"{n_node} / {n_graph}: padding needs one more of each")

    def pad_rows(x: Array, n: int, fill: Array | None = None) -> Array:
        extra = jnp.zeros((n - x.shape[0],) + x.shape[1:], x.dtype) if fill is None else fill
        return jnp.concatenate([jnp.asarray(x), extra])

    lattice = graph.globals["lattice"]
    unit = jnp.broadcast_to(jnp.eye(3, dtype=lattice.dtype), (n_graph - real_graphs, 3, 3))
    n_node_pad = np.zeros(n_graph - real_graphs, np.int32)
    n_node_pad[0] = n_node - real_nodes
    return graph._replace(
        nodes={k: pad_rows(v, n_node) for k, v in graph.nodes.items()},
        globals={"lattice": pad_rows(lattice, n_graph, unit),
                 "pbc": pad_rows(graph.globals["pbc"], n_graph,
                                 jnp.ones((n_graph - real_graphs, 3), bool))},
        n_node=np.concatenate([np.asarray(graph.n_node, np.int32), n_node_pad]),
        n_edge=np.zeros(n_graph, np.int32),
    )


# ---------------------------------------------------------------- host neighbour lists


class NeighborList(NamedTuple):
    """A host-built topology of a whole batch, padded to a budget: a pytree to
    pass into jitted functions (``forward_batch(..., neighbors=...)``).

    senders, receivers (E,) int32; shifts (E, 3) integer images (float); edge_mask
    (E,); triplets (T, 2) edge indices; triplet_mask (T,); reference_positions
    (N, 3) Å and reference_lattice (G, 3, 3) rows: the geometry it was built at
    (padded like the batch); skin () Å. N and G are the budget's node and graph
    counts: ``forward_batch`` pads the batch to them.
    """

    senders: Array
    receivers: Array
    shifts: Array
    edge_mask: Array
    triplets: Array
    triplet_mask: Array
    reference_positions: Array
    reference_lattice: Array
    skin: Array

    @property
    def budget(self) -> BatchBudget:
        return BatchBudget(self.reference_positions.shape[0], self.senders.shape[0],
                           self.triplets.shape[0], self.reference_lattice.shape[0])


def neighbor_list(
    model: Model | M3GNetConfig,
    atoms_list: Sequence[Atoms] | None = None,
    *,
    positions: Any = None,
    lattice: Any = None,
    sizes: Sequence[int] | None = None,
    pbc: Any = None,
    skin: float = 0.0,
    budget: BatchBudget | None = None,
) -> NeighborList:
    """Neighbours and triplets of a batch, built on the host (exact, as upstream's),
    for ``forward_batch(..., neighbors=...)`` under ``jit``/``grad``.

    Structures as ASE ``atoms_list`` or as arrays: positions (ΣN, 3) Cartesian Å,
    lattice (G, 3, 3) rows, sizes (G,), pbc (G, 3) (default periodic). skin: Å
    added to both cutoffs, so that the list holds while atoms move less than
    ``skin / 2``. budget: the padded sizes (a
    :class:`~jmattersim.padding.BatchBudget`); by default each count rounded up
    to the next size of :func:`~jmattersim.padding.bucket` (about 1.4 apart):
    little padding, and a jitted function recompiles only when a batch changes
    size class. Pass one budget (e.g. ``jmattersim.engine.LADDER[-1]``) to run
    many different batches through one compiled function.
    """
    config = getattr(model, "config", model)
    if atoms_list is not None:
        _, positions, lattice, sizes, pbc = atoms_arrays(atoms_list, config)
    positions = np.asarray(positions, float)
    lattice = np.asarray(lattice, float).reshape(-1, 3, 3)
    sizes = np.asarray(sizes, np.int64)
    pbc = np.ones((len(sizes), 3), bool) if pbc is None else np.asarray(pbc, bool)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    graphs = [graph_of(positions[starts[g]:starts[g + 1]], lattice[g], pbc[g], config,
                       skin=skin) for g in range(len(sizes))]
    total = total_counts(graphs)
    budget = tight_budget(total) if budget is None else budget
    dtype = default_float()
    batch = pad(graphs, budget, config, dtype)
    g = batch.graph
    return NeighborList(
        senders=g.senders, receivers=g.receivers, shifts=g.edges["shifts"],
        edge_mask=np.arange(budget.edges) < total.edges, triplets=batch.triplets,
        triplet_mask=batch.triplet_mask, reference_positions=g.nodes["positions"],
        reference_lattice=g.globals["lattice"], skin=np.asarray(skin, dtype))


def neighbors_stale(nbrs: NeighborList, positions: Array, lattice: Array) -> Array:
    """() bool: True when a pair may have come within the cutoffs that ``nbrs``
    does not list: twice the largest atom displacement plus the largest change of
    a listed image offset (``n @ lattice``) exceeds the skin. positions and lattice
    padded like ``nbrs`` (N, 3), (G, 3, 3)."""
    moved = jnp.max(jnp.linalg.norm(positions - nbrs.reference_positions, axis=-1))
    # |n @ dL| <= |n| |dL|_2, bounded over all edges and graphs
    strained = jnp.max(jnp.linalg.norm(lattice - nbrs.reference_lattice, ord=2, axis=(1, 2)))
    reach = jnp.max(jnp.linalg.norm(nbrs.shifts, axis=-1))
    return 2 * moved + strained * reach > nbrs.skin


# ---------------------------------------------------------------------- forward_batch


def atoms_arrays(atoms_list: Sequence[Atoms], config: M3GNetConfig
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """atom_types (one-hot), positions, lattice, sizes and pbc of ASE structures;
    a structure with no periodic direction goes into upstream's cubic box."""
    cells, pbcs = zip(*(periodic_cell(a.positions, a.cell.array, a.pbc, config.cutoff)
                        for a in atoms_list), strict=True)
    numbers = np.concatenate([a.numbers for a in atoms_list])
    atom_types = np.eye(config.num_species)[numbers]
    positions = np.concatenate([a.positions for a in atoms_list])
    sizes = np.array([len(a) for a in atoms_list])
    return atom_types, positions, np.stack(cells), sizes, np.stack(pbcs)


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
    capacity: TopologyCapacity | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, Array]:
    """Energies (and forces, stresses) of a batch of crystals.

    atom_types (ΣN, max_z+1), one-hot or soft; positions (ΣN, 3), Cartesian Å
    (fractional with ``positions_are_fractional``); lattice (G, 3, 3) rows;
    sizes (G,) or batch_index (ΣN,); pbc (G, 3) (default periodic). Any of them
    may be omitted when ``atoms_list`` gives it.

    Returns ``total_energy`` (G,) eV; ``forces`` (ΣN, 3) eV/Å and ``stresses``
    (G, 3, 3) GPa when asked; ``neighbors_stale`` () bool with ``neighbors``.

    Concrete inputs are checked first (:func:`jmattersim.validate.check_arrays`):
    an :class:`~jmattersim.validate.InvalidStructureError` names the structure,
    the atom and the problem. They run through :mod:`jmattersim.engine` (host
    neighbour lists, a few fixed budgets, compiled functions shared with the
    calculator and ``evaluate``); ``mesh`` spreads the batches over devices.

    Differentiable: ``jax.grad`` of a function of the outputs reaches
    atom_types, positions and lattice (forces and stresses included). Under
    ``jit``/``grad`` pass ``neighbors`` (:func:`neighbor_list`, built beforehand
    from concrete positions) or ``capacity``
    (:func:`jmattersim.neighbors.capacity_for`: the topology rebuilt inside from
    all candidate pairs; slower); outputs are NaN if a capacity is too small.
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
        raise ValueError("forward_batch needs atom_types, positions and lattice "
                         "(or atoms_list to take them from)")
    if sizes is None:
        if batch_index is None:
            raise ValueError("forward_batch needs sizes or batch_index (or atoms_list)")
        sizes = batch_index_to_sizes(batch_index, len(lattice))
    sizes = np.asarray(sizes, dtype=np.int64)
    traced = _is_traced(atom_types, positions, lattice)
    if traced:
        dtype = jnp.result_type(positions, lattice)
    else:
        dtype = np.result_type(jnp.asarray(positions).dtype, jnp.asarray(lattice).dtype,
                               jnp.asarray(atom_types).dtype)
    lattice = jnp.asarray(lattice, dtype).reshape(-1, 3, 3)
    positions = jnp.asarray(positions, dtype)
    atom_types = jnp.asarray(atom_types, dtype)
    if positions_are_fractional:
        positions = jnp.einsum("ni,nij->nj", positions, lattice[sizes_to_batch_index(sizes)])
    pbc = np.ones((len(sizes), 3), bool) if pbc is None else np.asarray(pbc, bool)
    n_atoms, n_graphs = int(sizes.sum()), len(sizes)
    derivatives = include_forces or include_stresses
    if not traced:  # inside jit, see jmattersim.validate.checked_energy_fn
        labels = None
        if atoms_list is not None and len(atoms_list) == n_graphs:
            labels = [structure_label(k, a.numbers) for k, a in enumerate(atoms_list)]
        check_arrays(atom_types, positions, lattice, sizes, config, labels=labels)

    extra = {}
    if neighbors is not None:
        out, stale = _with_neighbors(model, atom_types, positions, lattice, sizes, pbc,
                                     neighbors, soft_normalize, derivatives)
        extra["neighbors_stale"] = stale
    elif capacity is not None:
        n_node, n_graph = bucket_up(n_atoms + 1), n_graphs + 1
        graph = pad_graph(graphs_tuple(atom_types, positions, lattice, sizes, pbc), n_node,
                          n_graph)
        out, _ = batch_predict(config, capacity, model.astype(dtype).params, graph,
                               soft_normalize, derivatives)
    elif traced:
        raise ValueError("forward_batch under jit/grad tracing needs neighbors= (a list "
                         "built beforehand with jmattersim.neighbor_list) or capacity=")
    else:
        out = _concrete(model, np.asarray(atom_types), np.asarray(positions, float),
                        np.asarray(lattice, float), sizes, pbc, derivatives, dtype, mesh,
                        soft_normalize)
    result = {"total_energy": out.energy[:n_graphs], **extra}
    if include_forces:
        result["forces"] = out.forces[:n_atoms]
    if include_stresses:
        result["stresses"] = out.stress[:n_graphs] * EV_PER_A3_TO_GPA
    return result


def _concrete(model: Model, atom_types, positions, lattice, sizes, pbc, derivatives: bool,
              dtype, mesh, soft_normalize: bool) -> Predictions:
    """forward_batch on concrete arrays: host graphs through the engine."""
    starts = np.concatenate([[0], np.cumsum(sizes)])
    graphs: list[StructureGraph] = [
        graph_of(positions[starts[g]:starts[g + 1]], lattice[g], pbc[g], model.config,
                 atom_types=atom_types[starts[g]:starts[g + 1]])
        for g in range(len(sizes))]
    outs = engine.run(model, graphs, derivatives=derivatives, dtype=dtype, mesh=mesh,
                      soft_normalize=soft_normalize)
    energy = jnp.asarray(np.array([o.energy for o in outs], dtype))
    if not derivatives:
        return Predictions(energy, None, None)
    return Predictions(energy, jnp.asarray(np.concatenate([o.forces for o in outs])),
                       jnp.asarray(np.stack([o.stress for o in outs])))


def _with_neighbors(model: Model, atom_types, positions, lattice, sizes, pbc,
                    nbrs: NeighborList, soft_normalize: bool, derivatives: bool
                    ) -> tuple[Predictions, Array]:
    """forward_batch with a host-built list: the batch padded to the list's budget,
    distances recomputed, pairs beyond the cutoffs masked."""
    budget = nbrs.budget
    dtype = positions.dtype
    graph = pad_graph(graphs_tuple(atom_types, positions, lattice, sizes, pbc), budget.nodes,
                      budget.graphs)
    real = jraph.get_graph_padding_mask(graph._replace(n_node=jnp.asarray(graph.n_node)))
    lat = graph.globals["lattice"]
    topo = Topology(nbrs.senders, nbrs.receivers, jnp.asarray(nbrs.shifts, dtype),
                    nbrs.edge_mask, nbrs.triplets, nbrs.triplet_mask, jnp.asarray(False))
    params = model.astype(dtype).params

    def energy_of(pos, strain=None):
        e = energies(model.config, params, graph.nodes["atom_types"], pos, lat, graph.n_node,
                     topo, strain, soft_normalize, within_cutoffs=True)
        return jnp.where(real, e, 0.0)

    stale = neighbors_stale(nbrs, graph.nodes["positions"], lat)
    if not derivatives:
        return Predictions(energy_of(graph.nodes["positions"]), None, None), stale

    def total(pos, strain):
        e = energy_of(pos, strain)
        return jnp.sum(e), e

    (_, e), (de_dr, de_deps) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
        graph.nodes["positions"], jnp.zeros_like(lat))
    volume = jnp.abs(jnp.linalg.det(lat))
    return Predictions(e, -de_dr, de_deps / volume[:, None, None]), stale
