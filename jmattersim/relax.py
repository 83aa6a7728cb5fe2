"""Relaxation of positions and cell with FIRE, one structure or many in one compiled loop.

The cell is relaxed as ASE's ``FrechetCellFilter`` does: the degrees of freedom
of structure g are its atoms in the reference frame, ``x``, and ``c = cell_factor
* logm(F)``, where F is the deformation gradient from the starting cell:
``cell = cell0 @ F.T`` and ``positions = x @ F.T``. Generalised forces are
``-dE/dx`` and ``-dE/dc`` by automatic differentiation; FIRE (ASE's algorithm and
defaults, one set of FIRE variables per structure) moves all of them. Converged
when the largest Cartesian force component is below ``fmax`` and (with the cell)
the largest stress component below ``smax``; converged structures stop moving
while the rest go on.

The topology is rebuilt inside the loop at every step (:func:`jmattersim.neighbors.topology`,
exact for any cell) within a static capacity; an overflow stops the loop before
the step that overflowed, and the driver re-allocates and continues from there.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress

from .config import M3GNetConfig
from .energy import EV_PER_A3_TO_GPA, energies
from .io import Model
from .neighbors import Capacity, capacity_for, topology
from .validate import check_structures

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True)
class FireParams:
    """ASE's FIRE parameters (``ase.optimize.FIRE`` defaults)."""

    dt: float = 0.1
    maxstep: float = 0.2
    dtmax: float = 1.0
    n_min: int = 5
    f_inc: float = 1.1
    f_dec: float = 0.5
    a_start: float = 0.1
    f_a: float = 0.99


class RelaxState(NamedTuple):
    """x (N, 3) reference-frame positions Å; c (G, 3, 3) cell_factor * log F;
    vx, vc: FIRE velocities; fx, fc: generalised forces at (x, c); dt, a (G,);
    n_pos (G,) int; started, converged (G,) bool; steps (G,) int FIRE steps taken;
    energy (G,) eV, forces (N, 3) eV/Å, stress (G, 3, 3) eV/Å^3 at (x, c)."""

    x: Array
    c: Array
    vx: Array
    vc: Array
    fx: Array
    fc: Array
    dt: Array
    a: Array
    n_pos: Array
    started: Array
    converged: Array
    steps: Array
    energy: Array
    forces: Array
    stress: Array


def _expm(m: Array) -> Array:
    return jax.vmap(jax.scipy.linalg.expm)(m)


