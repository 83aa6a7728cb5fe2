"""Upstream MatterSim's batched prediction of a whole file, as a user writes it:
read every frame, ``build_dataloader`` + ``Potential.predict_properties``, write
extxyz with energy, forces and stress (eV/Å^3). The baseline of ``jmattersim predict``.

    python benchmarks/upstream_predict.py FRAMES.extxyz CHECKPOINT.pth OUT.extxyz [--batch-size 64]
"""

from __future__ import annotations

import argparse
import warnings

warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("frames")
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.units import GPa
    from mattersim.datasets.utils.build import build_dataloader
    from mattersim.forcefield.potential import Potential

    atoms = ase.io.read(args.frames, index=":")
    potential = Potential.from_checkpoint(args.checkpoint, device="cpu", load_training_state=False)
    loader = build_dataloader(
        atoms, model_type="m3gnet", batch_size=args.batch_size, only_inference=True
    )
    energies, forces, stresses = potential.predict_properties(
        loader, include_forces=True, include_stresses=True
    )
    for a, e, f, s in zip(atoms, energies, forces, stresses, strict=True):
        a.calc = SinglePointCalculator(
            a, energy=e, free_energy=e, forces=f, stress=s * GPa
        )  # GPa -> eV/A^3, ASE's unit
    ase.io.write(args.out, atoms, format="extxyz")


if __name__ == "__main__":
    main()
