"""phonons: phonon force constants, the whole phonon workflow, and fc2 + fc3, each
a fresh process (``benchmarks/phonon_workflow.py``) with the compile cache cold
and warm, against upstream's ``PhononWorkflow`` and ``bte.py``."""

from __future__ import annotations

import sys

from harness import HERE, SHARED, WORK, checkpoint, fresh_cache, measured, model_dir
from report import Bench


def measure(bench: Bench, name: str) -> None:
    """The structures of ``phonon_structures``."""
    phonon_rows(name, bench.add)


def phonon_structures() -> dict[str, tuple]:
    """name -> (ASE structure, supercell N, workflow): diamond Si (phonopy needs one
    displacement), a low-symmetry MPtrj frame with 6 symmetry-irreducible atoms (one
    ASE calculation per displacement upstream; one batched call here), and Si for fc3."""
    from ase.build import bulk
    from ase.io import read

    frames = read(SHARED / "data" / "mptrj-random-1k.xyz", ":")
    low = next(a for a in frames if a.get_chemical_formula() == "GeO5Pb3")  # Cmm2, 9 atoms
    si = bulk("Si", "diamond", 5.43, cubic=True)
    return {
        "Si 2x2x2 (64 atoms)": (si, 2, "phonons"),
        "whole job, Si 2x2x2 (64 atoms)": (si, 2, "workflow"),
        "GeO5Pb3 2x2x2 (72 atoms)": (low, 2, "phonons"),
        "fc3, Si 2x2x2 (64 atoms)": (si, 2, "fc3"),
    }


def phonon_rows(name: str, add) -> None:
    script = str(HERE / "phonon_workflow.py")
    for label, (atoms, n, kind) in phonon_structures().items():
        path = WORK / f"phonons-{kind}-{atoms.get_chemical_formula()}.extxyz"
        atoms.write(path)
        cache = fresh_cache()
        env = {"JMATTERSIM_COMPILE_CACHE": str(cache)}
        jm_cmd = [sys.executable, script, "jm", kind, str(path), str(model_dir(name)), str(n)]
        cold, warm = measured(jm_cmd, env), measured(jm_cmd, env)
        up_cmd = [sys.executable, script, "up", kind, str(path), str(checkpoint(name)), str(n)]
        up = measured(up_cmd)
        what = {"phonons": "phonon force constants", "workflow": "phonon workflow"}.get(
            kind, "fc2 + fc3"
        )
        baseline = {"phonons": "PhononWorkflow (calc_spec=False)", "workflow": "PhononWorkflow"}
        for cache_state, jm in (("cold", cold), ("warm", warm)):
            add(
                f"{what}, whole process: {label.split(', ')[-1]}",
                name,
                "s",
                jm["child_wall"],
                up["child_wall"],
                f"exact vs upstream's {baseline.get(kind, 'bte.py')} "
                f"({up['displacements']} displaced supercells); compile cache {cache_state}; "
                f"workflow alone {jm['workflow']:.1f} s vs {up['workflow']:.1f} s",
                lower_is_better=True,
                jm_impl=cache_state,
            )