@functools.partial(jax.jit, static_argnames=("config", "capacity", "relax_cell", "fire"))
def _relax_loop(config: M3GNetConfig, params, atom_types, cell0, n_node, node_mask, cell_factor,
                state: RelaxState, fmax, smax, max_steps, *, capacity: Capacity,
                relax_cell: bool, fire: FireParams):
    """FIRE until every structure converged, ``max_steps`` or an overflow; the last
    graph holds the padding atoms. Returns (state, overflow): on overflow, the state
    is the last one whose topology fitted."""
    n_graph = cell0.shape[0]
    real = jnp.arange(n_graph) < n_graph - 1
    node_graph = jnp.repeat(jnp.arange(n_graph), n_node, total_repeat_length=node_mask.shape[0])
    eye = jnp.eye(3, dtype=cell0.dtype)

    def deformation(c):
        if relax_cell:
            return _expm(c / cell_factor[:, None, None])
        return jnp.broadcast_to(eye, cell0.shape)

    def geometry(x, c):
        f = deformation(c)
        lattice = jnp.einsum("gij,gkj->gik", cell0, f)  # cell0 @ F.T
        positions = jnp.einsum("ni,nji->nj", x, f[node_graph])  # x @ F.T
        return positions, lattice

    def evaluate(x, c):
        """energy (G,), generalised forces, physical forces, stress, converged, overflow."""
        positions, lattice = geometry(x, c)
        topo = topology(positions, lattice, n_node, config, capacity, node_mask)

        def total(x, c, strain):
            pos, lat = geometry(x, c)
            e = energies(config, params, atom_types, pos, lat, n_node, topo, strain)
            return jnp.sum(jnp.where(real, e, 0.0)), e

        strain = jnp.zeros_like(cell0)
        (_, e), (gx, gc, ge) = jax.value_and_grad(total, argnums=(0, 1, 2), has_aux=True)(
            x, c, strain)
        volume = jnp.abs(jnp.linalg.det(jnp.where(real[:, None, None], lattice, eye)))
        stress = ge / volume[:, None, None]
        # generalised force on x is f @ F, so f = f_x @ F^-1
        finv = jnp.linalg.inv(deformation(c))
        forces = jnp.einsum("ni,nij->nj", -gx, finv[node_graph]) * node_mask[:, None]
        fmax_g = jax.ops.segment_max(jnp.max(jnp.abs(forces), axis=1), node_graph,
                                     num_segments=n_graph)
        ok = fmax_g < fmax
        if relax_cell:
            ok = ok & (jnp.max(jnp.abs(stress), axis=(1, 2)) * EV_PER_A3_TO_GPA < smax)
        fc = -gc if relax_cell else jnp.zeros_like(gc)
        return e, -gx * node_mask[:, None], fc, forces, stress, ok | ~real, topo.overflow

    def gsum(node_val, cell_val):
        return jax.ops.segment_sum(node_val, node_graph, num_segments=n_graph) + cell_val

    def cond(carry):
        state, overflow, it = carry
        return ~overflow & ~jnp.all(state.converged) & (it < max_steps)

    def body(carry):
        s, _, it = carry
        active = ~s.converged
        dtype = s.x.dtype
        fx, fc = s.fx, s.fc
        # ase.optimize.FIRE.step, per structure, on the vector (x, c)
        vf = gsum(jnp.sum(fx * s.vx, 1), jnp.sum(fc * s.vc, (1, 2)))
        ff = gsum(jnp.sum(fx * fx, 1), jnp.sum(fc * fc, (1, 2)))
        vv = gsum(jnp.sum(s.vx * s.vx, 1), jnp.sum(s.vc * s.vc, (1, 2)))
        uphill = s.started & (vf <= 0)
        downhill = s.started & (vf > 0)
        mix = jnp.where(downhill, s.a, 0.0)
        scale = jnp.where(downhill, jnp.sqrt(vv) / jnp.sqrt(jnp.where(ff > 0, ff, 1.0)), 0.0)
        vx = (1 - mix[node_graph, None]) * s.vx + (mix * scale)[node_graph, None] * fx
        vc = (1 - mix[:, None, None]) * s.vc + (mix * scale)[:, None, None] * fc
        grow = downhill & (s.n_pos > fire.n_min)
        dt = jnp.where(grow, jnp.minimum(s.dt * fire.f_inc, fire.dtmax), s.dt)
        a = jnp.where(grow, s.a * fire.f_a, s.a)
        n_pos = jnp.where(downhill, s.n_pos + 1, s.n_pos)
        vx = jnp.where(uphill[node_graph, None], 0.0, vx)
        vc = jnp.where(uphill[:, None, None], 0.0, vc)
        a = jnp.where(uphill, fire.a_start, a)
        dt = jnp.where(uphill, dt * fire.f_dec, dt)
        n_pos = jnp.where(uphill, 0, n_pos)
        vx = vx + dt[node_graph, None] * fx
        vc = vc + dt[:, None, None] * fc
        dx, dc = dt[node_graph, None] * vx, dt[:, None, None] * vc
        norm = jnp.sqrt(gsum(jnp.sum(dx * dx, 1), jnp.sum(dc * dc, (1, 2))))
        shrink = jnp.where(norm > fire.maxstep, fire.maxstep / jnp.where(norm > 0, norm, 1.0),
                           1.0).astype(dtype)
        move = active.astype(dtype) * shrink
        x = s.x + move[node_graph, None] * dx
        c = s.c + move[:, None, None] * dc
        e, fx2, fc2, forces, stress, ok, overflow = evaluate(x, c)
        new = RelaxState(x, c, vx, vc, fx2, fc2, dt, a, n_pos, s.started | active, ok,
                         s.steps + active, e, forces, stress)
        per_node = RelaxState(*(f in ("x", "vx", "fx", "forces") for f in RelaxState._fields))

        def keep(n, o, node):
            m = active[node_graph] if node else active
            m = m.reshape(m.shape + (1,) * (n.ndim - 1))
            return jnp.where(m & ~overflow, n, o)

        return RelaxState(*map(keep, new, s, per_node)), overflow, it + 1

    e, fx, fc, forces, stress, ok, overflow = evaluate(state.x, state.c)
    state = state._replace(fx=fx, fc=fc, energy=e, forces=forces, stress=stress,
                           converged=ok)
    state, overflow2, _ = jax.lax.while_loop(
        cond, body, (state, overflow, jnp.asarray(0)))
    return state, overflow | overflow2


def _pack(structures: Sequence[Atoms], config: M3GNetConfig, dtype):
    """Concatenated atoms plus one padding atom in a padding graph (jraph's layout)."""
    n = [len(a) for a in structures]
    total = sum(n) + 1
    atom_types = np.zeros((total, config.num_species), dtype)
    positions = np.zeros((total, 3), dtype)
    cells = np.tile(np.eye(3, dtype=dtype), (len(structures) + 1, 1, 1))
    start = 0
    for g, a in enumerate(structures):
        atom_types[start + np.arange(len(a)), a.numbers] = 1.0
        positions[start:start + len(a)] = a.positions
        cells[g] = a.cell.array
        start += len(a)
    node_mask = np.arange(total) < total - 1
    return atom_types, positions, cells, np.array(n + [1], np.int32), node_mask


