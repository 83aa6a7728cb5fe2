"""A fine-tuning run's state between epochs (host side): the optimiser state of
every member, the best EMA weights, and one epoch of training and validation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .capacity import Capacity, Counts
from .checkpoint import Model
from .dataset import LabelledFrame
from .loss import Metrics, pad_labels
from .padding import counts_of, pad
from .train_metrics import METRICS
from .train_plan import batches_of, epoch_order, snug
from .train_settings import TrainSettings
from .train_step import (
    compiled_eval,
    compiled_step,
    init_state,
    merge_params,
    optimizer,
    split_params,
)


def _padded(frames: Sequence[LabelledFrame], budget: Capacity, config, dtype):
    """(batch, labels): ``frames`` and their labels padded to ``budget``."""
    batch = pad([f.graph for f in frames], budget, config, dtype)
    labels = pad_labels(list(frames), budget.nodes, budget.graphs, dtype)
    return batch, labels


def _host(tree: Any) -> Any:
    """A host copy (the compiled step donates the device buffers)."""
    return jax.tree_util.tree_map(lambda a: np.array(a, copy=True), tree)


def _stack(trees: Sequence[Any]) -> Any:
    """K trees stacked leaf by leaf on a new leading member axis (K, ...)."""
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *trees)


def _member(tree: Any, m: int) -> Any:
    """Member ``m``'s slice of a tree with a leading member axis."""
    return jax.tree_util.tree_map(lambda a: a[m], tree)


