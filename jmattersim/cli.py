"""``jmattersim predict FILE``: energy, forces and stress of every frame."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_MODEL = "mattersim-v1.0.0-1M"


def predict_command(args: argparse.Namespace) -> int:
    import ase.io
    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.stress import full_3x3_to_voigt_6_stress
    from ase.units import GPa

    from .evaluate import evaluate
    from .io import load_model

    try:
        model = load_model(args.model)
    except (ConnectionError, FileNotFoundError, ValueError) as e:
        print(f"jmattersim predict: cannot load model '{args.model}': {e}", file=sys.stderr)
        return 1
    frames = ase.io.read(args.file, index=":")
    out = Path(args.out) if args.out else Path(args.file).with_suffix(".jmattersim.extxyz")
    start = time.perf_counter()
    results = evaluate(model, frames)
    elapsed = time.perf_counter() - start
    for atoms, res in zip(frames, results, strict=True):
        atoms.calc = SinglePointCalculator(
            atoms, energy=res.energy, free_energy=res.energy, forces=res.forces,
            stress=full_3x3_to_voigt_6_stress(res.stress) * GPa,  # eV/A^3, as ASE
        )
    ase.io.write(out, frames, format="extxyz")
    energies = np.array([r.energy / len(a) for r, a in zip(results, frames, strict=True)])
    print(f"{len(frames)} frames in {elapsed:.1f} s -> {out} "
          f"(energy per atom {energies.min():.4f} .. {energies.max():.4f} eV)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jmattersim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="energy, forces and stress of every frame of FILE")
    p.add_argument("file", help="any structure file ASE reads (extxyz, cif, POSCAR, traj...)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="converted model directory, a .pth checkpoint, or a published name "
                   f"(default {DEFAULT_MODEL})")
    p.add_argument("--out", help="output extxyz (default FILE.jmattersim.extxyz)")
    args = parser.parse_args(argv)
    return predict_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
