"""Host-built neighbour lists of a batch, for traced inputs: the topology of a batch
padded to a budget, the positions and lattices it was built at, and its skin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from ase import Atoms

from .arrays import Array, default_float
from .capacity import Capacity, Counts
from .checkpoint import Model
from .config import M3GNetConfig
from .graph import graph_of
from .padding import pad, total_counts
from .tensors import atoms_arrays
from .topology import Topology


class NeighborList(NamedTuple):
    """A host-built topology of a whole batch, padded to a budget.

    A pytree to pass into jitted functions (``forward_batch(..., neighbors=...)``),
    made by [`neighbor_list`][jmattersim.batch.neighbor_list]. E, T, N and G are the
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
    def budget(self) -> Capacity:
        """The [`Capacity`][jmattersim.Capacity] (nodes, edges, triplets, graphs)
        the list is padded to."""
        return Capacity.padded(
            Counts(
                self.reference_positions.shape[0],
                self.topology.n_edge,
                self.topology.n_triplet,
                self.reference_lattice.shape[0],
            )
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
    budget: Capacity | None = None,
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
            one budget (e.g. ``jmattersim.batch.LADDER[-1]``) to run many different
            batches through one compiled function.

    Returns:
        A [`NeighborList`][jmattersim.batch.NeighborList] padded to ``budget``.
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
    budget = Capacity.above(total) if budget is None else budget
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
        nbrs: the list, from [`neighbor_list`][jmattersim.batch.neighbor_list].
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
