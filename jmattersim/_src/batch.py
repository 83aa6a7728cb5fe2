"""Batches of crystals given as tensors, and ``forward_batch``: a PyTorch-style
batch API (atom types, positions, lattices and per-structure sizes in; energies,
forces and stresses in GPa out).

A batch is the concatenation of its structures (PyG style): atom_types (ΣN, max_z+1),
one-hot or any distribution over elements; positions (ΣN, 3); lattice (G, 3, 3)
rows; and the atom counts ``sizes`` (G,) (or a per-atom ``batch_index``).

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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jraph
import numpy as np
from ase import Atoms

from . import engine
from .array_checks import check_arrays
from .arrays import Array, default_float
from .checkpoint import Model
from .checks import structure_label
from .config import M3GNetConfig
from .energy import EV_PER_A3_TO_GPA, Predictions, batch_predict, energies, forces_and_stress
from .geometry import periodic_cell
from .graph import StructureGraph, graph_of
from .neighbors import TopologyCapacity, bucket_up
from .padding import BatchBudget, pad, tight_budget, total_counts
from .topology import Topology


def sizes_to_batch_index(sizes: Sequence[int] | np.ndarray) -> np.ndarray:
    """The graph index of each atom, from the atom counts of the graphs.

    Args:
        sizes: (G,) atoms per graph.

    Returns:
        (ΣN,) int64: the index of the graph each atom belongs to (PyG's ``batch``).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    return np.repeat(np.arange(len(sizes)), sizes)


def batch_index_to_sizes(
    batch_index: Sequence[int] | np.ndarray, n_graphs: int | None = None
) -> np.ndarray:
    """The atom counts of the graphs, from a sorted per-atom graph index.

    Args:
        batch_index: (ΣN,) graph index of each atom, sorted (each graph's atoms
            contiguous).
        n_graphs: G, the number of graphs (default: the largest index + 1; pass
            it when trailing graphs may be empty).

    Returns:
        (G,) int64 atom counts.

    Raises:
        ValueError: ``batch_index`` is not sorted.
    """
    batch_index = np.asarray(batch_index, dtype=np.int64)
    if batch_index.size and np.any(np.diff(batch_index) < 0):
        raise ValueError("batch_index must be sorted: the atoms of each graph contiguous")
    return np.bincount(batch_index, minlength=n_graphs or 0)


def graphs_tuple(
    atom_types: Array,
    positions: Array,
    lattice: Array,
    sizes: Sequence[int] | np.ndarray,
    pbc: Array | None = None,
) -> jraph.GraphsTuple:
    """An unpadded jraph graph of a batch of crystals, the input of
    [`batch_energy_fn`][jmattersim.batch_energy_fn] (after
    [`pad_graph`][jmattersim.pad_graph]). It has no edges: the energy builds the
    topology inside.

    Args:
        atom_types: (ΣN, max_z+1) one-hot or soft distributions over elements.
        positions: (ΣN, 3) Cartesian positions in Å, each structure's atoms contiguous.
        lattice: (G, 3, 3) lattice vectors as rows, Å.
        sizes: (G,) atoms per structure.
        pbc: (G, 3) periodic directions; default all periodic.

    Returns:
        A ``jraph.GraphsTuple`` with ``nodes={"atom_types", "positions"}`` and
        ``globals={"lattice", "pbc"}``.
    """
    sizes = np.asarray(sizes, dtype=np.int32)
    if pbc is None:
        pbc = np.ones((len(sizes), 3), bool)
    return jraph.GraphsTuple(
        nodes={"atom_types": atom_types, "positions": positions},
        edges=None,
        senders=np.zeros(0, np.int32),
        receivers=np.zeros(0, np.int32),
        globals={"lattice": lattice, "pbc": jnp.asarray(pbc, bool)},
        n_node=sizes,
        n_edge=np.zeros(len(sizes), np.int32),
    )


def pad_graph(graph: jraph.GraphsTuple, n_node: int, n_graph: int) -> jraph.GraphsTuple:
    """Pads a graph from [`graphs_tuple`][jmattersim.graphs_tuple] like
    ``jraph.pad_with_graphs`` (one padding graph holds the padding nodes, empty graphs
    after it), but traceable: it works on arrays being differentiated or
    jit-compiled. Padding lattices are unit cubes, so nothing divides by zero.

    Args:
        graph: the unpadded graph.
        n_node: nodes after padding; more than the graph's real nodes.
        n_graph: graphs after padding; more than the graph's real graphs.

    Returns:
        The padded ``jraph.GraphsTuple`` (fixed shapes: one compilation per size).

    Raises:
        ValueError: ``n_node`` or ``n_graph`` leaves no room for the padding graph.
    """
    real_nodes, real_graphs = int(np.sum(graph.n_node)), len(graph.n_node)
    if n_node <= real_nodes or n_graph <= real_graphs:
        raise ValueError(
            f"cannot pad {real_nodes} nodes / {real_graphs} graphs to "
            f"{n_node} / {n_graph}: padding needs one more of each"
        )

    def pad_rows(x: Array, n: int, fill: Array | None = None) -> Array:
        extra = jnp.zeros((n - x.shape[0],) + x.shape[1:], x.dtype) if fill is None else fill
        return jnp.concatenate([jnp.asarray(x), extra])

    lattice = graph.globals["lattice"]
    unit = jnp.broadcast_to(jnp.eye(3, dtype=lattice.dtype), (n_graph - real_graphs, 3, 3))
    n_node_pad = np.zeros(n_graph - real_graphs, np.int32)
    n_node_pad[0] = n_node - real_nodes
    return graph._replace(
        nodes={k: pad_rows(v, n_node) for k, v in graph.nodes.items()},
        globals={
            "lattice": pad_rows(lattice, n_graph, unit),
            "pbc": pad_rows(
                graph.globals["pbc"], n_graph, jnp.ones((n_graph - real_graphs, 3), bool)
            ),
        },
        n_node=np.concatenate([np.asarray(graph.n_node, np.int32), n_node_pad]),
        n_edge=np.zeros(n_graph, np.int32),
    )


# ---------------------------------------------------------------- host neighbour lists


class NeighborList(NamedTuple):
    """A host-built topology of a whole batch, padded to a budget.

    A pytree to pass into jitted functions (``forward_batch(..., neighbors=...)``),
    made by [`neighbor_list`][jmattersim.neighbor_list]. E, T, N and G are the
    budget's edge, triplet, node and graph counts: ``forward_batch`` pads the
    batch to them.

    Attributes:
        topology: the batch's :class:`~jmattersim._src.topology.Topology`
            (edges, image shifts, triplets and their masks), padded to the budget.
        reference_positions: (N, 3) Å, the positions the list was built at
            (padded like the batch).
        reference_lattice: (G, 3, 3) Å, rows are lattice vectors, the lattices
            it was built at.
        skin: () Å added to both cutoffs when the list was built.
    """

    topology: Topology
    reference_positions: Array
    reference_lattice: Array
    skin: Array

    @property
    def budget(self) -> BatchBudget:
        """The [`BatchBudget`][jmattersim.BatchBudget] (nodes, edges, triplets,
        graphs) the list is padded to."""
        return BatchBudget(
            self.reference_positions.shape[0],
            self.topology.n_edge,
            self.topology.n_triplet,
            self.reference_lattice.shape[0],
        )


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
    """Neighbours and triplets of a batch, built on the host (exact, as upstream's).

    Build it outside ``jit`` from concrete positions, then pass it to
    ``forward_batch(..., neighbors=...)`` under ``jit``/``grad``. Give the
    structures either as ASE ``atoms_list`` or as arrays.

    Args:
        model: a [`Model`][jmattersim.Model] or its
            [`M3GNetConfig`][jmattersim.M3GNetConfig] (only the cutoffs are used).
        atoms_list: G ASE structures (instead of the arrays).
        positions: (ΣN, 3) Cartesian positions, Å.
        lattice: (G, 3, 3) Å, rows are lattice vectors.
        sizes: (G,) atoms per structure.
        pbc: (G, 3) bool periodic directions (default: all periodic).
        skin: Å added to both cutoffs, so that the list holds while atoms move
            less than ``skin / 2``.
        budget: the padded sizes. By default each count is rounded up to the
            next of a ladder of sizes about 1.4 apart: little padding, and a
            jitted function recompiles only when a batch changes size class. Pass
            one budget (e.g. ``jmattersim.LADDER[-1]``) to run many different
            batches through one compiled function.

    Returns:
        A [`NeighborList`][jmattersim.NeighborList] padded to ``budget``.
    """
    config = getattr(model, "config", model)
    if atoms_list is not None:
        _, positions, lattice, sizes, pbc = atoms_arrays(atoms_list, config)
    positions = np.asarray(positions, float)
    lattice = np.asarray(lattice, float).reshape(-1, 3, 3)
    sizes = np.asarray(sizes, np.int64)
    pbc = np.ones((len(sizes), 3), bool) if pbc is None else np.asarray(pbc, bool)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    graphs = [
        graph_of(positions[starts[g] : starts[g + 1]], lattice[g], pbc[g], config, skin=skin)
        for g in range(len(sizes))
    ]
    total = total_counts(graphs)
    budget = tight_budget(total) if budget is None else budget
    dtype = default_float()
    batch = pad(graphs, budget, config, dtype)
    g = batch.graph
    return NeighborList(
        topology=batch.topology,
        reference_positions=g.nodes["positions"],
        reference_lattice=g.globals["lattice"],
        skin=np.asarray(skin, dtype),
    )


def neighbors_stale(nbrs: NeighborList, positions: Array, lattice: Array) -> Array:
    """Whether a pair may have come within the cutoffs that ``nbrs`` does not list.

    True when twice the largest atom displacement plus the largest change of a
    listed image offset (``n @ lattice``) exceeds the list's skin. Traceable.

    Args:
        nbrs: the list, from [`neighbor_list`][jmattersim.neighbor_list].
        positions: (N, 3) Å, padded like ``nbrs`` (its budget's node count).
        lattice: (G, 3, 3) Å rows, padded like ``nbrs``.

    Returns:
        () bool: True when the list must be rebuilt.
    """
    moved = jnp.max(jnp.linalg.norm(positions - nbrs.reference_positions, axis=-1))
    # |n @ dL| <= |n| |dL|_2, bounded over all edges and graphs
    strained = jnp.max(jnp.linalg.norm(lattice - nbrs.reference_lattice, ord=2, axis=(1, 2)))
    reach = jnp.max(jnp.linalg.norm(nbrs.topology.shifts, axis=-1))
    return 2 * moved + strained * reach > nbrs.skin


# ---------------------------------------------------------------------- forward_batch


def atoms_arrays(
    atoms_list: Sequence[Atoms], config: M3GNetConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """atom_types (one-hot), positions, lattice, sizes and pbc of ASE structures;
    a structure with no periodic direction goes into upstream's cubic box."""
    cells, pbcs = zip(
        *(periodic_cell(a.positions, a.cell.array, a.pbc, config.cutoff) for a in atoms_list),
        strict=True,
    )
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
    """Energies (and forces, stresses) of a batch of crystals: a PyTorch-compatible
    batch signature.

    Concrete inputs are checked first
    ([`check_arrays`][jmattersim.check_arrays]): an
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
        neighbors: a [`NeighborList`][jmattersim.NeighborList] built
            beforehand, for traced inputs.
        capacity: a [`TopologyCapacity`][jmattersim.TopologyCapacity]: the
            topology is rebuilt inside, for traced inputs.
        mesh: spread the batches over the devices of this mesh
            ([`graph_mesh`][jmattersim.graph_mesh]); concrete inputs only.

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
    if not traced:  # inside jit, see jmattersim.checked_energy_fn
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
        n_node, n_graph = bucket_up(n_atoms + 1), n_graphs + 1
        graph = pad_graph(graphs_tuple(atom_types, positions, lattice, sizes, pbc), n_node, n_graph)
        out, _ = batch_predict(
            config, capacity, model.astype(dtype).params, graph, soft_normalize, derivatives
        )
    elif traced:
        raise ValueError(
            "forward_batch under jit/grad tracing needs neighbors= (a list "
            "built beforehand with jmattersim.neighbor_list) or capacity="
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
        result["stresses"] = out.stress[:n_graphs] * EV_PER_A3_TO_GPA
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
