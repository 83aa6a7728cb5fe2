"""Upstream MatterSim as the reference: genuine-format checkpoints with seeded
random weights, and its energies, forces and stresses (float32 and float64).

Only the tests import this module (torch and mattersim are test extras).
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from ase import Atoms

warnings.filterwarnings("ignore", module="mattersim")
from mattersim.forcefield.potential import batch_to_dict  # noqa: E402
from torch_geometric.data import Batch  # noqa: E402

from jmattersim.testing import upstream_graph  # noqa: E402


@contextlib.contextmanager
def _float64(potential):
    """Makes upstream 1.2.3 run in float64 (it casts pbc_offsets and the one-hot
    to float32): a dtype-unifying einsum, and a one-hot in the weights' dtype."""
    model = potential.model
    einsum, default = torch.einsum, torch.get_default_dtype()

    def einsum64(eq, *ops):
        return einsum(eq, *[o.double() if o.is_floating_point() else o for o in ops])

    model.double()
    model.one_hot_atoms = lambda s: F.one_hot(s, num_classes=model.max_z + 1).double()
    torch.einsum, _ = einsum64, torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.einsum = einsum
        torch.set_default_dtype(default)
        model.float()
        del model.one_hot_atoms


def predict(potential, atoms: Atoms, float64: bool = False) -> dict:
    """Upstream energy (eV), forces (eV/Å), stress (GPa, 3x3) and graph sizes of one
    structure (see :func:`predict_many`)."""
    return predict_many(potential, [atoms], float64)[0]


def predict_many(potential, structures: list[Atoms], float64: bool = False) -> list[dict]:
    """Upstream energy (eV), forces (eV/Å), stress (GPa, 3x3) and graph sizes of each
    structure, from one batched forward pass: upstream's own batched path (its
    ``BatchRelaxer`` and training batch graphs the same way).

    Positions and cells enter in float64 where asked (upstream's graph builder
    stores them as float32; here they are replaced by the float64 originals).
    """
    args = potential.model.model_args
    graphs = [upstream_graph(atoms, args) for atoms in structures]
    inputs = batch_to_dict(Batch.from_data_list([data for data, _ in graphs]), device="cpu")
    ctx = _float64(potential) if float64 else contextlib.nullcontext()
    with ctx:
        if float64:
            positions = np.concatenate([n.positions for _, n in graphs])
            cells = np.stack([n.cell.array for _, n in graphs])
            inputs["atom_pos"] = torch.tensor(positions, dtype=torch.float64)
            inputs["cell"] = torch.tensor(cells, dtype=torch.float64)
        out = potential.forward(inputs, include_forces=True, include_stresses=True)
        energies = out["total_energy"].detach().numpy().astype(np.float64)
        forces = out["forces"].detach().numpy().astype(np.float64)
        stresses = out["stresses"].detach().numpy().astype(np.float64)
    ends = np.cumsum([len(n) for _, n in graphs])
    return [
        {
            "energy": float(energies[k]),
            "forces": forces[end - len(normalised) : end],
            "stress_gpa": stresses[k],
            "n_edge": int(data.num_bonds),
            "n_triplet": int(data.num_three_body),
            "atoms": normalised,
        }
        for k, ((data, normalised), end) in enumerate(zip(graphs, ends, strict=True))
    ]
