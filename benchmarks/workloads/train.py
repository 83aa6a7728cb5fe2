"""train: one fine-tuning epoch as whole processes (``benchmarks/train_epoch.py``),
jmattersim.train.train against upstream's train_model: time with the compile cache cold
and warm, the steady-state epoch, and peak memory with remat off and on."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from harness import (
    BATCH,
    HERE,
    SHARED,
    checkpoint,
    fresh_cache,
    jm_model,
    measured,
    model_dir,
    write_frames,
)
from report import Bench


def measure(bench: Bench, name: str) -> None:
    """256 MPtrj frames."""
    train_rows(name, 256, bench.seed, bench.add)


def train_rows(name: str, n: int, seed: int, add) -> None:
    """One fine-tuning epoch (energy, forces, stresses; batches of 16) over ``n``
    labelled MPtrj frames drawn at random, as whole processes
    (``benchmarks/train_epoch.py``): jmattersim.train.train with the compile cache cold
    and warm against upstream's train_model; steady state: the second epoch of a
    two-epoch jmattersim run against upstream's epoch (torch compiles nothing: its
    first epoch is its steady state); peak memory with remat off and on."""
    import ase.io

    pool = ase.io.read(SHARED / "data" / "mptrj-random-1k.xyz", index=":")
    rng = np.random.default_rng(seed + 5)
    frames = [pool[i] for i in rng.choice(len(pool), n, replace=False)]
    src = write_frames(frames, f"train-{n}-{seed}.extxyz")
    script = str(HERE / "train_epoch.py")
    jm_cmd = [sys.executable, script, "jm", str(src), str(model_dir(name))]
    up_cmd = [sys.executable, script, "up", str(src), str(checkpoint(name))]
    env = {"JMATTERSIM_COMPILE_CACHE": str(fresh_cache())}
    what = f"{n} MPtrj frames, E+F+S, batches of {BATCH}, Huber 0.01"
    up = measured(up_cmd)
    cold, warm = measured(jm_cmd, env), measured(jm_cmd, env)
    for label, jm in (("cold", cold), ("warm", warm)):
        add(
            "fine-tune 1 epoch, whole process",
            name,
            "s",
            jm["child_wall"],
            up["child_wall"],
            f"{what}; jmattersim.train.train vs upstream's train_model; compile cache {label}; "
            f"epoch alone {jm['epochs'][0]:.1f} s vs {up['epochs'][0]:.1f} s",
            lower_is_better=True,
            jm_impl=label,
        )
    # a user's run (default epochs=1000: budgets planned over 64 epochs), stopped after two
    jm2 = measured([*jm_cmd, "--epochs", "1000", "--max-epochs", "2"], env)
    add(
        "fine-tune epoch, steady state",
        name,
        "s",
        jm2["epochs"][1],
        up["epochs"][0],
        f"{what}; jmattersim: second epoch of a default run (epochs=1000) stopped after "
        f"two; upstream: its epoch (train_one_epoch); {train_padding(name, src, 1000)}",
        lower_is_better=True,
    )
    remat_env = {"JMATTERSIM_COMPILE_CACHE": str(fresh_cache())}
    remat = measured([*jm_cmd, "--remat"], remat_env)
    for label, jm in (("remat=False", cold), ("remat=True", remat)):
        add(
            "fine-tune 1 epoch, peak memory",
            name,
            "MiB",
            jm["peak_mib"],
            up["peak_mib"],
            f"{what}; resident high-water mark of the whole process, compile cache cold "
            f"(compilation included); remat=False warm cache {warm['peak_mib']:.0f} MiB; "
            f"{label}: {jm['child_wall']:.0f} s, epoch alone {jm['epochs'][0]:.1f} s",
            lower_is_better=True,
            jm_impl=label,
        )


def train_padding(name: str, src: Path, epochs: int) -> str:
    """How full jmattersim's padded training batches are in a run of ``epochs``:
    the real edges and triplets of the first epoch's batches over the slots of the
    budgets they are padded to (each batch in the smallest that holds it)."""
    import math

    from jmattersim._src import train_plan as plan
    from jmattersim._src.dataset import read_frames
    from jmattersim._src.padding import counts_of
    from jmattersim._src.train_settings import TrainSettings

    frames = read_frames(src, jm_model(name).config, True, True)
    settings = TrainSettings(epochs=epochs, batch_size=BATCH)
    planned = min(epochs, plan.PLANNED_EPOCHS)
    steps = planned * math.ceil(len(frames) / BATCH)
    levels = settings.budget_levels if steps >= plan.SHORT_RUN_STEPS else 1
    budgets = plan.training_budgets(frames, [], BATCH, [settings.seed], planned, levels)
    counts = np.array([counts_of(f.graph) for f in frames], np.int64)
    real = slots = np.zeros(2)
    for index in plan.batches_of(plan.epoch_order(len(frames), settings.seed, 0), BATCH):
        total = tuple(int(c) for c in counts[index].sum(axis=0))
        budget = next(b for b in budgets if b.holds(total))
        real = real + np.array(total[1:3])
        slots = slots + np.array([budget.edges, budget.triplets])
    fill = real / slots
    sizes = ", ".join(f"{b.edges}/{b.triplets}" for b in budgets)
    return (
        f"{len(budgets)} padded budget(s) (edges/triplets {sizes}); "
        f"{fill[0]:.0%} of edge slots, {fill[1]:.0%} of triplet slots real"
    )
