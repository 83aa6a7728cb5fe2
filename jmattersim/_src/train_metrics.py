"""A fine-tuning run's metrics: ``metrics.csv`` (a row per epoch and member) and
its learning curves."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

METRICS = ("loss", "mae_energy", "mae_forces", "mae_stress")


def write_metrics(path: Path, rows: list[dict]) -> None:
    """Writes ``rows`` (dicts with the same keys) to the CSV ``path`` atomically."""
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
