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
epochs (:mod:`jmattersim._src.train_plan`): a run compiles its step once per budget.
The run's state is :mod:`jmattersim._src.train_run`'s, its directory
:mod:`jmattersim._src.train_store`'s and :mod:`jmattersim._src.train_metrics`'s.
"""

from __future__ import annotations

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
import numpy as np
from ase import Atoms

from .arrays import default_float
from .checkpoint import Model
from .dataset import read_frames
from .normalize import refit_normalizer
from .progress import progress_bar
from .train_metrics import read_metrics, write_metrics
from .train_plan import PLANNED_EPOCHS, SHORT_RUN_STEPS, split_validation, training_budgets
from .train_run import Run
from .train_settings import TrainResult, TrainSettings
from .train_store import (
    check_same_run,
    open_manager,
    restore_latest,
    save_args,
    save_best,
    settings_record,
)


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
        settings: a [`TrainSettings`][jmattersim.train.TrainSettings]; or give its
            fields as keyword arguments (``epochs=5, lr=1e-4, ...``).
        restart: ignore (and replace) an earlier run in ``out``.
        progress: show a progress bar (tqdm) with the losses.
        dtype (numpy dtype or None): float32 (default) or float64 (needs
            ``jax_enable_x64``).
        max_epochs: stop after this many epochs in this call (the run stays
            resumable; for tests and time-limited jobs).

    Returns:
        A [`TrainResult`][jmattersim.train.TrainResult].

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
    run = Run(model, settings, frames, valid, budgets, dtype)

    history: list[dict] = []
    manager = None
    if out is not None:
        out = Path(out)
        if restart and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        record = settings_record(settings, model, len(frames), len(valid))
        check_same_run(out, record)
        (out / "train_settings.json").write_text(json.dumps(record, indent=2))
        manager = open_manager(out)
        if manager.latest_step() is not None:
            run.restore(restore_latest(manager, run.tree()))
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
                save_best(run.best_model(source), out / "best_model")
            write_metrics(out / "metrics.csv", history)
            manager.save(epoch, args=save_args(run.tree()))
            manager.wait_until_finished()
        done_now += 1
        if run.should_stop(epoch):
            stopped = True
            break
    bar.close()
    if manager is not None:
        manager.close()
    return TrainResult(run.best_model(source), history, out, run.epoch + 1, stopped)
