"""``jmattersim finetune TRAIN [--valid VALID] --model M --out DIR``: upstream's
``finetune_mattersim.py`` options, resumable (rerun the same command)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from .published import DEFAULT as DEFAULT_MODEL


def add_parser(sub) -> None:
    from .train_settings import TrainSettings

    d = TrainSettings()
    p = sub.add_parser(
        "finetune",
        help="fine-tune a model on labelled structures (energy, forces, stress)",
        description="Fine-tune MatterSim as upstream's finetune_mattersim.py does (loss, Adam, "
        "StepLR, EMA, early stopping), with an Orbax checkpoint per epoch in DIR/checkpoints, "
        "DIR/metrics.csv, and the best weights in DIR/best_model. Rerun the same command to "
        "resume an interrupted run.",
    )
    p.add_argument("train", help="training frames: any file ASE reads with energy and forces")
    p.add_argument("--valid", help="validation frames (default: hold out --valid-fraction)")
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"starting model (default {DEFAULT_MODEL})"
    )
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--step-size", type=int, default=d.step_size, help="StepLR period, epochs")
    p.add_argument("--gamma", type=float, default=d.gamma, help="StepLR factor")
    flag = argparse.BooleanOptionalAction
    p.add_argument("--include-forces", action=flag, default=d.include_forces)
    p.add_argument("--include-stresses", action=flag, default=d.include_stresses)
    p.add_argument("--force-loss-ratio", type=float, default=d.force_loss_ratio)
    p.add_argument("--stress-loss-ratio", type=float, default=d.stress_loss_ratio)
    p.add_argument(
        "--loss",
        choices=["huber", "mse"],
        default=d.loss,
        help="huber (delta 0.01, upstream's script) or mse",
    )
    p.add_argument("--huber-delta", type=float, default=d.huber_delta)
    p.add_argument("--early-stop-patience", type=int, default=d.early_stop_patience)
    p.add_argument(
        "--re-normalize",
        action=flag,
        default=d.re_normalize,
        help="refit the per-element energy shift and scale on the training set",
    )
    p.add_argument("--trainable-scale", action=flag, default=d.trainable_scale)
    p.add_argument("--trainable-shift", action=flag, default=d.trainable_shift)
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument("--seed", type=int, default=d.seed, help="random seed of the data order")
    p.add_argument("--valid-fraction", type=float, default=d.valid_fraction)
    p.add_argument(
        "--committee", type=int, default=d.committee, help="train K members in one compiled step"
    )
    p.add_argument("--remat", action="store_true", help="recompute blocks: less memory")
    p.add_argument("--float64", action="store_true", help="train in float64")
    p.add_argument("--restart", action="store_true", help="discard a run in DIR and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def finetune_command(args: argparse.Namespace) -> int:
    from .checks import InvalidStructureError
    from .dataset import InvalidLabelError
    from .io import load_model
    from .train import train
    from .train_settings import TrainSettings

    if args.float64:
        import jax

        jax.config.update("jax_enable_x64", True)
    names = {f.name for f in dataclasses.fields(TrainSettings)}
    try:
        settings = TrainSettings(**{k: v for k, v in vars(args).items() if k in names})
        model = load_model(args.model)
    except (ConnectionError, FileNotFoundError, ValueError) as e:
        print(f"jmattersim finetune: {e}", file=sys.stderr)
        return 1
    for path in (args.train, args.valid):
        if path is not None and not Path(path).is_file():
            print(f"jmattersim finetune: cannot read '{path}': no such file", file=sys.stderr)
            return 1
    start = time.perf_counter()
    try:
        result = train(
            model,
            args.train,
            args.valid,
            out=args.out,
            settings=settings,
            restart=args.restart,
            progress=not args.quiet,
        )
    except (InvalidLabelError, InvalidStructureError, FloatingPointError, ValueError) as e:
        print(f"jmattersim finetune: {e}", file=sys.stderr)
        return 1
    finite = [r for r in result.history if r["val_loss"] == r["val_loss"]]  # not NaN
    best = min(finite, key=lambda r: r["val_loss"]) if finite else None
    how = "stopped early" if result.stopped_early else "done"
    line = f"{result.epochs_run} epochs ({how}) in {time.perf_counter() - start:.1f} s"
    if best is not None:
        line += (
            f"; best validation loss {best['val_loss']:.4g} (epoch {best['epoch']}: energy MAE "
            f"{best['val_mae_energy']:.4g} eV/atom, forces MAE {best['val_mae_forces']:.4g} eV/Å)"
        )
    print(f"{line} -> {Path(args.out) / 'best_model'}")
    return 0
