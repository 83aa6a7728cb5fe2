"""Upstream's training loss (``Potential.loss_calc``), on padded batches.

loss = L(E/N) + force_ratio * L(F) + stress_ratio * L(sigma), where L is the mean
over the real entries of a batch (padding excluded) of either the squared error
(``torch.nn.MSELoss``) or the Huber loss (``torch.nn.HuberLoss(delta)``, what
upstream's ``finetune_mattersim.py`` trains with, delta 0.01), E/N is the energy
per atom (eV/atom), F the forces (eV/Å, each component an entry) and sigma the
stress (GPa, all nine components). The mean absolute errors are reported beside it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from .arrays import Array
from .dataset import LabelledFrame
from .predictions import Predictions


class LossSettings(NamedTuple):
    """What the loss holds (static under ``jit``).

    Attributes:
        kind: "mse" or "huber".
        delta: the Huber threshold (in each term's unit).
        forces: include the force term.
        stress: include the stress term.
        force_ratio: weight of the force term.
        stress_ratio: weight of the stress term.
    """

    kind: str = "huber"
    delta: float = 0.01
    forces: bool = True
    stress: bool = False
    force_ratio: float = 1.0
    stress_ratio: float = 0.1


class Labels(NamedTuple):
    """Labels of a padded batch (padding entries are zero and masked out).

    energy (G,) eV; n_atoms (G,) (1 for padding graphs); forces (N, 3) eV/Å;
    stress (G, 3, 3) GPa; graph_mask (G,) and node_mask (N,) bool.
    """

    energy: Array
    n_atoms: Array
    forces: Array
    stress: Array
    graph_mask: Array
    node_mask: Array


class Metrics(NamedTuple):
    """A batch's loss and mean absolute errors (eV/atom, eV/Å, GPa)."""

    loss: Array
    mae_energy: Array
    mae_forces: Array
    mae_stress: Array


def pad_labels(frames: list[LabelledFrame], n_nodes: int, n_graphs: int, dtype) -> Labels:
    """The labels of ``frames`` padded to a batch of ``n_nodes`` atoms and
    ``n_graphs`` graphs (as :func:`jmattersim._src.padding.pad` lays them out)."""
    energy = np.zeros(n_graphs, dtype)
    n_atoms = np.ones(n_graphs, dtype)
    forces = np.zeros((n_nodes, 3), dtype)
    stress = np.zeros((n_graphs, 3, 3), dtype)
    a = 0
    for k, f in enumerate(frames):
        energy[k], n_atoms[k] = f.energy, f.n_atoms
        if f.forces is not None:
            forces[a : a + f.n_atoms] = f.forces
        if f.stress_gpa is not None:
            stress[k] = f.stress_gpa
        a += f.n_atoms
    return Labels(
        energy,
        n_atoms,
        forces,
        stress,
        np.arange(n_graphs) < len(frames),
        np.arange(n_nodes) < a,
    )


def _mean(values: Array, mask: Array) -> Array:
    mask = jnp.broadcast_to(
        mask.reshape(mask.shape + (1,) * (values.ndim - mask.ndim)), values.shape
    )
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def _pointwise(error: Array, settings: LossSettings) -> Array:
    if settings.kind == "mse":
        return error * error
    if settings.kind == "huber":
        a = jnp.abs(error)
        d = settings.delta
        return jnp.where(a < d, 0.5 * error * error, d * (a - 0.5 * d))
    raise ValueError(f"unknown loss '{settings.kind}': expected 'mse' or 'huber'")


def batch_loss(pred: Predictions, labels: Labels, settings: LossSettings) -> Metrics:
    """Upstream's loss of one batch and its mean absolute errors.

    Args:
        pred: energies (G,) eV, forces (N, 3) eV/Å, stresses (G, 3, 3) eV/Å³
            (forces and stress may be None when their terms are off).
        labels: the batch's :class:`Labels` (stress in GPa).
        settings: the terms and weights.
    """
    zero = jnp.zeros((), pred.energy.dtype)
    de = (pred.energy - labels.energy) / labels.n_atoms
    loss = _mean(_pointwise(de, settings), labels.graph_mask)
    mae_e, mae_f, mae_s = _mean(jnp.abs(de), labels.graph_mask), zero, zero
    if settings.forces:
        df = pred.forces - labels.forces
        loss = loss + settings.force_ratio * _mean(_pointwise(df, settings), labels.node_mask)
        mae_f = _mean(jnp.abs(df), labels.node_mask)
    if settings.stress:
        ds = pred.stress_gpa - labels.stress
        loss = loss + settings.stress_ratio * _mean(_pointwise(ds, settings), labels.graph_mask)
        mae_s = _mean(jnp.abs(ds), labels.graph_mask)
    return Metrics(loss, mae_e, mae_f, mae_s)
