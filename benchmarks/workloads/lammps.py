"""lammps: Si NVT at 600 K in LAMMPS with pair_style jmattersim on 1 and 2 MPI ranks
(``mpirun``, one XLA thread per rank), against the same system through
``jmattersim.md`` (Nose-Hoover NVT) in one process; steps/s after one warm-up step,
and each rank's ghost atoms per owned atom. Upstream has no LAMMPS route on this
machine (its ML-IAP interface needs a Kokkos build), so the baseline column is
``jmattersim.md``."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import jm_model, model_dir
from report import Bench

HERE = Path(__file__).resolve().parents[1]


def measure(bench: Bench, name: str) -> None:
    """2000 atoms (5 x 5 x 10 cells) and 8000 (10 x 10 x 10), 3 timed steps each."""
    sizes = [(5, 5, 10)] if bench.quick else [(5, 5, 10), (10, 10, 10)]
    for cells in sizes:
        lammps_rows(name, cells, 3, bench.add)


def _lammps(name: str, cells, steps: int, ranks: int) -> dict:
    mpirun = Path(sys.prefix) / "bin" / "mpirun"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = [str(mpirun), "-np", str(ranks), sys.executable, str(HERE / "lammps_nvt.py")]
        command += [str(model_dir(name)), *map(str, cells), str(steps), str(out)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=tmp)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        per_rank = [json.loads(Path(f"{out}.rank-{r}").read_text()) for r in range(ranks)]
    ghosts = max(r["ghosts"] / max(r["owned"], 1) for r in per_rank)
    return {"rate": steps / per_rank[0]["seconds"], "ghosts": ghosts, "atoms": per_rank[0]["atoms"]}


def _md_rate(name: str, cells, steps: int) -> float:
    from ase.build import bulk

    import jmattersim

    atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat(cells)
    model = jm_model(name)
    jmattersim.md(model, atoms, 1, ensemble="nvt_nose_hoover", temperature=600, progress=False)
    start = time.perf_counter()
    jmattersim.md(model, atoms, steps, ensemble="nvt_nose_hoover", temperature=600, progress=False)
    return steps / (time.perf_counter() - start)


def lammps_rows(name: str, cells, steps: int, add) -> None:
    md = _md_rate(name, cells, steps)
    for ranks in (1, 2):
        run = _lammps(name, cells, steps, ranks)
        add(
            f"LAMMPS NVT steps/s, {ranks} rank{'s' if ranks > 1 else ''}",
            f"{name}, Si {run['atoms']}",
            "steps/s",
            run["rate"],
            md,
            f"pair_style jmattersim under mpirun -np {ranks}, {steps} steps after one; ghost "
            f"atoms per owned atom {run['ghosts']:.1f} (the largest rank's; shell num_blocks x "
            "cutoff + 1 Å skin); baseline column: jmattersim.md, Nose-Hoover NVT, one process "
            "(the same steps after one)",
        )
