"""The one capacity type, the static sizes of a topology, and its one rounding rule.

A :class:`Capacity` fixes the shapes of one compiled function: the edge and
triplet slots of every topology, the atom and structure slots of a padded batch,
and, where the topology is built under ``jit``, the bond slots per atom and the
image search. Every size a process compiles for is rounded by :func:`bucket`, so
a few shapes serve many structures.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple


class Counts(NamedTuple):
    """What a graph or a group of graphs holds."""

    nodes: int
    edges: int
    triplets: int
    graphs: int = 1

    def __add__(self, other: Counts) -> Counts:  # type: ignore[override]
        return Counts(*(a + b for a, b in zip(self, other, strict=True)))


@dataclasses.dataclass(frozen=True)
class Capacity:
    """Static sizes of a topology, counted over a whole batch (slots).

    One compiled function per capacity and dtype. A padded batch fits when each of
    its counts is strictly below its slots (jraph's padding needs one padding
    graph, node and edge at least); a topology built under ``jit`` that does not
    fit makes the energy NaN (or sets a neighbour list's overflow flag).

    Attributes:
        edges: edge (neighbour pair) slots.
        triplets: triplet (ordered pair of bonds of one atom) slots.
        neighbors: bonds of one atom within the three-body cutoff (topologies
            built under ``jit``; None where the host builds them).
        nodes: atom slots of a padded batch; for a topology built under ``jit``,
            the atoms per structure that the default ``pairs`` allows for (None:
            the batch's).
        graphs: structure slots of a padded batch.
        images: largest |n_k| tried per lattice vector (image searches under
            ``jit``).
        pairs: candidate pairs ``sum_g n_g^2 M_g``, M_g the lattice images tried
            for structure g (default: from ``images`` and the atoms).
    """

    edges: int
    triplets: int
    neighbors: int | None = None
    nodes: int | None = None
    graphs: int | None = None
    images: tuple[int, int, int] = (1, 1, 1)
    pairs: int | None = None

    @classmethod
    def above(cls, counts: Counts, steps: int = 2) -> Capacity:
        """The padded-batch capacity of :func:`bucket` sizes just above ``counts``.

        Args:
            counts: (nodes, edges, triplets, graphs) to hold.
            steps: rungs per doubling of the rounding ladder.

        Returns:
            The capacity (nodes, edges, triplets and graphs set).
        """
        return cls.padded(Counts(*(bucket(int(c), steps) for c in counts)))

    @classmethod
    def padded(cls, slots: Counts) -> Capacity:
        """The padded-batch capacity of these slots.

        Args:
            slots: (nodes, edges, triplets, graphs) slots.

        Returns:
            The capacity (nodes, edges, triplets and graphs set).
        """
        nodes, edges, triplets, graphs = (int(c) for c in slots)
        return cls(edges=edges, triplets=triplets, nodes=nodes, graphs=graphs)

    def holds(self, counts: Counts) -> bool:
        """Whether a padded batch of these counts fits.

        Args:
            counts: (nodes, edges, triplets, graphs) of the batch.

        Returns:
            True if every count is strictly below its slots.
        """
        return all(c < b for c, b in zip(counts, self.slots, strict=True))

    @property
    def slots(self) -> Counts:
        """(nodes, edges, triplets, graphs) slots of a padded batch."""
        if self.nodes is None or self.graphs is None:
            raise ValueError(f"{self} has no atom or structure slots (not a padded batch)")
        return Counts(self.nodes, self.edges, self.triplets, self.graphs)

    def cost(self) -> float:
        """Relative cost of a call (measured on CPU).

        Returns:
            Edge slots plus a hundredth of the triplet slots and a tenth of the
            node slots.
        """
        return self.edges + self.triplets / 100 + (self.nodes or 0) / 10

    def pair_slots(self, n_atoms: int) -> int:
        """The candidate budget of an image search under ``jit``.

        Args:
            n_atoms: node slots of the batch (used when ``nodes`` is None).

        Returns:
            ``pairs``, or the default from ``images`` and the atom count.
        """
        if self.pairs is not None:
            return self.pairs
        m = math.prod(2 * k + 1 for k in self.images)
        return (self.nodes or n_atoms) ** 2 * m

    def scaled(self, factor: float) -> Capacity:
        """A larger capacity, for re-allocation after an overflow.

        Args:
            factor: growth of the edges, triplets, neighbours and pairs (images
                grow by one).

        Returns:
            The new capacity.
        """
        grow = lambda n: None if n is None else math.ceil(n * factor)  # noqa: E731
        return dataclasses.replace(
            self,
            edges=grow(self.edges),
            triplets=grow(self.triplets),
            neighbors=grow(self.neighbors),
            pairs=grow(self.pairs),
            images=tuple(k + 1 for k in self.images),
        )


def bucket(n: int, steps: int = 2) -> int:
    """The smallest size above ``n`` on the ladder ``8 * 2^(k / steps)`` (in
    multiples of 8): the one rounding rule of every capacity. ``bucket(n - 1)`` is
    the smallest size of at least ``n``."""
    size, k = 8, 0
    while size <= n:
        k += 1
        size = int(math.ceil(8 * 2 ** (k / steps) / 8) * 8)
    return size


def model_capacity(edges: int, triplets: int, multiplier: float) -> Capacity:
    """The capacity of the edges and triplets within the cutoffs that a list with a
    skin holds (``edges`` and ``triplets`` of them now), which the model runs on.

    Each count gets a fifth of the list's headroom (``multiplier - 1``) plus a margin
    of ``8 / sqrt(count)`` times it, for small cells, whose counts jump most as atoms
    move; triplets (pairs of bonds) twice that, as their count moves about twice as
    much, relatively, as the bonds'.
    """

    def slots(count: int, order: int) -> int:
        extra = order * (multiplier - 1) * (0.2 + 8 / math.sqrt(max(count, 1)))
        return math.ceil(count * (1 + extra)) + 1

    return Capacity(edges=slots(edges, 1), triplets=slots(triplets, 2))
