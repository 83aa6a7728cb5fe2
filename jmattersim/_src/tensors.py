"""Batches of crystals as tensors (PyG style): per-atom graph indices, atom counts,
and jraph ``GraphsTuple`` built and padded traceably.

A batch is the concatenation of its structures: atom_types (ΣN, max_z+1), one-hot or
any distribution over elements; positions (ΣN, 3) Å; lattice (G, 3, 3) rows; and the
atom counts ``sizes`` (G,) (or a per-atom ``batch_index``).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import jraph
import numpy as np
from ase import Atoms

from .arrays import Array
from .config import M3GNetConfig
from .geometry import periodic_cell


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
    [`batch_energy_fn`][jmattersim.batch.batch_energy_fn] (after
    [`pad_graph`][jmattersim.batch.pad_graph]). It has no edges: the energy builds the
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
    """Pads a graph from [`graphs_tuple`][jmattersim.batch.graphs_tuple] like
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
