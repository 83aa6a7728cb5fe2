"""Per-element energy shift and scale refitted on training data (upstream's
``--re_normalize``: ``AtomScaling`` with its default keys).

- shift ``per_species_energy_mean_linear_reg``: the least-squares fit of the total
  energies on the element counts, ``pinv(X^T X) X^T E`` (eV per atom of each element);
- scale ``per_species_forces_rms``: for each element, the mean over its atoms and
  the three components of the squared force labels, (eV/Å)^2. Upstream takes no
  square root here (its name notwithstanding); we keep its numbers.

Elements absent from the data get shift 0 and scale 0, as upstream's: the refitted
model predicts no energy for them, so :func:`refit_normalizer` warns.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from .checks import _formula
from .dataset import LabelledFrame


def refit_normalizer(
    frames: Sequence[LabelledFrame], max_z: int = 94
) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift), each (max_z + 1,) float32, fitted as upstream's re-normalisation.

    Args:
        frames: labelled training frames (forces needed for the scale).
        max_z: the largest atomic number (upstream's ``AtomScaling`` uses 94).

    Raises:
        ValueError: a frame has no force labels.
    """
    counts = np.zeros((len(frames), max_z + 1))
    energies = np.array([f.energy for f in frames])
    square_sum = np.zeros(max_z + 1)
    atoms = np.zeros(max_z + 1)
    for k, f in enumerate(frames):
        numbers = f.graph.numbers
        np.add.at(counts[k], numbers, 1.0)
        if f.forces is None:
            raise ValueError(
                f"frame {k} ({_formula(numbers)}): re-normalisation needs force labels"
            )
        np.add.at(square_sum, numbers, np.mean(f.forces**2, axis=1))
        np.add.at(atoms, numbers, 1.0)
    shift = np.linalg.pinv(counts.T @ counts) @ (counts.T @ energies)
    scale = np.where(atoms > 0, square_sum / np.maximum(atoms, 1), 0.0)
    absent = int((atoms[1:] == 0).sum())
    if absent:
        warnings.warn(
            f"re-normalisation sets scale and shift to 0 for the {absent} elements absent "
            "from the training data (as upstream does): the refitted model predicts no "
            "energy for them",
            stacklevel=2,
        )
    return scale.astype(np.float32), shift.astype(np.float32)
