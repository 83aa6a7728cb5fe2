"""Energies, forces and stresses of many structures, in padded batches.

Structures are packed greedily into batches under a fixed capacity (nodes,
edges, triplets, graphs); every batch is padded to that same capacity, so a
whole data set runs through one compiled function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence

import jax
import numpy as np
from ase import Atoms

from .calculator import default_dtype, predict_jit
from .energy import EV_PER_A3_TO_GPA
from .graph import StructureGraph, batch_graphs, bucket, structure_graph
from .io import Model
from .validate import check_structures


@dataclasses.dataclass(frozen=True)
class Capacity:
    """Padded sizes of one batch: each strictly above what it may hold."""

    nodes: int = 1024
    edges: int = 32768
    triplets: int = 262144
    graphs: int = 33

    def fits(self, nodes: int, edges: int, triplets: int, graphs: int) -> bool:
        return (nodes < self.nodes and edges < self.edges and triplets < self.triplets
                and graphs < self.graphs)

    def covering(self, g: StructureGraph) -> Capacity:
        """This capacity, grown (to buckets) where the single graph ``g`` exceeds it."""
        return Capacity(
            nodes=max(self.nodes, bucket(g.n_node)),
            edges=max(self.edges, bucket(g.n_edge)),
            triplets=max(self.triplets, bucket(g.n_triplet)),
            graphs=self.graphs,
        )


@dataclasses.dataclass(frozen=True)
class Result:
    """energy eV; forces (N, 3) eV/Å; stress (3, 3) GPa (upstream's batch unit)."""

    energy: float
    forces: np.ndarray
    stress: np.ndarray


def pack(graphs: Sequence[StructureGraph], capacity: Capacity) -> Iterator[list[int]]:
    """Greedy, order-preserving chunks of graph indices that fit ``capacity``."""
    chunk: list[int] = []
    n = e = t = 0
    for k, g in enumerate(graphs):
        if chunk and not capacity.fits(n + g.n_node, e + g.n_edge, t + g.n_triplet,
                                       len(chunk) + 1):
            yield chunk
            chunk, n, e, t = [], 0, 0, 0
        chunk.append(k)
        n, e, t = n + g.n_node, e + g.n_edge, t + g.n_triplet
    if chunk:
        yield chunk


def evaluate_graphs(
    model: Model, graphs: Sequence[StructureGraph], capacity: Capacity | None = None,
    dtype=None,
) -> Iterator[Result]:
    """Results for ``graphs`` in order, batch by batch."""
    dtype = dtype or default_dtype()
    capacity = capacity or Capacity()
    for g in graphs:
        capacity = capacity.covering(g)
    params = model.astype(dtype).params
    for chunk in pack(graphs, capacity):
        batch = batch_graphs([graphs[k] for k in chunk], model.config, capacity.nodes,
                             capacity.edges, capacity.triplets, capacity.graphs,
                             dtype=np.dtype(dtype))
        out = jax.device_get(predict_jit(model.config, params, batch))
        start = 0
        for i, k in enumerate(chunk):
            n = graphs[k].n_node
            yield Result(float(out.energy[i]), np.asarray(out.forces[start:start + n]),
                         np.asarray(out.stress[i]) * EV_PER_A3_TO_GPA)
            start += n


def evaluate(model: Model, structures: Iterable[Atoms], capacity: Capacity | None = None,
             dtype=None) -> list[Result]:
    """Energy, forces and stress (GPa) of every structure, batched.

    Every structure is checked first (:func:`jmattersim.validate.check_atoms`): an
    :class:`~jmattersim.validate.InvalidStructureError` names the first bad one by
    its index ('structure 3 (Fe2O3): ...').
    """
    structures = list(structures)
    check_structures(structures, model.config)
    graphs = [structure_graph(a, model.config) for a in structures]
    return list(evaluate_graphs(model, graphs, capacity, dtype))
