"""The one carrier of a topology: edges (i, j, n), triplets, their masks and an
overflow flag.

It holds numpy leaves on the host (a structure's graph, a padded batch) or JAX
leaves on the device (the list built under ``jit``, a jax-md neighbour list), as
jraph's ``GraphsTuple`` does. The edge vector of edge (i, j, n) is
``r_i - (r_j + n @ lattice)`` (lattice rows are lattice vectors).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .arrays import Array


class Topology(NamedTuple):
    """Edges and triplets of one structure or of a padded batch (a pytree).

    Attributes:
        senders: (E,) int, atom i of each edge (the centre of its triplets).
        receivers: (E,) int, atom j.
        shifts: (E, 3) integer image n of the receiver (int on the host, float
            under ``jit``).
        edge_mask: (E,) bool, False for padding edges.
        triplets: (T, 2) int edge indices (ij, ik) sharing the centre i.
        triplet_mask: (T,) bool, False for padding triplets.
        overflow: () bool, True when a capacity was too small to hold it.
    """

    senders: Array
    receivers: Array
    shifts: Array
    edge_mask: Array
    triplets: Array
    triplet_mask: Array
    overflow: Array

    @property
    def n_edge(self) -> int:
        """Edge slots, E."""
        return self.senders.shape[0]

    @property
    def n_triplet(self) -> int:
        """Triplet slots, T."""
        return self.triplets.shape[0]


def host_topology(
    senders: np.ndarray, receivers: np.ndarray, shifts: np.ndarray, triplets: np.ndarray
) -> Topology:
    """An unpadded host topology: every edge and triplet real, no overflow."""
    return Topology(
        senders=senders,
        receivers=receivers,
        shifts=shifts,
        edge_mask=np.ones(len(senders), bool),
        triplets=triplets,
        triplet_mask=np.ones(len(triplets), bool),
        overflow=np.asarray(False),
    )
