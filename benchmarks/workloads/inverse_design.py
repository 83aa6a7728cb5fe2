"""inverse_design: the inverse-design workload through ``forward_batch`` under
``jit``/``grad`` as the user guide writes it (a host neighbour list, then
``jax.grad``), batches of 16: energy and its gradient in atom types, positions and
lattice (b1), and the gradient of a force-and-stress loss (b2); upstream: its model
in torch autograd."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

from harness import BATCH, draw, interleaved, jm_model, up_potential
from report import Bench


def measure(bench: Bench, name: str) -> None:
    """64 frames (32 with ``--quick``)."""
    inverse_design_rows(name, 32 if bench.quick else 64, bench.seed, bench.add)


def inverse_design_rows(name: str, n: int, seed: int, add) -> None:
    """b1/b2 through forward_batch under jit, as docs/guide/batches.md writes it."""
    import jax
    import jax.numpy as jnp

    import jmattersim
    from jmattersim._src.tensors import atoms_arrays

    model = jm_model(name)
    frames = draw(n, seed + 4, max_atoms=64)
    chunks = [frames[k : k + BATCH] for k in range(0, n, BATCH)]

    def jm(loss: bool):
        @functools.partial(jax.jit, static_argnums=(3,))
        def step(at, pos, lat, sizes, nbrs):
            def energy(at, pos, lat):
                out = jmattersim.forward_batch(
                    model,
                    atom_types=at,
                    positions=pos,
                    lattice=lat,
                    sizes=sizes,
                    neighbors=nbrs,
                    include_forces=loss,
                    include_stresses=loss,
                )
                if not loss:
                    return out["total_energy"].sum()
                return jnp.sum(out["forces"] ** 2) + jnp.sum(out["stresses"] ** 2)

            return jax.grad(energy, argnums=(0, 1, 2))(at, pos, lat)

        def run():
            for chunk in chunks:
                at, pos, lat, sizes, _ = atoms_arrays(chunk, model.config)
                nbrs = jmattersim.batch.neighbor_list(model, chunk)  # host, outside jit
                grads = step(
                    jnp.asarray(at, jnp.float32),
                    jnp.asarray(pos, jnp.float32),
                    jnp.asarray(lat, jnp.float32),
                    tuple(int(s) for s in sizes),
                    nbrs,
                )
            return jax.block_until_ready(grads)

        return run

    for loss, label in (
        (False, "b1. E + grad(types, pos, lattice)"),
        (True, "b2. grad of force+stress loss"),
    ):
        fns = {"jm": jm(loss), "up": up_inverse_design(name, chunks, loss)}
        t0 = time.perf_counter()
        fns["jm"]()
        compile_s = time.perf_counter() - t0
        fns["up"]()
        # best of 3: jmattersim's first pass after torch's first large one is slower
        # (its memory grows again), and one such pass is not its steady state
        t = interleaved(fns, 3)
        add(
            label,
            name,
            "frames/s",
            n / t["jm"],
            n / t["up"],
            f"{n} frames (at most 64 atoms), batches of {BATCH}; first pass {compile_s:.0f} s",
        )


def up_inverse_design(name: str, chunks: list, loss: bool) -> Callable[[], object]:
    """Upstream's model on the same batches in torch autograd; the graph of each
    batch built for it (as jmattersim's neighbour list is)."""
    import torch
    from mattersim.forcefield.potential import batch_to_dict
    from torch_geometric.data import Batch

    from jmattersim.testing import upstream_graph

    model = up_potential(name).model
    args = model.model_args

    def one(chunk):
        data = [upstream_graph(a, args)[0] for a in chunk]
        inp = batch_to_dict(Batch.from_data_list(data), device="cpu")
        numbers = inp["atom_attr"].squeeze(1).long()
        atom_types = torch.nn.functional.one_hot(numbers, model.max_z + 1).float()
        atom_types.requires_grad_(True)
        pos = inp["atom_pos"].detach().clone().requires_grad_(True)
        cell = inp["cell"].detach().clone().requires_grad_(True)
        model.one_hot_atoms = lambda species: atom_types
        try:
            if not loss:
                energy = model(dict(inp, atom_pos=pos, cell=cell))
                return torch.autograd.grad(energy.sum(), [atom_types, pos, cell])
            strain = torch.zeros_like(cell, requires_grad=True)
            deform = torch.eye(3) + strain
            pos_s = torch.einsum("ni,nij->nj", pos, deform[inp["batch"]])
            energy = model(dict(inp, atom_pos=pos_s, cell=cell @ deform))
            de_dr, de_deps = torch.autograd.grad(energy.sum(), [pos, strain], create_graph=True)
            stress = de_deps / torch.abs(torch.linalg.det(cell))[:, None, None] * 160.21766
            value = (de_dr**2).sum() + (stress**2).sum()
            return torch.autograd.grad(value, [atom_types, pos, cell])
        finally:
            del model.one_hot_atoms

    return lambda: [one(c) for c in chunks]
