"""Fine-tuning: upstream's ``finetune_mattersim.py`` loop in JAX, resumable.

Per epoch: shuffle (a fresh order per epoch and member, from the random seed), one
optimiser step per batch of ``batch_size`` frames (:mod:`jmattersim._src.train_step`),
validation with the averaged (EMA) weights, StepLR, then an Orbax checkpoint of the
whole state in ``DIR/checkpoints`` and a row per member in ``DIR/metrics.csv``.
The best weights by validation loss are written as a model directory,
``DIR/best_model`` (a committee directory for K > 1 members). A killed run
restarts from its last complete epoch with the same call: data orders are a
function of (seed, member, epoch), and the optimiser, EMA and best-model state
are in the checkpoint, so it ends with the parameters of an uninterrupted run.

Every batch is padded to one of a few budgets fitted to the batches of the planned
epochs (:func:`training_budgets`): a run compiles its step once per budget.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms

from .arrays import default_float
from .checkpoint import Model, save_model
from .dataset import LabelledFrame, read_frames
from .loss import LossSettings, Metrics, pad_labels
from .normalize import refit_normalizer
from .padding import BatchBudget, Counts, counts_of, pad
from .progress import progress_bar
from .train_step import (
    OptimSettings,
    compiled_eval,
    compiled_step,
    init_state,
    merge_params,
    optimizer,
    split_params,
)

METRICS = ("loss", "mae_energy", "mae_forces", "mae_stress")
PLANNED_EPOCHS = 64  # epochs whose batches size the budgets (later ones grow them if need be)
SHORT_RUN_STEPS = 32  # a run planning fewer steps pads every batch to one budget


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Fine-tuning settings; defaults are upstream's ``finetune_mattersim.py``'s.

    Attributes:
        epochs: passes over the training data.
        batch_size: frames per optimiser step.
        lr: Adam's learning rate.
        step_size: StepLR: the learning rate is multiplied by ``gamma`` every
            ``step_size`` epochs.
        gamma: StepLR's factor.
        include_forces: train on forces (eV/Å).
        include_stresses: train on stresses (GPa in the loss).
        force_loss_ratio: weight of the force term.
        stress_loss_ratio: weight of the stress term.
        loss: "huber" (upstream's script: ``HuberLoss(delta=0.01)``) or "mse"
            (``Potential.train_model``'s default).
        huber_delta: the Huber threshold.
        early_stop_patience: stop when the validation loss has not improved for
            this many epochs.
        re_normalize: refit the per-element shift and scale on the training set
            first (upstream's ``--re_normalize``).
        trainable_scale: train the per-element scale.
        trainable_shift: train the per-element shift.
        ema_decay: decay of the weights' moving average (used for validation and
            the exported model).
        seed: the data order's seed (member k of a committee uses ``seed + k``).
        valid_fraction: share of the training frames held out for validation when
            no validation set is given.
        committee: number of members trained together (one compiled step).
        clip_norm: the global gradient norm is clipped to this (None: off).
        remat: recompute each interaction block in the backward pass
            (``jax.checkpoint``): less memory, the same numbers.
        budget_levels: padded batch sizes (1 to 3) the run compiles its step for:
            more compilations, less padding (a run of fewer than 32 steps uses one).
    """

    epochs: int = 1000
    batch_size: int = 16
    lr: float = 2e-4
    step_size: int = 10
    gamma: float = 0.95
    include_forces: bool = True
    include_stresses: bool = False
    force_loss_ratio: float = 1.0
    stress_loss_ratio: float = 0.1
    loss: str = "huber"
    huber_delta: float = 0.01
    early_stop_patience: int = 10
    re_normalize: bool = False
    trainable_scale: bool = False
    trainable_shift: bool = False
    ema_decay: float = 0.99
    seed: int = 42
    valid_fraction: float = 0.1
    committee: int = 1
    clip_norm: float | None = 1.0
    remat: bool = False
    budget_levels: int = 3

    def __post_init__(self) -> None:
        if self.loss not in ("huber", "mse"):
            raise ValueError(f"loss must be 'huber' or 'mse', got '{self.loss}'")
        for name in ("epochs", "batch_size", "step_size", "committee"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")

    @property
    def loss_settings(self) -> LossSettings:
        """The loss's terms and weights (static under ``jit``).

        Returns:
            The ``LossSettings`` of :mod:`jmattersim._src.loss`.
        """
        return LossSettings(
            self.loss,
            self.huber_delta,
            self.include_forces,
            self.include_stresses,
            self.force_loss_ratio,
            self.stress_loss_ratio,
        )

    def optim(self, steps_per_epoch: int) -> OptimSettings:
        """The optimiser's settings for a run of ``steps_per_epoch`` batches per epoch.

        Args:
            steps_per_epoch: optimiser steps per epoch (StepLR counts epochs).

        Returns:
            The ``OptimSettings`` of :mod:`jmattersim._src.train_step`.
        """
        return OptimSettings(
            self.lr, steps_per_epoch, self.step_size, self.gamma, self.clip_norm, self.ema_decay
        )


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the best weights by validation loss (EMA), a
            [`Model`][jmattersim.Model], or a committee for K > 1 members.
        history: one dict per epoch and member (the rows of ``metrics.csv``).
        out: the run directory (None when training in memory only).
        epochs_run: epochs completed (early stopping may end the run sooner).
        stopped_early: whether early stopping ended it.
    """

    model: Any
    history: list[dict]
    out: Path | None
    epochs_run: int
    stopped_early: bool


# ------------------------------------------------------------------------------ data


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The frames' order in ``epoch`` for a member with this random seed: a fresh
    permutation per epoch (a function of both, so a resumed run repeats it)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batches_of(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def snug_budget(counts: Sequence[int]) -> BatchBudget:
    """The budget just above ``counts`` (nodes, edges, triplets, graphs), each
    rounded up to a 32nd of its power of two: a run has only a few budgets, so
    they can be snugger than the engine's ``bucket`` ladder."""

    def up(n: int) -> int:
        step = max(8, 2 ** max(0, int(n).bit_length() - 5))
        return (int(n) // step + 1) * step

    return BatchBudget(*(up(c) for c in counts))


def training_budgets(
    frames: Sequence[LabelledFrame],
    valid: Sequence[LabelledFrame],
    batch_size: int,
    seeds: Sequence[int],
    epochs: int,
    levels: int = 3,
) -> tuple[BatchBudget, ...]:
    """A few budgets (:func:`snug_budget`), smallest first, that hold every
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
    budgets: list[BatchBudget] = []
    for cut in cuts:
        group = rows[rows[:, 1] <= cut] if np.isfinite(cut) else rows
        budget = snug_budget(group.max(axis=0))
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


def _padded(frames: Sequence[LabelledFrame], budget: BatchBudget, config, dtype):
    batch = pad([f.graph for f in frames], budget, config, dtype)
    labels = pad_labels(list(frames), budget.nodes, budget.graphs, dtype)
    return batch, labels


def _host(tree: Any) -> Any:
    """A host copy (the compiled step donates the device buffers)."""
    return jax.tree_util.tree_map(lambda a: np.array(a, copy=True), tree)


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *trees)


# ---------------------------------------------------------------------------- driver


class _Run:
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

    def _fit(self, *groups: Sequence[LabelledFrame]) -> BatchBudget:
        """The smallest budget holding each group (a batch per committee member);
        beyond the planned epochs the largest grows (one more compilation)."""
        totals = [sum((counts_of(f.graph) for f in g), Counts(0, 0, 0, 0)) for g in groups]
        for budget in self.budgets:
            if all(budget.holds(t) for t in totals):
                return budget
        grown = [snug_budget(t) for t in totals] + [self.budgets[-1]]
        self.budgets[-1] = BatchBudget(*np.max(np.array(grown), axis=0).tolist())
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


def _member(tree: Any, m: int) -> Any:
    return jax.tree_util.tree_map(lambda a: a[m], tree)


def _save_best(model, out: Path) -> None:
    from .committee import Committee, save_committee

    if isinstance(model, Committee):
        save_committee(model, out, overwrite=True)
    else:
        save_model(model, out, overwrite=True)


def _settings_record(settings: TrainSettings, model: Model, n_train: int, n_valid: int) -> dict:
    return {
        "settings": dataclasses.asdict(settings),
        "model": model.source.get("sha256") or model.config.to_dict(),
        "frames": [n_train, n_valid],
    }


def _check_same_run(out: Path, record: dict) -> None:
    path = out / "train_settings.json"
    if path.is_file():
        old = json.loads(path.read_text())
        new = json.loads(json.dumps(record))
        for r in (old, new):  # a run may be extended: more epochs are the same run
            r.get("settings", {}).pop("epochs", None)
        if old != new:
            diff = sorted(
                k for k in new["settings"] if old.get("settings", {}).get(k) != new["settings"][k]
            )
            raise ValueError(
                f"{out} holds a run with other settings ({', '.join(diff) or 'model or data'} "
                "differ); pass another output directory, or restart=True (--restart) to "
                "start over"
            )


def _write_metrics(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    os.replace(tmp, path)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a run's ``metrics.csv``.

    Args:
        path: the run directory or its ``metrics.csv``.

    Returns:
        One dict per epoch and member: ``epoch`` and ``member`` ints, the rest
        floats (``lr``, ``train_loss``, ``val_mae_forces`` eV/Å, ..., ``seconds``).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    ints = {"epoch", "member"}
    return [{k: int(v) if k in ints else float(v) for k, v in r.items()} for r in rows]


def train(
    model: Model,
    train_data: str | os.PathLike | Sequence[Atoms],
    valid_data: str | os.PathLike | Sequence[Atoms] | None = None,
    *,
    out: str | os.PathLike | None = None,
    settings: TrainSettings | None = None,
    restart: bool = False,
    progress: bool = True,
    dtype=None,
    max_epochs: int | None = None,
    **options: Any,
) -> TrainResult:
    """Fine-tunes ``model`` on labelled structures, as upstream's ``finetune_mattersim.py``.

    Loss: upstream's ``Potential.loss_calc`` (per-atom energy, forces, stresses in
    GPa; Huber or MSE); optimiser: gradient clipping, Adam, StepLR; EMA weights
    for validation and the result. With ``out``, every epoch leaves an Orbax
    checkpoint in ``out/checkpoints`` and rows in ``out/metrics.csv``, and the best
    weights are written to ``out/best_model`` (load it with
    [`load_model`][jmattersim.load_model]); calling again with the same arguments
    resumes after the last complete epoch.

    Args:
        model: the starting [`Model`][jmattersim.Model].
        train_data: a file ASE reads (extxyz with energy, forces, stress) or a list
            of labelled ``Atoms``.
        valid_data: the same for validation; None holds out
            ``settings.valid_fraction`` of the training frames.
        out: the run directory (None: nothing written, nothing resumable).
        settings: a [`TrainSettings`][jmattersim.TrainSettings]; or give its
            fields as keyword arguments (``epochs=5, lr=1e-4, ...``).
        restart: ignore (and replace) an earlier run in ``out``.
        progress: show a progress bar (tqdm) with the losses.
        dtype (numpy dtype or None): float32 (default) or float64 (needs
            ``jax_enable_x64``).
        max_epochs: stop after this many epochs in this call (the run stays
            resumable; for tests and time-limited jobs).

    Returns:
        A [`TrainResult`][jmattersim.TrainResult].

    Raises:
        InvalidLabelError: a frame lacks a label or has a wrong shape or unit.
        FloatingPointError: the loss became non-finite (the last complete epoch's
            checkpoint is kept).
        ValueError: ``out`` holds a run with other settings.
    """
    settings = dataclasses.replace(settings or TrainSettings(), **options)
    dtype = np.dtype(dtype or default_float())
    config = model.config
    forces, stress = settings.include_forces, settings.include_stresses
    frames = read_frames(train_data, config, forces, stress, kind="training frame")
    if valid_data is None:
        frames, valid = split_validation(frames, settings.valid_fraction, settings.seed)
    else:
        valid = read_frames(valid_data, config, forces, stress, kind="validation frame")
    if settings.re_normalize:
        scale, shift = refit_normalizer(frames, config.max_z)
        params = jax.tree_util.tree_map(np.asarray, model.params)
        params["params"]["normalizer"] = {"scale": scale, "shift": shift}
        model = dataclasses.replace(model, params=params)
    seeds = [settings.seed + m for m in range(settings.committee)]
    planned = min(settings.epochs, PLANNED_EPOCHS)
    steps = planned * math.ceil(len(frames) / settings.batch_size)
    levels = settings.budget_levels if steps >= SHORT_RUN_STEPS else 1
    budgets = training_budgets(frames, valid, settings.batch_size, seeds, planned, levels)
    run = _Run(model, settings, frames, valid, budgets, dtype)

    history: list[dict] = []
    manager = None
    if out is not None:
        out = Path(out)
        if restart and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        record = _settings_record(settings, model, len(frames), len(valid))
        _check_same_run(out, record)
        (out / "train_settings.json").write_text(json.dumps(record, indent=2))
        manager = _manager(out)
        if manager.latest_step() is not None:
            run.restore(_restore(manager, run.tree()))
            if (out / "metrics.csv").is_file():
                history = [r for r in read_metrics(out) if r["epoch"] <= run.epoch]
    bar = progress_bar(
        progress,
        total=settings.epochs * run.steps_per_epoch,
        initial=(run.epoch + 1) * run.steps_per_epoch,
        unit="batch",
        desc="fine-tuning",
    )
    stopped = run.epoch >= 0 and run.should_stop(run.epoch)  # a finished run stays finished
    done_now = 0
    source = {**model.source, "fine_tuned": True}
    for epoch in range(run.epoch + 1, settings.epochs):
        if stopped or (max_epochs is not None and done_now >= max_epochs):
            break
        start = time.perf_counter()
        train_metrics = run.train_epoch(epoch, bar)
        val_metrics = run.validate()
        improved = run.update_best(epoch, val_metrics, train_metrics)
        run.epoch = epoch
        seconds = time.perf_counter() - start
        for m in range(run.k):
            history.append(
                {
                    "epoch": epoch,
                    "member": m,
                    "lr": run.lr(epoch),
                    **{f"train_{k}": v for k, v in train_metrics[m].items()},
                    **{f"val_{k}": v for k, v in val_metrics[m].items()},
                    "seconds": round(seconds, 3),
                }
            )
        bar.set_postfix(
            train=f"{np.mean([t['loss'] for t in train_metrics]):.4g}",
            val=f"{np.mean([v['loss'] for v in val_metrics]):.4g}",
        )
        if out is not None:
            if improved:
                _save_best(run.best_model(source), out / "best_model")
            _write_metrics(out / "metrics.csv", history)
            manager.save(epoch, args=_save_args(run.tree()))
            manager.wait_until_finished()
        done_now += 1
        if run.should_stop(epoch):
            stopped = True
            break
    bar.close()
    if manager is not None:
        manager.close()
    return TrainResult(run.best_model(source), history, out, run.epoch + 1, stopped)


# ------------------------------------------------------------------------ Orbax glue


def _manager(out: Path):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=3, create=True)
    return ocp.CheckpointManager(out.absolute() / "checkpoints", options=options)


def _save_args(tree: dict):
    import orbax.checkpoint as ocp

    return ocp.args.StandardSave(jax.tree_util.tree_map(np.asarray, tree))


def _restore(manager, like: dict) -> dict:
    import orbax.checkpoint as ocp

    abstract = jax.tree_util.tree_map(np.asarray, like)
    step = manager.latest_step()
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def plot_metrics(history: str | os.PathLike | Sequence[dict], keys: Sequence[str] = METRICS):
    """Learning curves: training and validation loss and MAEs against the epoch.

    Args:
        history: a run directory, its ``metrics.csv``, or ``TrainResult.history``.
        keys: the metrics to draw, one panel each (of "loss", "mae_energy",
            "mae_forces", "mae_stress").

    Returns:
        (matplotlib.figure.Figure): one panel per metric, a line per member and split.
    """
    import matplotlib.pyplot as plt

    rows = read_metrics(history) if isinstance(history, (str, os.PathLike)) else list(history)
    units = {
        "loss": "",
        "mae_energy": " (eV/atom)",
        "mae_forces": " (eV/Å)",
        "mae_stress": " (GPa)",
    }
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    members = sorted({r.get("member", 0) for r in rows})
    for ax, key in zip(axes[0], keys, strict=True):
        for m in members:
            mine = [r for r in rows if r.get("member", 0) == m]
            epochs = [r["epoch"] for r in mine]
            suffix = f" {m}" if len(members) > 1 else ""
            ax.plot(epochs, [r[f"train_{key}"] for r in mine], "-", label=f"train{suffix}")
            ax.plot(epochs, [r[f"val_{key}"] for r in mine], "--", label=f"validation{suffix}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key.replace("_", " ") + units[key])
        ax.set_yscale("log")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig
