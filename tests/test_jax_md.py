"""jax-md neighbour lists: edge sets against ASE's neighbour list on mptrj frames
and on hard cells, energies and forces against the ASE calculator.

Edge sets of 200 frames (all 1000 in the long tier) are computed in vmapped
buckets of one padded shape (the same :func:`image_edges` the "images" method
runs); the cell-list method (jax-md's ``partition.neighbor_list``) goes through
the public interface.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import primitive_neighbor_list

import jmattersim
from jmattersim._src.graph import structure_graph
from jmattersim._src.jax_md import neighbor_energy
from jmattersim._src.jax_md_lists import image_edges, image_range, perpendicular_widths
from jmattersim._src.neighbors import build_triplets
from jmattersim._src.topology import Topology
from jmattersim.jax_md import (
    MatterSimNeighborList,
    atoms_to_jax_md,
    mattersim_neighbor_list,
    one_hot,
)

from conftest import MPTRJ

CUTOFF, CUTOFF3 = 5.0, 4.0


@pytest.fixture(scope="session")
def frames() -> list[Atoms]:
    return ase.io.read(MPTRJ, index=":")


def hard_cells() -> dict[str, Atoms]:
    """A 1-atom cell with a 2 Å lattice vector, a needle-shaped triclinic cell, a
    slab periodic in x and y only (atoms within the cutoff across its open face)."""
    one = Atoms(
        "Cu",
        positions=[[0.3, 0.2, 0.1]],
        cell=[[2.0, 0.0, 0.0], [0.7, 3.1, 0.0], [0.4, -0.9, 3.4]],
        pbc=True,
    )
    rng = np.random.default_rng(11)
    frac = np.stack([rng.random(6), rng.random(6), (np.arange(6) + rng.random(6) * 0.3) / 6], 1)
    needle = Atoms(
        "Si2O4",
        scaled_positions=frac,
        cell=[[2.3, 0.0, 0.0], [1.9, 2.6, 0.0], [-1.7, 1.2, 24.0]],
        pbc=True,
    )
    slab = bulk("Al", "fcc", 4.05, cubic=True).repeat((2, 1, 1))
    slab.cell[2, 2] = 6.0  # 2 Å of vacuum: periodic images along z would be in reach
    slab.rattle(0.05, seed=4)
    slab.pbc = (True, True, False)
    return {"one_atom_2A": one, "needle_triclinic": needle, "slab_TTF": slab}


def edge_codes(senders, receivers, shifts, n_atoms: int) -> np.ndarray:
    """int64 code of each (i, j, n) edge (|n_k| < 50), in the given order."""
    n = np.asarray(shifts).round().astype(np.int64) + 50
    code = np.asarray(senders, np.int64) * n_atoms + np.asarray(receivers, np.int64)
    return ((code * 101 + n[:, 0]) * 101 + n[:, 1]) * 101 + n[:, 2]


def edge_keys(senders, receivers, shifts, n_atoms: int) -> np.ndarray:
    """Sorted edge codes: equal arrays are equal edge sets."""
    return np.sort(edge_codes(senders, receivers, shifts, n_atoms))


def reference_keys(atoms: Atoms, cutoff: float = CUTOFF) -> np.ndarray:
    """Edge keys from ASE's ``primitive_neighbor_list`` (independent of jmattersim)."""
    i, j, n = primitive_neighbor_list(
        "ijS", atoms.pbc, atoms.cell.array, atoms.positions, cutoff, self_interaction=False
    )
    return edge_keys(i, j, n, len(atoms))


def list_keys(nbrs: MatterSimNeighborList, n_atoms: int) -> np.ndarray:
    m = np.asarray(nbrs.topology.edge_mask)
    return edge_keys(
        np.asarray(nbrs.topology.senders)[m],
        np.asarray(nbrs.topology.receivers)[m],
        np.asarray(nbrs.topology.shifts)[m],
        n_atoms,
    )


def _pad_to(n: int, ladder=(4, 8, 16, 32, 64, 96, 128, 192, 256)) -> int:
    return next(b for b in ladder if n <= b)


def narrowest_and_random(frames: list[Atoms], narrow: int = 100, rest: int = 100) -> list[Atoms]:
    """The ``narrow`` frames with the narrowest cells (the most periodic images
    within the cutoff: down to 2.1 Å wide) and ``rest`` others drawn at random
    (seed 0)."""
    width = [perpendicular_widths(a.cell.array.T).min() for a in frames]
    order = np.argsort(width, kind="stable")
    others = np.random.default_rng(0).choice(order[narrow:], rest, replace=False)
    return [frames[k] for k in sorted([*order[:narrow], *others])]


def test_image_edges_equal_ase_on_narrow_and_random_mptrj_frames(frames):
    """200 frames: the 100 narrowest cells and 100 at random (all 1000 in the long
    tier, below), vmapped in buckets of one shape."""
    image_edges_equal_ase(narrowest_and_random(frames))


@pytest.mark.long  # a minute and a half: the CI test above covers the narrowest 100
def test_image_edges_equal_ase_on_every_mptrj_frame(frames):
    """All 1000 frames (cells down to 2.1 Å wide), vmapped in buckets of one shape."""
    assert len(frames) == 1000
    image_edges_equal_ase(frames)


def image_edges_equal_ase(frames: list[Atoms]) -> None:
    groups = collections.defaultdict(list)
    refs = [reference_keys(a) for a in frames]
    for k, a in enumerate(frames):  # few shapes: one image range per bucket
        k_max = int(image_range(a.cell.array.T, CUTOFF, a.pbc).max())
        groups[(_pad_to(len(a), (8, 24, 64, 192)), (k_max,) * 3)].append(k)
    equal = 0
    for (size, images), members in groups.items():
        m = math.prod(2 * x + 1 for x in images)
        chunk = int(max(1, min(16, 3e6 // (size * size * m))))
        max_edges = 256 * math.ceil(max(len(refs[k]) for k in members) / 256 + 0.01)
        fn = jax.jit(
            jax.vmap(
                functools.partial(
                    image_edges,
                    cutoff=CUTOFF,
                    pbc=(True, True, True),
                    images=images,
                    max_edges=max_edges,
                )
            )
        )
        for start in range(0, len(members), chunk):
            ks = members[start : start + chunk]
            ks = ks + [ks[-1]] * (chunk - len(ks))  # one shape per bucket
            pos = np.zeros((chunk, size, 3), np.float32)
            mask = np.zeros((chunk, size), bool)
            boxes = np.zeros((chunk, 3, 3), np.float32)
            for row, k in enumerate(ks):
                R, box, _ = atoms_to_jax_md(frames[k])
                pos[row, : len(R)], mask[row, : len(R)], boxes[row] = R, True, box
            s, r, shifts, emask, _, overflow = jax.device_get(fn(pos, boxes, node_mask=mask))
            assert not overflow.any()
            for row, k in enumerate(ks[: len(members[start : start + chunk])]):
                got = edge_keys(
                    s[row][emask[row]], r[row][emask[row]], shifts[row][emask[row]], len(frames[k])
                )
                # exact: integer edge keys (sender, receiver, image), sets compared
                np.testing.assert_array_equal(got, refs[k], err_msg=f"frame {k}")
                equal += 1
    assert equal == len(frames)
    print(f"\nedge sets equal to ASE's on {equal} frames in {len(groups)} buckets")


def triplet_set(codes: np.ndarray, triplets: np.ndarray) -> np.ndarray:
    """(T, 2) edge-code pairs (ij, ik), sorted: equal arrays are equal triplet sets."""
    pairs = np.stack([codes[triplets[:, 0]], codes[triplets[:, 1]]], axis=1)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def check_list_against_reference(atoms: Atoms, nbrs: MatterSimNeighborList, config) -> None:
    """Edges and triplets of a list built with no skin equal upstream's graph."""
    n = len(atoms)
    assert not bool(nbrs.did_buffer_overflow)
    # exact: integer edge keys and triplet sets, not floats
    np.testing.assert_array_equal(list_keys(nbrs, n), reference_keys(atoms))
    g = structure_graph(atoms, config)
    ours = edge_codes(nbrs.topology.senders, nbrs.topology.receivers, nbrs.topology.shifts, n)
    t = np.asarray(nbrs.topology.triplets)[np.asarray(nbrs.topology.triplet_mask)]
    ref = edge_codes(g.topology.senders, g.topology.receivers, g.topology.shifts, n)
    np.testing.assert_array_equal(triplet_set(ours, t), triplet_set(ref, g.topology.triplets))


def cell_list_structures(frames) -> dict[str, Atoms]:
    """Frames wide enough for the minimum image, and small triclinic frames repeated
    until jax-md builds a real cell list (>= 4 cells of 5 Å per side)."""
    out = {}
    wide = [a for a in frames if perpendicular_widths(a.cell.array.T).min() > 2 * CUTOFF]
    for a in sorted(wide, key=len)[:2]:
        out[f"wide_{a.get_chemical_formula()}"] = a
    small = [a for a in frames if len(a) <= 3 and abs(a.cell.angles() - 90).max() > 5]
    for a in small[:2]:
        reps = np.ceil(4.2 * CUTOFF / perpendicular_widths(a.cell.array.T)).astype(int)
        out[f"super_{a.get_chemical_formula()}_{'x'.join(map(str, reps))}"] = a.repeat(reps)
    return out


def test_cell_list_edges_and_triplets_equal_reference(frames, model):
    """jax-md's cell list (public interface, no skin) against ASE and upstream's graph."""
    structures = cell_list_structures(frames)
    real_cell_lists = 0
    for name, atoms in structures.items():
        R, box, species = atoms_to_jax_md(atoms)
        neighbor_fn, _ = mattersim_neighbor_list(model, box, species, dr_threshold=0.0)
        nbrs = neighbor_fn.allocate(R)
        assert nbrs.method == "cell_list", name
        real_cell_lists += nbrs.inner.cell_list_fn is not None
        check_list_against_reference(atoms, nbrs, model.config)
    assert real_cell_lists >= 2
    print(
        f"\ncell-list edges and triplets equal on {len(structures)} structures "
        f"({real_cell_lists} with a jax-md cell list)"
    )


@pytest.mark.parametrize("name", list(hard_cells()))
def test_hard_cells_edges_and_triplets(name, model):
    atoms = hard_cells()[name]
    R, box, species = atoms_to_jax_md(atoms)
    neighbor_fn, _ = mattersim_neighbor_list(model, box, species, pbc=atoms.pbc, dr_threshold=0.0)
    nbrs = neighbor_fn.allocate(R)
    assert nbrs.method == "images"
    check_list_against_reference(atoms, nbrs, model.config)


def test_energy_forces_match_calculator_public_interface(frames, model):
    """Hard cells, and a Si supercell on the minimum-image method, with a skin:
    energy and forces equal the ASE calculator's."""
    calc = jmattersim.MatterSimCalculator(model)
    si = bulk("Si", "diamond", 5.43, cubic=True).repeat(2)
    si.rattle(0.05, seed=5)
    structures = dict(hard_cells(), si_64_cell_list=si)
    worst = np.zeros(2)
    for name, atoms in structures.items():
        R, box, species = atoms_to_jax_md(atoms)
        neighbor_fn, energy_fn = mattersim_neighbor_list(
            model, box, species, pbc=atoms.pbc, dr_threshold=0.3
        )
        nbrs = neighbor_fn.allocate(R)
        e, g = jax.jit(jax.value_and_grad(energy_fn))(R, nbrs)
        ref = atoms.copy()
        ref.calc = calc
        de = abs(float(e) - ref.get_potential_energy()) / len(atoms)
        df = np.abs(-np.asarray(g) - ref.get_forces()).max()
        worst = np.maximum(worst, [de, df])
        assert de <= 1e-5 and df <= 1e-4, (name, de, df)
    print(
        f"\npublic interface vs calculator: max |dE| {worst[0]:.1e} eV/atom, "
        f"max |dF| {worst[1]:.1e} eV/A"
    )


def _batched_lists(frames_, size, images, max_edges, max_neighbors, max_triplets, skin):
    """Padded, stacked lists of frames (images method), as allocate would build them."""
    chunk = len(frames_)
    pos = np.zeros((chunk, size, 3), np.float32)
    mask = np.zeros((chunk, size), bool)
    boxes = np.zeros((chunk, 3, 3), np.float32)
    types = np.zeros((chunk, size), np.int32)
    for row, a in enumerate(frames_):
        R, box, species = atoms_to_jax_md(a)
        pos[row, : len(a)], mask[row, : len(a)], boxes[row], types[row, : len(a)] = (
            R,
            True,
            box,
            species,
        )

    def one(R, box, node_mask):
        s, r, sh, m, d2, over = image_edges(
            R, box, CUTOFF + skin, (True,) * 3, images, max_edges, node_mask
        )
        t, tm, tover = build_triplets(s, d2, m, size, CUTOFF3 + skin, max_neighbors, max_triplets)
        topology = Topology(s, r, sh, m, t, tm, over | tover)
        return MatterSimNeighborList(topology, R, None, None, None)

    return pos, boxes, types, mask, jax.vmap(one)(pos, boxes, mask)


def test_energy_forces_match_calculator_on_mptrj(frames, model):
    """16 frames spread over sizes 2..16: energies and forces from the neighbour
    list's energy (vmapped over a padded bucket) equal the ASE calculator's path."""
    picks = sorted((a for a in frames if len(a) <= 16), key=len)
    picks = [picks[k] for k in np.linspace(0, len(picks) - 1, 16).round().astype(int)]
    refs = jmattersim.evaluate(model, picks)
    config = model.config
    model32 = model.astype(jnp.float32)
    skin = 0.2
    buckets = collections.defaultdict(list)
    for k, a in enumerate(picks):
        buckets[16 if len(a) <= 16 else 48].append(k)
    worst = np.zeros(2)
    for size, members in buckets.items():
        group = [picks[k] for k in members]
        images = tuple(
            np.max(
                [image_range(a.cell.array.T, CUTOFF + skin, a.pbc) for a in group], axis=0
            ).tolist()
        )
        # capacities of the lists with the skin, measured on the host
        skinned = dataclasses.replace(config, cutoff=CUTOFF + skin, threebody_cutoff=CUTOFF3 + skin)
        graphs = [structure_graph(a, skinned) for a in group]
        max_edges = max(g.n_edge for g in graphs) + 8
        max_triplets = max(g.n_triplet for g in graphs) + 8
        max_k = (
            max(
                int(np.bincount(g.topology.senders[np.unique(g.topology.triplets[:, 0])]).max())
                for g in graphs
                if g.n_triplet
            )
            + 1
        )
        pos, boxes, types, mask, nbrs = _batched_lists(
            group, size, images, max_edges, max_k, max_triplets, skin
        )
        assert not np.asarray(nbrs.did_buffer_overflow).any()
        n_real = jnp.asarray([len(a) for a in group])

        def energy(R, box, species, nb, n):
            return neighbor_energy(
                model32, one_hot(species, config.num_species, jnp.float32), R, box, nb, n_real=n
            )

        e, g = jax.jit(jax.vmap(jax.value_and_grad(energy)))(pos, boxes, types, nbrs, n_real)
        for row, k in enumerate(members):
            n = len(picks[k])
            de = abs(float(e[row]) - refs[k].energy) / n
            df = np.abs(-np.asarray(g[row, :n]) - refs[k].forces).max()
            worst = np.maximum(worst, [de, df])
            assert de <= 1e-5 and df <= 1e-4, (k, de, df)
    print(
        f"\n{len(picks)} mptrj frames vs calculator: max |dE| {worst[0]:.1e} eV/atom, "
        f"max |dF| {worst[1]:.1e} eV/A"
    )


def test_perturbation_gives_calculator_stress(model):
    """jax-md's pressure/stress convention (``perturbation``) gives the calculator's
    stress: what NPT integrates."""
    from jax_md import quantity

    atoms = hard_cells()["needle_triclinic"]
    R, box, species = atoms_to_jax_md(atoms)
    neighbor_fn, energy_fn = mattersim_neighbor_list(model, box, species, dr_threshold=0.3)
    nbrs = neighbor_fn.allocate(R)
    stress = jax.jit(lambda R, nb: quantity.stress(energy_fn, R, box, neighbor=nb))(R, nbrs)
    ref = atoms.copy()
    ref.calc = jmattersim.MatterSimCalculator(model)
    # jax-md's stress is -dE/d eps / V; ASE's is +dE/d eps / V
    np.testing.assert_allclose(-np.asarray(stress), ref.get_stress(voigt=False), atol=2e-5)


def test_a_kept_list_follows_atoms_that_wrap_through_the_cell(small_model):
    """An update that keeps the list (no atom has moved half the skin) moves the image
    shifts of atoms that jax-md's shift wrapped through the cell: energy and forces
    equal those of a list allocated afresh at the new positions."""
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    atoms.rattle(0.05, seed=3)
    atoms.wrap()
    with jax.enable_x64(True):
        R, box, species = atoms_to_jax_md(atoms)
        neighbor_fn, energy_fn = mattersim_neighbor_list(
            small_model, box, species, dr_threshold=0.5
        )
        nbrs = neighbor_fn.allocate(R)
        corner = int(np.argmin(np.asarray(R).sum(axis=1)))  # the atom nearest the origin
        step = -(np.asarray(R)[corner] + 0.005)  # 0.005 through the three faces (< 0.25 Å)
        moved = R.at[corner].add(jnp.asarray(step)) % 1.0
        assert np.all(np.asarray(moved)[corner] > 0.9)  # it wrapped
        kept = jax.jit(neighbor_fn.update)(moved, nbrs)
        assert not np.allclose(kept.reference_position, moved)  # kept, not rebuilt
        fresh = neighbor_fn.allocate(moved)
        value_and_grad = jax.jit(jax.value_and_grad(energy_fn))
        e_kept, g_kept = value_and_grad(moved, neighbor=kept)
        e_fresh, g_fresh = value_and_grad(moved, neighbor=fresh)
    assert not bool(kept.did_buffer_overflow)
    np.testing.assert_allclose(float(e_kept), float(e_fresh), rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.asarray(g_kept), np.asarray(g_fresh), rtol=0, atol=1e-10)
