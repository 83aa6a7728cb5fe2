"""A fine-tuning run's directory: the Orbax checkpoints it resumes from, the best
model, and the settings record that tells a resumed run from another one."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np

from .checkpoint import Model, save_model
from .train_settings import TrainSettings


def open_manager(out: Path):
    """The Orbax ``CheckpointManager`` of ``out/checkpoints`` (the last 3 epochs kept)."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=3, create=True)
    return ocp.CheckpointManager(out.absolute() / "checkpoints", options=options)


def save_args(tree: dict):
    """Orbax's save arguments for the run state ``tree`` (host arrays)."""
    import orbax.checkpoint as ocp

    return ocp.args.StandardSave(jax.tree_util.tree_map(np.asarray, tree))


def restore_latest(manager, like: dict) -> dict:
    """The latest checkpoint of ``manager``, as host arrays shaped like ``like``."""
    import orbax.checkpoint as ocp

    abstract = jax.tree_util.tree_map(np.asarray, like)
    step = manager.latest_step()
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def save_best(model, out: Path) -> None:
    """Writes the best ``model`` (a Model or a Committee) to ``out``, replacing it."""
    from .committee import Committee, save_committee

    if isinstance(model, Committee):
        save_committee(model, out, overwrite=True)
    else:
        save_model(model, out, overwrite=True)


def settings_record(settings: TrainSettings, model: Model, n_train: int, n_valid: int) -> dict:
    """What ``train_settings.json`` holds: the settings, the model (its sha256 or
    architecture) and the numbers of training and validation frames."""
    return {
        "settings": dataclasses.asdict(settings),
        "model": model.source.get("sha256") or model.config.to_dict(),
        "frames": [n_train, n_valid],
    }


def check_same_run(out: Path, record: dict) -> None:
    """Raises ValueError if ``out`` holds a run with another ``record`` (the
    number of epochs aside: a longer run extends the same one)."""
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
