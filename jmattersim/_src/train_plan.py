"""Fine-tuning's data plan: the frames' order per epoch and member, the batches,
the padded budgets that hold them, and the validation split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .capacity import Capacity, Counts
from .dataset import LabelledFrame
from .padding import counts_of

PLANNED_EPOCHS = 64  # epochs whose batches size the budgets (later ones grow them if need be)
SNUG_STEPS = 16  # rungs per doubling: a run has few budgets, snugger than the engine's
SHORT_RUN_STEPS = 32  # a run planning fewer steps pads every batch to one budget


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The frames' order in ``epoch`` for a member with this random seed: a fresh
    permutation per epoch (a function of both, so a resumed run repeats it)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batches_of(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``order`` (n,) cut into consecutive batches of ``batch_size`` (the last may be short)."""
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def snug(counts: Counts) -> Capacity:
    """The padded-batch capacity just above ``counts``, on :func:`bucket
    <jmattersim._src.capacity.bucket>`'s ladder with :data:`SNUG_STEPS` rungs per
    doubling: a run has only a few budgets, so they can be snugger than the
    engine's."""
    return Capacity.above(counts, SNUG_STEPS)


def training_budgets(
    frames: Sequence[LabelledFrame],
    valid: Sequence[LabelledFrame],
    batch_size: int,
    seeds: Sequence[int],
    epochs: int,
    levels: int = 3,
) -> tuple[Capacity, ...]:
    """A few budgets (:func:`snug`), smallest first, that hold every
    training batch of the first ``epochs`` epochs of every member and every
    validation batch: the largest holds them all, the smaller
    ones the batches up to the median and the 85th percentile of edges. Each batch
    runs in the smallest that holds it: ``levels`` compilations buy less padding
    (a batch of 16 MPtrj frames averages 0.4 of the largest's edges)."""

    def counts(fs):
        return np.array([counts_of(f.graph) for f in fs], np.int64).reshape(-1, 4)

    train_counts, valid_counts = counts(frames), counts(valid)
    rows = [valid_counts[i].sum(axis=0) for i in batches_of(np.arange(len(valid)), batch_size)]
    for seed in seeds:
        for epoch in range(epochs):
            for index in batches_of(epoch_order(len(frames), seed, epoch), batch_size):
                rows.append(train_counts[index].sum(axis=0))
    rows = np.array(rows).reshape(-1, 4)
    cuts = np.quantile(rows[:, 1], [0.5, 0.85, 1.0][-levels:]) if levels > 1 else [np.inf]
    budgets: list[Capacity] = []
    for cut in cuts:
        group = rows[rows[:, 1] <= cut] if np.isfinite(cut) else rows
        budget = snug(Counts(*group.max(axis=0)))
        if budget not in budgets:
            budgets.append(budget)
    return tuple(budgets)


def split_validation(
    frames: list[LabelledFrame], fraction: float, seed: int
) -> tuple[list[LabelledFrame], list[LabelledFrame]]:
    """(train, valid): a random ``fraction`` held out (at least one frame)."""
    if fraction <= 0 or len(frames) < 2:
        return frames, []
    order = np.random.default_rng(seed).permutation(len(frames))
    n_valid = max(1, int(round(fraction * len(frames))))
    valid = sorted(order[:n_valid])
    keep = sorted(order[n_valid:])
    return [frames[k] for k in keep], [frames[k] for k in valid]