def relax(
    model: Model,
    atoms: Atoms | Sequence[Atoms],
    fmax: float = 0.02,
    smax: float = 0.02,
    max_steps: int = 1000,
    relax_cell: bool = True,
    cell_factor: float | None = None,
    fire: FireParams = FireParams(),
    headroom: float = 1.25,
    capacity: Capacity | None = None,
    max_reallocations: int = 6,
    dtype=None,
) -> Atoms | list[Atoms]:
    """Relaxes one structure or a list of them together (one compiled loop).

    fmax: eV/Å, largest force component; smax: GPa, largest stress component (cell
    relaxation only); cell_factor: weight of the cell's degrees of freedom
    (default: the number of atoms, as ``FrechetCellFilter``); max_steps: FIRE steps;
    capacity: the topology's starting capacity (default: measured with ``headroom``;
    grown by 1.5x whenever it overflows, at most ``max_reallocations`` times, then a
    RuntimeError). Structures of one size and one capacity share one compiled loop.
    Periodic structures only. Returns copies of the structures (relaxed positions
    and cell) with a single-point calculator holding energy (eV), forces (eV/Å) and
    stress (eV/Å^3, ASE's Voigt order), and ``info["relax_converged"]``,
    ``info["relax_steps"]``. Computes in float64 under x64, float32 otherwise.
    """
    single = isinstance(atoms, Atoms)
    structures = [atoms] if single else list(atoms)
    if not all(a.pbc.all() for a in structures):
        raise ValueError("relax handles periodic structures (pbc all True) only")
    check_structures(structures, model.config)
    if dtype is None:
        dtype = np.float64 if jax.config.read("jax_enable_x64") else np.float32
    config = model.config
    params = model.astype(dtype).params
    atom_types, positions, cells, n_node, node_mask = _pack(structures, config, dtype)
    n_graph = len(n_node)
    factors = np.array([cell_factor or len(a) for a in structures] + [1.0], dtype)
    if capacity is None:
        capacity = capacity_for(structures, config, headroom, batch_size=len(structures))
    capacity = dataclasses.replace(capacity, max_atoms=max(len(a) for a in structures))
    zeros_n, zeros_g = np.zeros_like(positions), np.zeros((n_graph, 3, 3), dtype)
    state = RelaxState(
        x=positions, c=zeros_g, vx=zeros_n, vc=zeros_g, fx=zeros_n, fc=zeros_g,
        dt=np.full(n_graph, fire.dt, dtype), a=np.full(n_graph, fire.a_start, dtype),
        n_pos=np.zeros(n_graph, np.int32), started=np.zeros(n_graph, bool),
        converged=np.zeros(n_graph, bool), steps=np.zeros(n_graph, np.int32),
        energy=np.zeros(n_graph, dtype), forces=zeros_n, stress=zeros_g)
    args = (config, params, atom_types, cells, n_node, node_mask, factors)
    reallocations = 0
    while True:
        budget = max_steps - int(np.max(state.steps))
        state, overflow = _relax_loop(*args, state, fmax, smax, budget, capacity=capacity,
                                      relax_cell=relax_cell, fire=fire)
        if not bool(overflow):
            break
        reallocations += 1
        if reallocations > max_reallocations:
            raise RuntimeError(
                f"the topology outgrew its capacity {max_reallocations} times (last {capacity}):"
                " a cell collapsing or atoms piling up? (max_reallocations)")
        capacity = capacity.scaled(1.5)  # re-allocate; go on from the last good state
    state = jax.tree_util.tree_map(np.asarray, state)
    f = np.stack([_expm_np(c / k) for c, k in zip(state.c, factors, strict=True)])
    out, start = [], 0
    for g, a in enumerate(structures):
        n = len(a)
        new = a.copy()
        new.set_cell(cells[g] @ f[g].T)
        new.positions = state.x[start:start + n] @ f[g].T
        stress = full_3x3_to_voigt_6_stress(np.asarray(state.stress[g], float))
        new.calc = SinglePointCalculator(new, energy=float(state.energy[g]),
                                         forces=np.asarray(state.forces[start:start + n], float),
                                         stress=stress)
        new.info["relax_converged"] = bool(state.converged[g])
        new.info["relax_steps"] = int(state.steps[g])
        out.append(new)
        start += n
    return out[0] if single else out


def _expm_np(m: np.ndarray) -> np.ndarray:
    return np.asarray(jax.scipy.linalg.expm(jnp.asarray(m)))
