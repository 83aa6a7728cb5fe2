"""Neighbour lists, triplets, the in-jit topology and padding (fast tier: no torch).

The host graph (what upstream builds) is checked against ASE's neighbour list and
a brute-force count of triplets; the in-jit topology against the host graph; the
padded batch against jraph's convention and the budget rules.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list as ase_neighbor_list

from jmattersim._src.capacity import Capacity, Counts
from jmattersim._src.config import M3GNetConfig
from jmattersim._src.graph import structure_graph
from jmattersim._src.neighbors import capacity_for, topology
from jmattersim._src.padding import pad, total_counts
from jmattersim._src.tensors import (
    batch_index_to_sizes,
    graphs_tuple,
    pad_graph,
    sizes_to_batch_index,
)
from jmattersim.testing import ARCHITECTURES

from conftest import mptrj_frames, special_structures

pytestmark = pytest.mark.fast

CONFIG = M3GNetConfig(**ARCHITECTURES["small"])  # cutoffs 5 Å and 4 Å, as published


def random_cells(count: int, seed: int = 0) -> list[Atoms]:
    """Triclinic cells of 1 to 6 atoms with lattice vectors of 2.2 to 6 Å: most are
    shorter than the cutoff, so many images of one atom are neighbours."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        n = int(rng.integers(1, 7))
        cell = np.diag(rng.uniform(2.2, 6.0, 3)) + rng.uniform(-1.0, 1.0, (3, 3)) * (1 - np.eye(3))
        atoms = Atoms(
            numbers=rng.integers(1, 90, n), scaled_positions=rng.random((n, 3)), cell=cell, pbc=True
        )
        if n == 1 or atoms.get_all_distances(mic=True)[np.triu_indices(n, 1)].min() > 0.8:
            out.append(atoms)
    return out


def cases() -> dict[str, Atoms]:
    out = dict(special_structures())
    out.update({f"random_{k}": a for k, a in enumerate(random_cells(12))})
    out.update({f"mptrj_{k}": a for k, a in enumerate(mptrj_frames(40)[::8])})
    return out


CASES = cases()


def edge_set(i, j, shifts) -> set[tuple]:
    return {(int(a), int(b), *map(int, np.rint(s))) for a, b, s in zip(i, j, shifts, strict=True)}


@pytest.mark.parametrize("key", sorted(CASES))
def test_edges_equal_ase_neighbor_list(key):
    atoms = CASES[key]
    g = structure_graph(atoms, CONFIG)
    # the graph's positions are upstream's (wrapped into the cell; a molecule in its box)
    same = Atoms(numbers=g.numbers, positions=g.positions, cell=g.cell, pbc=g.pbc)
    i, j, shifts = ase_neighbor_list("ijS", same, CONFIG.cutoff)
    ours = edge_set(g.topology.senders, g.topology.receivers, g.topology.shifts)
    assert len(ours) == g.n_edge, "an edge listed twice"
    assert ours == edge_set(i, j, shifts), key
    d = np.linalg.norm(
        g.positions[g.topology.senders]
        - g.positions[g.topology.receivers]
        - g.topology.shifts @ g.cell,
        axis=1,
    )
    np.testing.assert_allclose(g.distances, d, atol=1e-9)
    assert (g.distances < CONFIG.cutoff).all() and (g.distances > 0).all()


@pytest.mark.parametrize("key", sorted(CASES))
def test_triplets_are_every_ordered_pair_of_short_bonds_of_a_centre(key):
    g = structure_graph(CASES[key], CONFIG)
    short = g.distances <= CONFIG.threebody_cutoff
    per_atom = np.bincount(g.topology.senders[short], minlength=g.n_node)
    assert g.n_triplet == int((per_atom * (per_atom - 1)).sum())
    ij, ik = g.topology.triplets.T
    assert (ij != ik).all() and (g.topology.senders[ij] == g.topology.senders[ik]).all()
    assert short[ij].all() and short[ik].all()
    assert len({(int(a), int(b)) for a, b in g.topology.triplets}) == g.n_triplet


