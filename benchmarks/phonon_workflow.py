"""One phonon or fc3 workflow in this process, as a user runs it (imports included).

    python benchmarks/phonon_workflow.py jm|up phonons|workflow|fc3 STRUCTURE MODEL N

phonons: force constants only. jm: ``jmattersim.derivatives.phonons`` (force constants from
exact Hessian rows); up: upstream MatterSim's ``PhononWorkflow`` with
``calc_spec=False`` (its displacements, one ASE calculation each, phonopy's force
constants, symmetrised and saved).
workflow: the whole job with default arguments. jm: ``jmattersim phonons FILE
--model M --supercell N --out DIR`` (force constants, mesh, band structure, DOS,
a plot, phonopy's files); up: ``PhononWorkflow(...).run()`` (the same, plots at
300 dpi).
fc3: jm: ``jmattersim.derivatives.fc3``; up: ``BTEWorkflow.compute_force_constants`` (pairs of
displacements for phono3py). MODEL is a jmattersim model directory (jm) or a .pth
checkpoint (up); N the supercell (N x N x N). Prints one JSON line: the seconds
of the workflow alone and the number of displacements.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import warnings

import numpy as np


def main() -> None:
    side, kind, structure, model_path, n = sys.argv[1:6]
    matrix = np.diag([int(n)] * 3)
    warnings.simplefilter("ignore")
    from ase.io import read

    atoms = read(structure)
    work = tempfile.mkdtemp(prefix=f"{side}-{kind}-")
    if side == "jm" and kind == "workflow":
        from jmattersim._src.cli import main as cli

        start = time.perf_counter()
        args = ["phonons", structure, "--model", model_path, "--supercell", n]
        assert cli([*args, "--out", os.path.join(work, "out")]) == 0
        count = json.load(open(os.path.join(work, "out", "summary.json")))["displacements"]
    elif side == "jm":
        import jmattersim

        model = jmattersim.load_model(model_path)
        start = time.perf_counter()
        if kind == "phonons":
            phonon = jmattersim.derivatives.phonons(
                model, atoms, matrix, mesh=False, band_path=None
            )
            phonon.save(
                os.path.join(work, "phonopy_params.yaml"), settings={"force_constants": True}
            )
            count = len(phonon.dataset["first_atoms"])
        else:
            ph3 = jmattersim.derivatives.fc3(model, atoms, matrix)
            count = len(ph3.supercells_with_displacements)
    else:
        from mattersim.forcefield.potential import MatterSimCalculator, Potential

        potential = Potential.from_checkpoint(model_path, device="cpu", load_training_state=False)
        atoms.calc = MatterSimCalculator(potential, device="cpu")
        start = time.perf_counter()
        if kind in ("phonons", "workflow"):
            from mattersim.applications.phonon import PhononWorkflow

            workflow = PhononWorkflow(
                atoms, work_dir=work, supercell_matrix=matrix, calc_spec=kind == "workflow"
            )
            _, phonon = workflow.run()
            count = len(phonon.dataset["first_atoms"])
        else:
            from mattersim.applications.bte import BTEWorkflow

            os.chdir(work)
            workflow = BTEWorkflow(atoms, work_dir=work, supercell_matrix=matrix, save_fcs=False)
            ph3 = workflow.compute_force_constants(atoms, matrix, matrix)
            count = len(ph3.supercells_with_displacements)
    print(json.dumps({"workflow": time.perf_counter() - start, "displacements": count}))


if __name__ == "__main__":
    main()
