"""Fine-tuning's settings (:class:`TrainSettings`) and result (:class:`TrainResult`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .loss import LossSettings
from .train_step import OptimSettings


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