@pytest.mark.parametrize("key", ["si_diamond", "triclinic_oxide", "random_3"])
def test_in_jit_topology_equals_host_graph(key):
    atoms = CASES[key]
    g = structure_graph(atoms, CONFIG)
    capacity = capacity_for([atoms], CONFIG)
    topo = jax.jit(topology, static_argnums=(3, 4))(
        jnp.asarray(g.positions), jnp.asarray(g.cell)[None], jnp.array([g.n_node]), CONFIG, capacity
    )
    assert not bool(topo.overflow)
    m = np.asarray(topo.edge_mask)
    s, r = np.asarray(topo.senders)[m], np.asarray(topo.receivers)[m]
    assert edge_set(s, r, np.asarray(topo.shifts)[m]) == edge_set(
        g.topology.senders, g.topology.receivers, g.topology.shifts
    ), key
    assert int(np.asarray(topo.triplet_mask).sum()) == g.n_triplet


def test_topology_flags_overflow_instead_of_dropping_edges():
    atoms = CASES["triclinic_oxide"]
    capacity = capacity_for([atoms], CONFIG)
    small = capacity.scaled(0.5)
    topo = jax.jit(topology, static_argnums=(3, 4))(
        jnp.asarray(atoms.positions),
        jnp.asarray(atoms.cell.array)[None],
        jnp.array([len(atoms)]),
        CONFIG,
        small,
    )
    assert bool(topo.overflow)


def test_pad_follows_jraph_and_keeps_padding_apart():
    graphs = [
        structure_graph(CASES[k], CONFIG) for k in ("si_diamond", "h2o_molecule", "triclinic_oxide")
    ]
    total = total_counts(graphs)
    assert total == Counts(
        sum(g.n_node for g in graphs),
        sum(g.n_edge for g in graphs),
        sum(g.n_triplet for g in graphs),
        3,
    )
    budget = Capacity(
        nodes=total.nodes + 5, edges=total.edges + 7, triplets=total.triplets + 3, graphs=5
    )
    batch = pad(graphs, budget, CONFIG)
    gt = batch.graph
    assert gt.n_node.sum() == budget.nodes and gt.n_edge.sum() == budget.edges
    # exact: integer counts; the padding lattice is set to the identity, not computed
    np.testing.assert_array_equal(gt.n_node[:3], [g.n_node for g in graphs])
    assert gt.n_node[3] == 5 and gt.n_node[4] == 0  # jraph: the first padding graph holds them
    real = total.edges
    assert (gt.senders[real:] == total.nodes).all() and (gt.receivers[real:] == total.nodes).all()
    assert batch.topology.triplet_mask.sum() == total.triplets
    assert (batch.topology.triplets[total.triplets :] == real).all()
    np.testing.assert_array_equal(gt.globals["lattice"][3], np.eye(3))  # never singular
    # every real edge stays within its own graph
    graph_of_node = np.repeat(np.arange(5), gt.n_node)
    assert (graph_of_node[gt.senders[:real]] == graph_of_node[gt.receivers[:real]]).all()


def test_pad_refuses_a_budget_without_room_for_padding():
    graphs = [structure_graph(bulk("Si", "diamond", 5.43), CONFIG)]
    exact = total_counts(graphs)
    with pytest.raises(ValueError, match="cannot hold"):
        pad(graphs, Capacity.padded(exact), CONFIG)
    pad(
        graphs,
        Capacity.padded(Counts(exact.nodes + 1, exact.edges + 1, exact.triplets + 1, 2)),
        CONFIG,
    )


def test_sizes_and_batch_index_round_trip():
    sizes = np.array([2, 0, 5, 1])
    index = sizes_to_batch_index(sizes)
    # exact: integer indices
    np.testing.assert_array_equal(index, [0, 0, 2, 2, 2, 2, 2, 3])
    np.testing.assert_array_equal(batch_index_to_sizes(index, 4), sizes)
    with pytest.raises(ValueError, match="sorted"):
        batch_index_to_sizes([0, 1, 0])


def test_pad_graph_follows_jraph_convention():
    import jraph

    g = graphs_tuple(
        np.ones((3, 95), np.float32),
        np.zeros((3, 3), np.float32),
        np.tile(np.eye(3, dtype=np.float32), (2, 1, 1)),
        [1, 2],
    )
    ours = pad_graph(g, 8, 4)
    theirs = jraph.pad_with_graphs(g._replace(globals={"lattice": g.globals["lattice"]}), 8, 0, 4)
    # exact: integer counts and masks; padding atom types are copied zeros, not computed
    np.testing.assert_array_equal(ours.n_node, theirs.n_node)
    np.testing.assert_array_equal(
        jraph.get_graph_padding_mask(ours), jraph.get_graph_padding_mask(theirs)
    )
    np.testing.assert_array_equal(ours.nodes["atom_types"], theirs.nodes["atom_types"])