class Run:
    """The state of one run between epochs (host side)."""

    def __init__(self, model: Model, settings: TrainSettings, train, valid, budgets, dtype):
        self.config = model.config
        self.settings = settings
        self.train, self.valid = train, valid
        self.budgets, self.dtype = list(budgets), dtype
        self.k = settings.committee
        self.seeds = [settings.seed + m for m in range(self.k)]
        self.steps_per_epoch = math.ceil(len(train) / settings.batch_size)
        self.optim = settings.optim(self.steps_per_epoch)
        # copies: the compiled step donates its state's buffers, never the caller's
        variables = jax.tree_util.tree_map(lambda a: jnp.array(a, dtype, copy=True), model.params)
        trainable, self.frozen = split_params(
            variables, settings.trainable_scale, settings.trainable_shift
        )
        state = init_state(trainable, optimizer(self.optim))
        self.state = _stack([state] * self.k) if self.k > 1 else state
        k_axis = (self.k,) if self.k > 1 else ()
        self.best = {
            "params": _host(self.state.ema),
            "metric": np.full(k_axis, np.inf),
            "epoch": np.full(k_axis, -1, np.int64),
        }
        self.epoch = -1  # last complete epoch
        self.step = compiled_step(
            self.config, settings.loss_settings, self.optim, settings.remat, self.k > 1
        )
        self.evaluate = compiled_eval(self.config, settings.loss_settings, self.k > 1)

    # -- checkpoints
    def tree(self) -> dict:
        return {"state": self.state, "best": self.best, "epoch": np.asarray(self.epoch)}

    def restore(self, tree: dict) -> None:
        self.state, self.best, self.epoch = tree["state"], tree["best"], int(tree["epoch"])

    # -- one epoch
    def _member_batches(self, epoch: int) -> list[list[np.ndarray]]:
        orders = [epoch_order(len(self.train), seed, epoch) for seed in self.seeds]
        return [batches_of(o, self.settings.batch_size) for o in orders]

    def _fit(self, *groups: Sequence[LabelledFrame]) -> Capacity:
        """The smallest budget holding each group (a batch per committee member);
        beyond the planned epochs the largest grows (one more compilation)."""
        totals = [sum((counts_of(f.graph) for f in g), Counts(0, 0, 0, 0)) for g in groups]
        for budget in self.budgets:
            if all(budget.holds(t) for t in totals):
                return budget
        grown = snug(Counts(*np.max(np.array(totals), axis=0)))
        self.budgets[-1] = Capacity.padded(np.maximum(grown.slots, self.budgets[-1].slots))
        return self.budgets[-1]

    def train_epoch(self, epoch: int, bar=None) -> list[dict]:
        per_member = self._member_batches(epoch)
        sums = np.zeros((self.k, 4))
        for i in range(self.steps_per_epoch):
            groups = [[self.train[j] for j in per_member[m][i]] for m in range(self.k)]
            budget = self._fit(*groups)
            padded = [_padded(g, budget, self.config, self.dtype) for g in groups]
            batch, labels = padded[0] if self.k == 1 else _stack(padded)
            new_state, metrics = self.step(self.state, self.frozen, batch, labels)
            values = np.asarray(jax.device_get(jnp.stack(list(metrics))), float).reshape(4, -1).T
            if not np.isfinite(values[:, 0]).all():
                bad = [m for m in range(self.k) if not np.isfinite(values[m, 0])]
                names = "; ".join(self.train[j].label for j in per_member[bad[0]][i])
                raise FloatingPointError(
                    f"non-finite loss in epoch {epoch}, batch {i} of member {bad[0]} ({names}); "
                    "the run stops without applying it, the last complete epoch's checkpoint kept"
                )
            self.state = new_state
            sums += values
            if bar is not None:
                bar.update(1)
        return [dict(zip(METRICS, row / self.steps_per_epoch, strict=True)) for row in sums]

    def validate(self) -> list[dict]:
        if not self.valid:
            return [dict.fromkeys(METRICS, float("nan")) for _ in range(self.k)]
        sums = np.zeros((self.k, 4))
        groups = batches_of(np.arange(len(self.valid)), self.settings.batch_size)
        for index in groups:
            frames = [self.valid[j] for j in index]
            batch, labels = _padded(frames, self._fit(frames), self.config, self.dtype)
            metrics: Metrics = self.evaluate(self.state.ema, self.frozen, batch, labels)
            sums += np.asarray(jax.device_get(jnp.stack(list(metrics))), float).reshape(4, -1).T
        return [dict(zip(METRICS, row / len(groups), strict=True)) for row in sums]

    def lr(self, epoch: int) -> float:
        s = self.settings
        return s.lr * s.gamma ** (epoch // s.step_size)

    def update_best(self, epoch: int, val: list[dict], train: list[dict]) -> bool:
        """Keeps each member's best EMA weights; True if any improved."""
        metric = np.array(
            [v["loss"] if self.valid else t["loss"] for v, t in zip(val, train, strict=True)]
        )
        old = np.asarray(self.best["metric"]).reshape(-1)
        better = metric < old
        if not better.any():
            return False
        pick = better if self.k > 1 else better[0]

        def choose(new, old):
            mask = np.reshape(pick, np.shape(pick) + (1,) * (np.ndim(new) - np.ndim(pick)))
            return np.where(mask, np.asarray(new), old)

        self.best = {
            "params": _host(jax.tree_util.tree_map(choose, self.state.ema, self.best["params"])),
            "metric": np.where(better, metric, old).reshape(np.shape(self.best["metric"])),
            "epoch": np.where(better, epoch, np.asarray(self.best["epoch"]).reshape(-1)).reshape(
                np.shape(self.best["epoch"])
            ),
        }
        return True

    def should_stop(self, epoch: int) -> bool:
        last_best = np.asarray(self.best["epoch"]).reshape(-1)
        return bool(np.all(epoch > last_best + self.settings.early_stop_patience))

    def best_model(self, source: dict):
        """The best weights as a Model (or a committee of them)."""
        best = self.best["params"]
        members = [best] if self.k == 1 else [_member(best, m) for m in range(self.k)]
        models = [Model(self.config, _host(merge_params(w, self.frozen)), source) for w in members]
        if self.k == 1:
            return models[0]
        from .committee import stack_models

        return stack_models(models)
