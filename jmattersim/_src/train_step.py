"""The pure pieces of training: parameter split, optimiser, EMA and the compiled step.

Mirrors upstream's ``Potential.train_one_epoch``: loss (:mod:`jmattersim._src.loss`),
gradient, clipping of the global gradient norm to 1 (``clip_grad_norm_``), Adam
(eps 1e-7) with a StepLR schedule, then an exponential moving average of the
weights (``torch_ema``: decay ``min(decay, (1 + n) / (10 + n))`` after ``n``
updates). Validation uses the averaged weights.

A committee of K members is the same step ``vmap``-ed over stacked states and
batches: one compiled call per step, whatever K.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from . import programs
from .config import M3GNetConfig
from .energy import Predictions, predict
from .loss import Labels, LossSettings, Metrics, batch_loss
from .padding import Batch

Params = Any


# ------------------------------------------------------------------ parameter split


def split_params(variables: Params, scale: bool, shift: bool) -> tuple[Params, Params]:
    """(trainable, frozen): the weights, and the rest (basis constants; the
    per-element scale and shift unless trainable, as upstream keeps them buffers)."""
    weights = dict(variables["params"])
    normalizer = dict(weights.pop("normalizer"))
    trainable_norm = {
        k: normalizer.pop(k) for k in ("scale", "shift") if {"scale": scale, "shift": shift}[k]
    }
    if trainable_norm:
        weights["normalizer"] = trainable_norm
    frozen = {"normalizer": normalizer, "constants": variables["constants"]}
    return weights, frozen


def merge_params(trainable: Params, frozen: Params) -> Params:
    """The Flax variables ``{"params", "constants"}`` from :func:`split_params`'s parts."""
    weights = dict(trainable)
    weights["normalizer"] = {**frozen["normalizer"], **trainable.get("normalizer", {})}
    return {"params": weights, "constants": frozen["constants"]}


# ------------------------------------------------------------------------- optimiser


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """``torch.nn.utils.clip_grad_norm_``: scale by ``max_norm / (norm + 1e-6)``
    when that is below one (optax's clip divides by the norm alone)."""

    def update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        factor = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
        return jax.tree_util.tree_map(lambda g: g * factor.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def step_lr(lr: float, steps_per_epoch: int, step_size: int, gamma: float) -> optax.Schedule:
    """torch's StepLR stepped once per epoch: lr * gamma ** (epoch // step_size)."""

    def schedule(count):
        epoch = count // steps_per_epoch
        return lr * gamma ** (epoch // step_size).astype(jnp.float32)

    return schedule


class OptimSettings(NamedTuple):
    """Upstream's optimiser settings (hashable: they key the compiled step).

    lr: learning rate; steps_per_epoch: batches per epoch; step_size, gamma:
    StepLR (lr times gamma every step_size epochs); clip_norm: the global gradient
    norm clipped to (None: no clipping); ema_decay: the moving average's decay.
    """

    lr: float = 2e-4
    steps_per_epoch: int = 1
    step_size: int = 10
    gamma: float = 0.95
    clip_norm: float | None = 1.0
    ema_decay: float = 0.99


def optimizer(o: OptimSettings) -> optax.GradientTransformation:
    """Upstream's optimiser: gradient clipping, then Adam (eps 1e-7) with StepLR."""
    schedule = step_lr(o.lr, o.steps_per_epoch, o.step_size, o.gamma)
    adam = optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-7)
    if o.clip_norm is None:
        return adam
    return optax.chain(clip_by_global_norm_torch(o.clip_norm), adam)


class TrainState(NamedTuple):
    """One member's training state (a pytree; stacked along a leading axis for a
    committee).

    params: the trainable weights; opt_state: optax's; ema: their moving average;
    updates: how many steps were taken (the EMA's ``n``).
    """

    params: Params
    opt_state: Any
    ema: Params
    updates: jax.Array


def init_state(trainable: Params, tx: optax.GradientTransformation) -> TrainState:
    copy = jax.tree_util.tree_map(jnp.array, trainable)  # its own buffers: the step donates them
    return TrainState(trainable, tx.init(trainable), copy, jnp.zeros((), jnp.int32))


def ema_update(ema: Params, params: Params, updates: jax.Array, decay: float) -> Params:
    """``torch_ema``'s update after ``updates`` steps (counting this one)."""
    n = updates.astype(jnp.float32)
    d = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
    return jax.tree_util.tree_map(lambda s, p: s - (1.0 - d).astype(s.dtype) * (s - p), ema, params)


# ------------------------------------------------------------------------ predictions


def batch_predictions(
    config: M3GNetConfig, variables: Params, batch: Batch, settings: LossSettings, remat: bool
) -> Predictions:
    """Energies (and forces and stresses when the loss holds them) of a padded batch."""
    derivatives = settings.forces or settings.stress
    return predict(config, variables, batch, remat=remat, derivatives=derivatives)


def loss_fn(
    config: M3GNetConfig,
    settings: LossSettings,
    trainable: Params,
    frozen: Params,
    batch: Batch,
    labels: Labels,
    remat: bool = False,
) -> Metrics:
    """Upstream's loss of one batch as a function of the trainable weights."""
    pred = batch_predictions(config, merge_params(trainable, frozen), batch, settings, remat)
    return batch_loss(pred, labels, settings)


def train_step(
    config: M3GNetConfig,
    settings: LossSettings,
    optim: OptimSettings,
    remat: bool,
    state: TrainState,
    frozen: Params,
    batch: Batch,
    labels: Labels,
) -> tuple[TrainState, Metrics]:
    """One optimiser step on one batch: gradient, clip, Adam, EMA."""

    def objective(trainable):
        m = loss_fn(config, settings, trainable, frozen, batch, labels, remat)
        return m.loss, m

    grads, metrics = jax.grad(objective, has_aux=True)(state.params)
    updates, opt_state = optimizer(optim).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    n = state.updates + 1
    ema = ema_update(state.ema, params, n, optim.ema_decay)
    return TrainState(params, opt_state, ema, n), metrics


@functools.lru_cache(maxsize=16)
def compiled_step(
    config: M3GNetConfig,
    settings: LossSettings,
    optim: OptimSettings,
    remat: bool,
    committee: bool,
):
    """``step(state, frozen, batch, labels) -> (state, metrics)``, compiled once per
    shapes and stored for the next process (:mod:`jmattersim._src.programs`), the
    state donated; for a committee, ``vmap``-ed over the stacked states, batches and
    labels."""
    step = functools.partial(train_step, config, settings, optim, remat)
    if committee:
        step = jax.vmap(step, in_axes=(0, None, 0, 0))
    static = dict(config=config, settings=settings, optim=optim, remat=remat, committee=committee)

    def run(state, frozen, batch, labels):
        args = (state, frozen, batch, labels)
        name = "train_step.train_step"
        return programs.compiled(name, step, args, static, donate_argnums=(0,))(*args)

    return run


@functools.lru_cache(maxsize=16)
def compiled_eval(config: M3GNetConfig, settings: LossSettings, committee: bool):
    """``metrics(weights, frozen, batch, labels)``, compiled and stored as the step is
    (vmapped for a committee)."""

    def evaluate(weights, frozen, batch, labels):
        return loss_fn(config, settings, weights, frozen, batch, labels)

    if committee:
        evaluate = jax.vmap(evaluate, in_axes=(0, None, None, None))
    static = dict(config=config, settings=settings, committee=committee)

    def run(*args):
        return programs.compiled("train_step.evaluate", evaluate, args, static)(*args)

    return run
