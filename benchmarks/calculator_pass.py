"""One process, as a user runs it: import, load the model, then energy, forces and
stress of every frame through the ASE calculator, twice (first pass: compilation
included; second pass: steady state). Prints a JSON line of timings (s).

    python benchmarks/calculator_pass.py jm|up FRAMES.extxyz MODEL [--count 40]
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
    parser.add_argument("impl", choices=["jm", "up"])
    parser.add_argument("frames")
    parser.add_argument("model", help="jmattersim model directory, or upstream .pth (up)")
    parser.add_argument("--count", type=int, default=None)
    args = parser.parse_args()

    import ase.io

    if args.impl == "jm":
        import jmattersim

        imported = time.perf_counter()
        calc = jmattersim.MatterSimCalculator(args.model)
    else:
        from mattersim.forcefield.potential import MatterSimCalculator, Potential

        imported = time.perf_counter()
        calc = MatterSimCalculator(
            Potential.from_checkpoint(args.model, device="cpu", load_training_state=False),
            device="cpu",
        )
    loaded = time.perf_counter()
    frames = ase.io.read(args.frames, index=":" if args.count is None else f":{args.count}")
    passes = []
    for _ in range(2):
        t = time.perf_counter()
        for atoms in frames:
            atoms = atoms.copy()
            atoms.calc = calc
            atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        passes.append(time.perf_counter() - t)
    print(
        json.dumps(
            {
                "import": imported - START,
                "load": loaded - imported,
                "first_pass": passes[0],
                "second_pass": passes[1],
                "frames": len(frames),
            }
        )
    )


if __name__ == "__main__":
    main()
