"""Batches of crystals of different sizes as jraph graphs, and the seed fork's
``forward_batch`` API on top of them.

A batch is the concatenation of its structures (PyG style, as the seed):
atom_types (ΣN, max_z+1), positions (ΣN, 3), lattice (G, 3, 3) rows, and the
atom counts ``sizes`` (G,) (or a per-atom ``batch_index``). It becomes a jraph
``GraphsTuple`` padded to bucketed sizes (jraph's convention: one padding graph
holds every padding node), whose topology is rebuilt inside the compiled
function (:func:`jmattersim.energy.batch_predict`).

``forward_batch`` keeps the capacity it compiled for and grows it only when a
batch does not fit, so a stream of varying batches compiles a handful of times.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jraph
import numpy as np
from ase import Atoms

from . import sharding
from .config import M3GNetConfig
from .energy import EV_PER_A3_TO_GPA, Predictions, batch_predict
from .graph import molecule_box, neighbor_list, triplet_indices
from .io import Model
from .neighbors import Capacity, bucket_up, candidate_pairs, neighbors_in_threebody
from .validate import check_arrays, structure_label

Array = jnp.ndarray


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
    """An unpadded jraph graph of a batch (no edges: the topology is rebuilt
    inside the energy functions). pbc (G, 3) bool, default all periodic."""
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

    def pad(x: Array, n: int, fill: Array | None = None) -> Array:
        extra = jnp.zeros((n - x.shape[0],) + x.shape[1:], x.dtype) if fill is None else fill
        return jnp.concatenate([jnp.asarray(x), extra])

    lattice = graph.globals["lattice"]
    unit = jnp.broadcast_to(jnp.eye(3, dtype=lattice.dtype), (n_graph - real_graphs, 3, 3))
    n_node_pad = np.zeros(n_graph - real_graphs, np.int32)
    n_node_pad[0] = n_node - real_nodes
    return graph._replace(
        nodes={k: pad(v, n_node) for k, v in graph.nodes.items()},
        globals={"lattice": pad(lattice, n_graph, unit),
                 "pbc": pad(graph.globals["pbc"], n_graph, jnp.ones((n_graph - real_graphs, 3),
                                                                     bool))},
        n_node=np.concatenate([np.asarray(graph.n_node, np.int32), n_node_pad]),
        n_edge=np.zeros(n_graph, np.int32),
    )


def host_capacity(positions: np.ndarray, lattice: np.ndarray, sizes: np.ndarray,
                  pbc: np.ndarray, config: M3GNetConfig, headroom: float = 1.25) -> Capacity:
    """The capacity a batch needs (host neighbour lists, exact as upstream's),
    with ``headroom`` and every count rounded up to a bucket."""
    edges = triplets = pairs = 0
    k3 = 1
    start = 0
    for n, cell, periodic in zip(sizes, lattice, pbc, strict=True):
        pos = positions[start:start + n]
        start += n
        senders, _, _, d = neighbor_list(pos, cell, periodic, config.cutoff)
        trip = triplet_indices(senders, d, config.threebody_cutoff)
        edges, triplets = edges + len(senders), triplets + len(trip)
        k3 = max(k3, neighbors_in_threebody(senders, trip))
        pairs += candidate_pairs(int(n), cell, periodic, config.cutoff)
    return Capacity(
        max_edges=bucket_up(math.ceil(edges * headroom) + 1),
        max_triplets=bucket_up(math.ceil(triplets * headroom) + 1),
        max_neighbors=bucket_up(math.ceil(k3 * headroom) + 1),
        max_pairs=bucket_up(pairs),
    )


def atoms_arrays(atoms_list: Sequence[Atoms], config: M3GNetConfig
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """atom_types (one-hot), positions, lattice, sizes and pbc of ASE structures;
    a structure with no periodic direction goes into upstream's cubic box."""
    cells, pbcs = [], []
    for a in atoms_list:
        if not np.any(a.pbc):
            cells.append(molecule_box(a.positions, config))
            pbcs.append(np.ones(3, bool))
        else:
            cells.append(np.asarray(a.cell.array, float))
            pbcs.append(np.asarray(a.pbc, bool))
    numbers = np.concatenate([a.numbers for a in atoms_list])
    atom_types = np.eye(config.num_species)[numbers]
    positions = np.concatenate([a.positions for a in atoms_list])
    sizes = np.array([len(a) for a in atoms_list])
    return atom_types, positions, np.stack(cells), sizes, np.stack(pbcs)


# Per (config, dtype): the capacity and padded sizes forward_batch last compiled for.
_STREAM: dict[tuple, tuple[Capacity, int, int]] = {}


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
    capacity: Capacity | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, Array]:
    """Energies (and forces, stresses) of a batch of crystals: the seed's API.

    atom_types (ΣN, max_z+1), one-hot or soft; positions (ΣN, 3), Cartesian Å
    (fractional with ``positions_are_fractional``); lattice (G, 3, 3) rows;
    sizes (G,) or batch_index (ΣN,); pbc (G, 3) (default periodic). Any of them
    may be omitted when ``atoms_list`` gives it. Returns ``total_energy`` (G,)
    eV, and ``forces`` (ΣN, 3) eV/Å and ``stresses`` (G, 3, 3) GPa when asked.

    Concrete inputs are checked first (:func:`jmattersim.validate.check_arrays`):
    an :class:`~jmattersim.validate.InvalidStructureError` names the structure,
    the atom and the problem.

    Differentiable: ``jax.grad`` of a function of the outputs reaches
    atom_types, positions, lattice and params (forces and stresses included).
    Called with concrete arrays it picks the capacity itself and runs one
    compiled function per capacity; under ``jit``/``grad`` tracing pass
    ``capacity`` (e.g. :func:`jmattersim.neighbors.capacity_for`), and the
    outputs are NaN if it is too small.

    mesh: a 1-D device mesh (:func:`jmattersim.sharding.graph_mesh`): the graphs
    are dealt to the devices in balanced groups, one padded batch each, and run
    as one SPMD program (concrete inputs only).
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
    dtype = jnp.result_type(float)
    if not traced:
        dtype = np.result_type(jnp.asarray(positions).dtype, jnp.asarray(lattice).dtype,
                               jnp.asarray(atom_types).dtype)
    lattice = jnp.asarray(lattice, dtype).reshape(-1, 3, 3)
    positions = jnp.asarray(positions, dtype)
    atom_types = jnp.asarray(atom_types, dtype)
    if positions_are_fractional:
        positions = jnp.einsum("ni,nij->nj", positions, lattice[sizes_to_batch_index(sizes)])
    pbc = np.ones((len(sizes), 3), bool) if pbc is None else np.asarray(pbc, bool)
    n_atoms, n_graphs = int(sizes.sum()), len(sizes)
    if not traced:  # inside jit, see jmattersim.validate.checked_energy_fn
        labels = None
        if atoms_list is not None and len(atoms_list) == n_graphs:
            labels = [structure_label(k, a.numbers) for k, a in enumerate(atoms_list)]
        check_arrays(atom_types, positions, lattice, sizes, config, labels=labels)

    if mesh is not None:
        if traced:
            raise ValueError("forward_batch(mesh=...) takes concrete arrays, not traced ones")
        out = _sharded(model, dtype, atom_types, positions, lattice, sizes, pbc, soft_normalize,
                       include_forces or include_stresses, mesh)
    elif capacity is not None or traced:
        if capacity is None:
            raise ValueError("forward_batch under jit/grad tracing needs capacity=...: "
                             "see jmattersim.neighbors.capacity_for")
        n_node, n_graph = bucket_up(n_atoms + 1), n_graphs + 1
        out, _ = _run(batch_predict, model, dtype, atom_types, positions, lattice, sizes, pbc,
                      capacity, n_node, n_graph, soft_normalize,
                      include_forces or include_stresses)
    else:
        key = (config, np.dtype(dtype).name)
        needed = host_capacity(np.asarray(positions, float), np.asarray(lattice, float), sizes,
                               pbc, config)
        cap, n_node, n_graph = _STREAM.get(key, (needed, 0, 0))
        cap = cap if cap.covers(needed) else cap.union(needed)
        n_node, n_graph = max(n_node, bucket_up(n_atoms + 1)), max(n_graph, bucket_up(n_graphs + 1))
        _STREAM[key] = (cap, n_node, n_graph)
        out, overflow = _run(_batch_predict_jit, model, dtype, atom_types, positions, lattice,
                             sizes, pbc, cap, n_node, n_graph, soft_normalize,
                             include_forces or include_stresses)
        if bool(overflow):  # float rounding at the cutoff beyond the headroom: grow, redo
            _STREAM[key] = (cap.scaled(1.5), n_node, n_graph)
            return forward_batch(model, atom_types=atom_types, positions=positions,
                                 lattice=lattice, sizes=sizes, pbc=pbc,
                                 include_forces=include_forces,
                                 include_stresses=include_stresses,
                                 soft_normalize=soft_normalize)
    result = {"total_energy": out.energy[:n_graphs]}
    if include_forces:
        result["forces"] = out.forces[:n_atoms]
    if include_stresses:
        result["stresses"] = out.stress[:n_graphs] * EV_PER_A3_TO_GPA
    return result


_batch_predict_jit = jax.jit(batch_predict, static_argnums=(0, 1, 4, 5, 6))


def _run(fn, model: Model, dtype, atom_types, positions, lattice, sizes, pbc, capacity,
         n_node: int, n_graph: int, soft_normalize: bool, derivatives: bool):
    graph = pad_graph(graphs_tuple(atom_types, positions, lattice, sizes, pbc), n_node, n_graph)
    params = model.astype(dtype).params
    return fn(model.config, capacity, params, graph, soft_normalize, derivatives)


def _sharded(model: Model, dtype, atom_types, positions, lattice, sizes, pbc,
             soft_normalize: bool, derivatives: bool, mesh: jax.sharding.Mesh) -> Predictions:
    """forward_batch's computation with the graphs split across ``mesh``;
    returns unpadded Predictions in the input order (stress in eV/Å^3)."""
    config = model.config
    starts = np.concatenate([[0], np.cumsum(sizes)])
    groups = sharding.split_balanced(list(sizes), mesh.size)
    pos_host, lat_host = np.asarray(positions, float), np.asarray(lattice, float)
    nodes = [np.concatenate([np.arange(starts[g], starts[g + 1]) for g in group] or
                            [np.zeros(0, int)]).astype(int) for group in groups]
    cap = None
    for group, idx in zip(groups, nodes, strict=True):
        need = host_capacity(pos_host[idx], lat_host[group], sizes[group], pbc[group], config)
        cap = need if cap is None else cap.union(need)
    n_node = bucket_up(max(len(i) for i in nodes) + 1)
    n_graph = max(len(g) for g in groups) + 1
    padded = [pad_graph(graphs_tuple(atom_types[idx], positions[idx], lattice[np.asarray(group,
                                                                                         int)],
                                     sizes[group], pbc[group]), n_node, n_graph)
              for group, idx in zip(groups, nodes, strict=True)]
    stacked = sharding.place(sharding.stack(jax.device_get(padded)), mesh)
    run = _sharded_predict(config, cap, soft_normalize, derivatives, mesh)
    out, overflow = run(model.astype(dtype).params, stacked)
    if np.any(jax.device_get(overflow)):  # pragma: no cover - headroom covers rounding
        raise RuntimeError("neighbour capacity overflow in a sharded batch")
    parts = sharding.unstack(out, mesh.size)
    energy = np.zeros(len(sizes), dtype)
    forces = np.zeros((int(sizes.sum()), 3), dtype) if derivatives else None
    stress = np.zeros((len(sizes), 3, 3), dtype) if derivatives else None
    for group, idx, part in zip(groups, nodes, parts, strict=True):
        energy[group] = part.energy[:len(group)]
        if derivatives:
            forces[idx] = part.forces[:len(idx)]
            stress[group] = part.stress[:len(group)]
    return Predictions(energy, forces, stress)


@functools.lru_cache(maxsize=16)
def _sharded_predict(config: M3GNetConfig, capacity: Capacity, soft_normalize: bool,
                     derivatives: bool, mesh: jax.sharding.Mesh):
    def fn(params, graph):
        return batch_predict(config, capacity, params, graph, soft_normalize, derivatives)

    return sharding.over_devices(fn, mesh)


def compilations() -> int:
    """How many shapes ``forward_batch`` has compiled so far (this process)."""
    return _batch_predict_jit._cache_size()
