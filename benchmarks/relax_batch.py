"""One process, as a user runs it: import, load the model, relax every frame
(positions and cell, FIRE with ASE's FrechetCellFilter) to ``fmax``, at most
``steps`` optimiser steps each. jmattersim: ``jmattersim.relax``; upstream:
``mattersim.applications.batch_relax.BatchRelaxer``. Prints a JSON line.

    python benchmarks/relax_batch.py jm|up FRAMES.extxyz MODEL [--fmax 0.002] [--steps 500]
        [--driver auto|compiled|ase]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

START = time.perf_counter()
warnings.filterwarnings("ignore")


def converged_like_ase(atoms, fmax: float) -> bool:
    """ASE's criterion on the filter's generalised forces, from stored results."""
    from ase.filters import FrechetCellFilter

    return float((FrechetCellFilter(atoms).get_forces() ** 2).sum(axis=1).max() ** 0.5) < fmax


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("impl", choices=["jm", "up"])
    parser.add_argument("frames")
    parser.add_argument("model", help="jmattersim model directory, or upstream .pth (up)")
    parser.add_argument("--fmax", type=float, default=0.002)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--driver", default="auto", help="jmattersim.relax's driver")
    args = parser.parse_args()

    import ase.io
    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.units import GPa

    frames = ase.io.read(args.frames, index=":")
    if args.impl == "jm":
        import jmattersim

        model = jmattersim.load_model(args.model)
        t = time.perf_counter()
        out = jmattersim.relax(
            model, frames, fmax=args.fmax, max_steps=args.steps, driver=args.driver
        )
        relaxed = time.perf_counter() - t
        converged = sum(a.info["relax_status"] == "converged" for a in out)
        failed = sum(a.info["relax_status"] == "failed" for a in out)
        steps = [a.info["relax_steps"] for a in out]
    else:
        from mattersim.applications.batch_relax import BatchRelaxer
        from mattersim.forcefield.potential import Potential

        potential = Potential.from_checkpoint(args.model, device="cpu", load_training_state=False)
        t = time.perf_counter()
        relaxer = BatchRelaxer(
            potential,
            optimizer="FIRE",
            filter="FrechetCellFilter",
            fmax=args.fmax,
            max_n_steps=args.steps,
        )
        trajectories = relaxer.relax(frames)
        relaxed = time.perf_counter() - t
        converged, failed, steps = 0, 0, []  # BatchRelaxer has no failed status
        for k in range(len(frames)):
            last = trajectories[k][-1]
            last.calc = SinglePointCalculator(
                last,
                energy=last.info["total_energy"],
                forces=last.arrays["forces"],
                stress=last.info["stress"] * GPa,
            )
            converged += converged_like_ase(last, args.fmax)
            steps.append(len(trajectories[k]) - 1)
    print(
        json.dumps(
            {
                "relax": relaxed,
                "total": time.perf_counter() - START,
                "converged": int(converged),
                "failed": int(failed),
                "frames": len(frames),
                "mean_steps": float(np.mean(steps)),
                "structure_steps": int(np.sum(steps)),
            }
        )
    )


if __name__ == "__main__":
    main()
