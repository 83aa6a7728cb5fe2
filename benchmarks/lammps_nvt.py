"""Child of the ``lammps`` workload, run under ``mpirun -np N``: Si NVT (600 K,
1 fs, Nose-Hoover) in LAMMPS with pair_style jmattersim, ``NX NY NZ`` diamond cells.
One step first (compilation), then ``STEPS`` timed steps. Every rank writes
``OUT.rank-R`` (JSON): its owned and ghost atoms, and rank 0 the timed seconds.

    mpirun -np 2 python benchmarks/lammps_nvt.py MODEL_DIR NX NY NZ STEPS OUT
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from jmattersim._src.lammps_session import one_thread_per_rank

one_thread_per_rank()  # before JAX starts

import jmattersim  # noqa: E402
from jmattersim.lammps import session  # noqa: E402


def main(model_dir: str, nx: str, ny: str, nz: str, steps: str, out: str) -> None:
    lmp = session({"bench": jmattersim.load_model(model_dir)})
    for line in [
        "units metal",
        "atom_style atomic",
        "lattice diamond 5.43",
        f"region box block 0 {nx} 0 {ny} 0 {nz}",
        "create_box 1 box",
        "create_atoms 1 box",
        "mass 1 28.0855",
        "pair_style jmattersim bench",
        "pair_coeff * * Si",
        "neighbor 1.0 bin",
        "velocity all create 600 4928459 loop geom",
        "fix thermostat all nvt temp 600 600 0.1",
        "timestep 0.001",
        "thermo 1000",
        "run 1",
    ]:
        lmp.command(line)
    start = time.perf_counter()
    lmp.command(f"run {steps}")
    seconds = time.perf_counter() - start
    rank = lmp.extract_setting("world_rank")
    mine = {
        "owned": lmp.extract_global("nlocal"),
        "ghosts": lmp.extract_global("nghost"),
        "seconds": seconds,
        "atoms": lmp.get_natoms(),
    }
    lmp.close()
    Path(f"{out}.rank-{rank}").write_text(json.dumps(mine))


if __name__ == "__main__":
    main(*sys.argv[1:7])
