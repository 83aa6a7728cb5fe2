"""Data-set evaluation that streams: frames are read lazily, evaluated through
:mod:`jmattersim._src.engine` (packed into its budgets; sharded given a mesh), and
appended to the output chunk by chunk, each chunk made durable (fsync) before the progress
file records it. An interrupted run resumes from the last recorded chunk:
the output is cut back to that point and the same chunks follow, so the
result equals an uninterrupted run's.

Progress lives beside the output, in ``OUT.progress.json``; it is removed when
the run completes.
"""

from __future__ import annotations

import io
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path

import ase.io
import jax
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress

from . import engine
from .checkpoint import Model
from .checks import structure_label
from .committee import Committee, params_digest
from .graph import checked_graph
from .predictions import Predictions
from .progress import progress_bar

CHUNK = 256  # frames per chunk: enough groups that a chunk packs into the top budget


def _labelled(atoms: Atoms, res: Predictions) -> Atoms:
    atoms.calc = SinglePointCalculator(
        atoms,
        energy=res.energy,
        free_energy=res.energy,
        forces=res.forces,
        stress=full_3x3_to_voigt_6_stress(res.stress),  # eV/A^3, as ASE
    )
    if res.energy_std is not None:  # a committee's spread across members
        atoms.info["energy_std"] = float(res.energy_std)
        atoms.info["stress_std"] = full_3x3_to_voigt_6_stress(np.asarray(res.stress_std, float))
        atoms.arrays["forces_std"] = np.asarray(res.forces_std, dtype=float)
    return atoms


def _source_id(src: Path, chunk: int, model: Model | Committee) -> dict:
    stat = src.stat()
    return {
        "source": str(src.absolute()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "chunk": chunk,
        "model": _model_id(model),
    }


def _model_id(model: Model | Committee) -> str | dict:
    if isinstance(model, Committee):
        digest = model.source.get("params_sha256") or params_digest(model.params)
        return {"committee": model.size, "params_sha256": digest}
    return model.source.get("sha256") or model.config.to_dict()


def progress_file(out: str | os.PathLike) -> Path:
    """Where the progress of a run writing ``out`` is kept."""
    out = Path(out)
    return out.with_name(out.name + ".progress.json")


def resume_point(
    model: Model | Committee, src: str | os.PathLike, out: str | os.PathLike, chunk: int
) -> tuple[int, int]:
    """(frames done, bytes of ``out`` that hold them) of an interrupted run of
    the same source, chunk size and model; (0, 0) if there is none."""
    state_file, out = progress_file(out), Path(out)
    if not (state_file.is_file() and out.is_file()):
        return 0, 0
    state = json.loads(state_file.read_text())
    ident = _source_id(Path(src), chunk, model)
    if {k: state.get(k) for k in ident} != ident or out.stat().st_size < state["bytes"]:
        return 0, 0
    return int(state["frames"]), int(state["bytes"])


def predict_file(
    model: Model | Committee,
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    chunk: int = CHUNK,
    mesh: jax.sharding.Mesh | None = None,
    resume: bool = True,
    progress: bool = True,
) -> Iterator[int]:
    """Evaluates every frame of a structure file into an extxyz file, resumably.

    A generator: iterate it to run. Frames stream through the evaluation engine
    ``chunk`` at a time; each chunk is appended and synced to disk before
    ``OUT.progress.json`` records it, so an interrupted run of the same source,
    chunk size and model resumes after the last recorded chunk and ends with the
    file an uninterrupted run writes. Each frame is checked first: a bad one
    stops the run with an error naming it, the chunks before it kept.

    Args:
        model: the [`Model`][jmattersim.Model] or
            [`Committee`][jmattersim.train.Committee].
        src: any structure file ASE reads (extxyz, cif, POSCAR, traj...).
        out: the extxyz file to write: per frame ``energy`` and ``free_energy``
            eV, ``forces`` (N, 3) eV/Å, ``stress`` eV/Å³ (ASE's unit and sign);
            of a committee, the member means, and their population standard
            deviations ``energy_std`` eV and ``stress_std`` (6,) Voigt eV/Å³ in
            the frame's info, ``forces_std`` (N, 3) eV/Å per atom.
        chunk: frames evaluated and written at a time.
        mesh: spread the batches over the devices of this mesh
            ([`graph_mesh`][jmattersim.batch.graph_mesh]).
        resume: continue an interrupted run (False: start over).
        progress: show a progress bar (tqdm).

    Yields:
        The number of frames written so far, after each chunk.

    Raises:
        InvalidStructureError: a frame is unfit for the model.
    """
    src, out = Path(src), Path(out)
    state_file = progress_file(out)
    ident = _source_id(src, chunk, model)
    done, offset = resume_point(model, src, out, chunk) if resume else (0, 0)
    bar = progress_bar(progress, initial=done, unit="frame", desc=src.name)
    with open(out, "r+b" if offset else "wb") as f:
        f.truncate(offset)
        f.seek(offset)
        frames = itertools.islice(ase.io.iread(src, index=":"), done, None)
        while batch := list(itertools.islice(frames, chunk)):
            graphs = [
                checked_graph(a, model.config, structure_label(done + k, a.numbers, "frame"))
                for k, a in enumerate(batch)
            ]
            results = engine.run(model, graphs, mesh=mesh)
            text = io.StringIO()
            ase.io.write(
                text,
                [_labelled(a, r) for a, r in zip(batch, results, strict=True)],
                format="extxyz",
            )
            f.write(text.getvalue().encode())
            f.flush()
            os.fsync(f.fileno())
            done, offset = done + len(batch), f.tell()
            tmp = state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({**ident, "frames": done, "bytes": offset}))
            os.replace(tmp, state_file)
            bar.update(len(batch))
            yield done
    bar.close()
    state_file.unlink(missing_ok=True)
