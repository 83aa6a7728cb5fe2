"""One process, as a user runs it: import, load the model, and run NVT Langevin MD
of every frame (``--steps`` steps of 1 fs at ``--temperature`` K, friction 0.01/fs,
Maxwell-Boltzmann momenta from a seed). Prints a JSON line.

- ``many``: ``jmattersim.md(model, frames, ...)``, all frames in one call;
- ``one``: ``jmattersim.md(model, atoms, ...)`` for each frame, one after another;
- ``up``: upstream's ``MatterSimCalculator`` under ASE's ``Langevin``, one after another.

    python benchmarks/md_many.py many|one|up FRAMES.extxyz MODEL [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

START = time.perf_counter()
warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("impl", choices=["many", "one", "up"])
    parser.add_argument("frames")
    parser.add_argument("model", help="jmattersim model directory, or upstream .pth (up)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=600.0)
    args = parser.parse_args()

    import ase.io
    import numpy as np
    from ase import units

    frames = ase.io.read(args.frames, index=":")
    for i, atoms in enumerate(frames):  # the same momenta for every implementation
        atoms.calc = None
        rng = np.random.default_rng(i)
        mass = atoms.get_masses()[:, None]
        p = np.sqrt(mass * units.kB * args.temperature) * rng.standard_normal((len(atoms), 3))
        atoms.set_momenta(p - mass * p.sum(0) / mass.sum())
    options = dict(ensemble="nvt_langevin", temperature=args.temperature, progress=False)
    failed = 0
    if args.impl == "many":
        import jmattersim

        model = jmattersim.load_model(args.model)
        t = time.perf_counter()
        _, logs = jmattersim.md(model, frames, args.steps, **options)
        failed = sum(log["status"] == "failed" for log in logs)
    elif args.impl == "one":
        import jmattersim

        model = jmattersim.load_model(args.model)
        t = time.perf_counter()
        for atoms in frames:
            jmattersim.md(model, atoms, args.steps, **options)
    else:
        from ase.md.langevin import Langevin
        from mattersim.forcefield.potential import MatterSimCalculator, Potential

        potential = Potential.from_checkpoint(args.model, device="cpu", load_training_state=False)
        t = time.perf_counter()
        for atoms in frames:
            atoms.calc = MatterSimCalculator(potential, device="cpu")
            dyn = Langevin(
                atoms, 1.0 * units.fs, temperature_K=args.temperature, friction=0.01 / units.fs
            )
            dyn.run(args.steps)
    md = time.perf_counter() - t
    print(json.dumps({"md": md, "failed": failed, "total": time.perf_counter() - START}))


if __name__ == "__main__":
    main()
