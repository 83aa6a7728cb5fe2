"""Batches of crystals as tensors and jraph graphs: PyG-style batch indices, padded
``GraphsTuple`` batches and their pure energy functions, host-built neighbour lists
for traced inputs, the engine's ladder of padded sizes, and a device mesh.

See the user guide's "Many structures at once" and "The differentiable core" pages.
"""

from ._src.batch_energy import batch_energy_fn, batch_properties_fn
from ._src.engine import LADDER
from ._src.neighbor_list import NeighborList, neighbor_list, neighbors_stale
from ._src.sharding import graph_mesh
from ._src.tensors import batch_index_to_sizes, graphs_tuple, pad_graph, sizes_to_batch_index

__all__ = [
    "LADDER",
    "NeighborList",
    "batch_energy_fn",
    "batch_index_to_sizes",
    "batch_properties_fn",
    "graph_mesh",
    "graphs_tuple",
    "neighbor_list",
    "neighbors_stale",
    "pad_graph",
    "sizes_to_batch_index",
]
