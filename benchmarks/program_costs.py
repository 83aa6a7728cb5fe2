"""One job's tracing and compiling, in a fresh process with the compile cache off:
the seconds JAX reports (tracing, lowering to StableHLO, XLA's compile, summed over
the process), the number of XLA compiles, and the lines of its largest StableHLO
module (debug information off). Prints a JSON line.

    python benchmarks/program_costs.py JOB MODEL FRAMES [SOURCE]

JOB: energy (``jax.jit(energy_fn)``), forces (``evaluate``: energy, forces and
stress), hessian (``derivatives.hessian``), fc3 (one chunk of fc3's mixed third
derivatives) or train (one epoch of ``train.train`` on 16 labelled frames of
FRAMES). The structure: Si 2x2x2 (64 atoms), rattled by 0.03 Å (seed 0).

SOURCE: the root of another copy of ``jmattersim`` to measure (an older commit),
imported in place of the installed one; so every job uses entry points both have.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ["JMATTERSIM_COMPILE_CACHE"] = "off"
os.environ["JAX_INCLUDE_DEBUG_INFO_IN_DUMPS"] = "false"
DUMP = Path(tempfile.mkdtemp(prefix="jm-ir-"))
os.environ["JAX_DUMP_IR_TO"] = str(DUMP)

EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "compile_s",
}
JOBS = ("energy", "forces", "hessian", "fc3", "train")


def main() -> None:
    job, model_path, frames, *source = sys.argv[1:]
    if job not in JOBS:
        raise SystemExit(f"JOB must be one of {JOBS}, not {job!r}")
    if source:  # an editable install's finder comes before sys.path: set it aside
        sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in repr(f)]
        sys.path.insert(0, source[0])
    import jax

    totals: dict[str, float] = collections.defaultdict(float)

    def listen(event: str, duration: float, **_) -> None:
        if event in EVENTS:
            totals[EVENTS[event]] += duration
            totals["compiles"] += event.endswith("backend_compile_duration")

    jax.monitoring.register_event_duration_secs_listener(listen)
    import jmattersim

    if source and not jmattersim.__file__.startswith(source[0]):
        raise SystemExit(f"imported {jmattersim.__file__}, not the copy in {source[0]}")
    model = jmattersim.load_model(model_path)
    RUN[job](jmattersim, model, frames)
    lines = [_lines(p) for p in DUMP.rglob("*.mlir")]
    print(json.dumps({**totals, "hlo_lines": max(lines, default=0), "modules": len(lines)}))


def _lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def _silicon():
    import numpy as np
    from ase.build import bulk

    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
    atoms.positions += np.random.default_rng(0).normal(0, 0.03, atoms.positions.shape)
    return atoms


def _energy(jm, model, _frames) -> None:
    import jax

    atoms = _silicon()
    capacity = jm.capacity_for([atoms], model.config)
    energy = jax.jit(jm.energy_fn(model.config, capacity))
    types = jax.nn.one_hot(atoms.numbers, model.config.num_species)
    energy(model.params, types, atoms.positions, atoms.cell.array).block_until_ready()


def _forces(jm, model, _frames) -> None:
    jm.evaluate(model, [_silicon()])


def _hessian(jm, model, _frames) -> None:
    jm.derivatives.hessian(model, _silicon())


def _fc3(jm, model, _frames) -> None:
    from jmattersim._src.derivatives.anharmonic import mixed_third_derivatives

    mixed_third_derivatives(model, _silicon(), (0, [0.03, 0, 0]), [(1, [0, 0.03, 0])])


def _train(jm, model, frames) -> None:
    jm.train.train(
        model,
        frames,
        None,
        valid_fraction=0.0,
        out=None,
        epochs=1,
        max_epochs=1,
        batch_size=16,
        include_forces=True,
        include_stresses=True,
        progress=False,
    )


RUN = {"energy": _energy, "forces": _forces, "hessian": _hessian, "fc3": _fc3, "train": _train}

if __name__ == "__main__":
    main()
