"""Data-set evaluation that streams: frames are read lazily, evaluated in
padded (and, given a mesh, sharded) batches of one shape, and appended to the
output chunk by chunk, each chunk made durable (fsync) before the progress
file records it. An interrupted run resumes from the last recorded chunk:
the output is cut back to that point and the same chunks follow, so the
result equals an uninterrupted run's.

Progress lives beside the output, in ``OUT.progress.json``; it is removed when
the run completes.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import ase.io
import jax
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress
from ase.units import GPa

from . import sharding
from .calculator import default_dtype, predict_jit
from .config import M3GNetConfig
from .energy import EV_PER_A3_TO_GPA, predict
from .evaluate import Capacity, Result, pack
from .graph import batch_graphs, structure_graph
from .io import Model
from .validate import check_atoms, structure_label


@functools.lru_cache(maxsize=8)
def _sharded_predict(config: M3GNetConfig, mesh: jax.sharding.Mesh):
    return sharding.over_devices(functools.partial(predict, config), mesh)


def evaluate_stream(model: Model, structures: Iterable[Atoms], capacity: Capacity | None = None,
                    mesh: jax.sharding.Mesh | None = None, dtype=None) -> list[Result]:
    """Energy, forces and stress (GPa) of ``structures`` in padded batches of
    one capacity; with ``mesh``, ``mesh.size`` batches at a time, one per device."""
    dtype = np.dtype(dtype or default_dtype())
    config = model.config
    graphs = [structure_graph(a, config) for a in structures]
    capacity = capacity or Capacity()
    for g in graphs:
        capacity = capacity.covering(g)
    params = model.astype(dtype).params
    chunks = list(pack(graphs, capacity))
    per_step = mesh.size if mesh is not None else 1
    results: list[Result] = []
    for step in range(0, len(chunks), per_step):
        group = chunks[step:step + per_step]
        batches = [batch_graphs([graphs[k] for k in c], config, capacity.nodes, capacity.edges,
                                capacity.triplets, capacity.graphs, dtype=dtype)
                   for c in group + [[]] * (per_step - len(group))]
        if mesh is None:
            outs = [jax.device_get(predict_jit(config, params, batches[0]))]
        else:
            stacked = sharding.place(sharding.stack(batches), mesh)
            outs = sharding.unstack(_sharded_predict(config, mesh)(params, stacked), per_step)
        for chunk, out in zip(group, outs, strict=False):
            start = 0
            for i, k in enumerate(chunk):
                n = graphs[k].n_node
                results.append(Result(float(out.energy[i]), np.asarray(out.forces[start:start + n]),
                                      np.asarray(out.stress[i]) * EV_PER_A3_TO_GPA))
                start += n
    return results


def _labelled(atoms: Atoms, res: Result) -> Atoms:
    atoms.calc = SinglePointCalculator(
        atoms, energy=res.energy, free_energy=res.energy, forces=res.forces,
        stress=full_3x3_to_voigt_6_stress(res.stress) * GPa,  # eV/A^3, as ASE
    )
    return atoms


def _source_id(src: Path, chunk: int, model: Model) -> dict:
    stat = src.stat()
    return {"source": str(src.absolute()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "chunk": chunk, "model": model.source.get("sha256") or model.config.to_dict()}


def progress_file(out: str | os.PathLike) -> Path:
    """Where the progress of a run writing ``out`` is kept."""
    out = Path(out)
    return out.with_name(out.name + ".progress.json")


def resume_point(model: Model, src: str | os.PathLike, out: str | os.PathLike,
                 chunk: int) -> tuple[int, int]:
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


def predict_file(model: Model, src: str | os.PathLike, out: str | os.PathLike, *,
                 chunk: int = 64, mesh: jax.sharding.Mesh | None = None, resume: bool = True,
                 progress: bool = True) -> Iterator[int]:
    """Evaluates every frame of ``src`` into extxyz ``out`` (energy, free_energy,
    forces, stress in eV/Å^3), ``chunk`` frames at a time; yields the number
    of frames written after each chunk. Resumes an interrupted run of the same
    source, chunk size and model when ``resume``. Each frame is checked first
    (:func:`jmattersim.validate.check_atoms`): a bad one stops the run with an
    error naming it, after the chunks before it were kept."""
    src, out = Path(src), Path(out)
    state_file = progress_file(out)
    ident = _source_id(src, chunk, model)
    done, offset = resume_point(model, src, out, chunk) if resume else (0, 0)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(initial=done, unit="frame", desc=src.name)
    with open(out, "r+b" if offset else "wb") as f:
        f.truncate(offset)
        f.seek(offset)
        frames = itertools.islice(ase.io.iread(src, index=":"), done, None)
        while batch := list(itertools.islice(frames, chunk)):
            for k, atoms in enumerate(batch):
                check_atoms(atoms, model.config, structure_label(done + k, atoms.numbers, "frame"))
            results = evaluate_stream(model, batch, mesh=mesh)
            text = io.StringIO()
            ase.io.write(text, [_labelled(a, r) for a, r in zip(batch, results, strict=True)],
                         format="extxyz")
            f.write(text.getvalue().encode())
            f.flush()
            os.fsync(f.fileno())
            done, offset = done + len(batch), f.tell()
            tmp = state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({**ident, "frames": done, "bytes": offset}))
            os.replace(tmp, state_file)
            if bar is not None:
                bar.update(len(batch))
            yield done
    if bar is not None:
        bar.close()
    state_file.unlink(missing_ok=True)
