"""A many-system MD run's directory: an Orbax checkpoint of the whole run at every
chunk edge, and the record that tells a resumed run from another one.

A killed run called again with the same directory and arguments resumes from its
last chunk edge: the state (the skin list and the thermostats included), the log
so far and the capacities come back as they were, so it finishes in the state an
uninterrupted run ends in. Each checkpoint is written atomically by Orbax.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import ase.io
import jax
import numpy as np

from .capacity import Capacity
from .union import Capacities


def run_record(structures, **arguments) -> dict:
    """What identifies a run: its arguments (``steps`` aside: a longer run extends
    the same one) and the sha256 of its structures."""
    digest = hashlib.sha256()
    for atoms in structures:
        for array in (atoms.numbers, atoms.positions, atoms.cell.array, atoms.get_momenta()):
            digest.update(np.ascontiguousarray(array).tobytes())
    plain = json.loads(json.dumps(arguments, default=lambda x: np.asarray(x).tolist()))
    return {"arguments": plain, "structures": digest.hexdigest()}


class RunStore:
    """The checkpoints of ``directory`` (the last two kept), for the run ``record``.

    Raises:
        ValueError: ``directory`` holds a run with another record.
    """

    def __init__(self, directory: str | os.PathLike, record: dict):
        import orbax.checkpoint as ocp

        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / "md_run.json"
        if path.is_file():
            if json.loads(path.read_text()) != record:
                raise ValueError(
                    f"{self.directory} holds another md run (other arguments or "
                    "structures); pass another checkpoint directory"
                )
        else:
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(record, indent=1))
            temporary.replace(path)
        options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
        self.manager = ocp.CheckpointManager(self.directory / "checkpoints", options=options)

    def latest(self) -> int | None:
        """The chunks the last checkpoint had completed (None: no checkpoint)."""
        return self.manager.latest_step()

    def save(self, chunks: int, state, table: np.ndarray, capacities, reallocations) -> None:
        """The run after ``chunks`` chunks: its state, log table and capacities."""
        import orbax.checkpoint as ocp

        meta = {
            "capacities": [dataclasses.asdict(c) for c in capacities],
            "reallocations": int(reallocations),
            "rows": int(table.shape[0]),
        }
        tree = {"state": jax.tree.map(np.asarray, state), "table": table}
        self.manager.save(
            chunks,
            args=ocp.args.Composite(tree=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)),
        )
        self.manager.wait_until_finished()

    def restore(self, like_state, row_shape) -> tuple[Any, np.ndarray, Capacities, int]:
        """``(state, table, capacities, reallocations)`` of the last checkpoint;
        ``like_state(capacities)`` is a state of the run's shapes, ``row_shape``
        the shape of a row of its log table."""
        import orbax.checkpoint as ocp

        step = self.latest()
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"
        ]
        capacities = Capacities(
            *(
                Capacity(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()})
                for c in meta["capacities"]
            )
        )
        state = jax.tree.map(np.asarray, like_state(capacities))
        table = np.zeros((meta["rows"], *row_shape), state.positions.dtype)
        tree = self.manager.restore(
            step,
            args=ocp.args.Composite(
                tree=ocp.args.StandardRestore({"state": state, "table": table})
            ),
        )["tree"]
        return tree["state"], tree["table"], capacities, meta["reallocations"]


def keep_frames(paths, count: int) -> None:
    """Each trajectory file cut to its first ``count`` frames (replaced atomically):
    frames a killed run wrote after its last checkpoint."""
    for path in paths:
        if not os.path.exists(path):
            continue
        frames = ase.io.read(path, index=":")
        if len(frames) > count:
            temporary = f"{path}.tmp{Path(path).suffix}"
            ase.io.write(temporary, frames[:count])
            os.replace(temporary, path)
