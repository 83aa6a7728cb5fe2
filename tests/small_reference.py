"""The stored reference of the fast tier: a small genuine-format model and what
upstream MatterSim computes with it.

``tests/data/small-model/`` is upstream's M3Gnet in the "small" architecture
(:data:`jmattersim.testing.ARCHITECTURES`, seed :data:`jmattersim.testing.SEEDS`),
saved by upstream's ``Potential.save`` and converted by ``jmattersim-convert``;
``tests/data/small-upstream.json`` holds upstream's float64 energy, forces, stress
(GPa) and graph sizes for :func:`structures`. The fast tier compares jmattersim with
these numbers without torch; the slow tier rebuilds both with upstream and checks
that the stored files are what upstream gives today.

    python tests/small_reference.py      # rewrite tests/data (needs torch and mattersim)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from ase import Atoms

from conftest import mptrj_frames, special_structures

DATA = Path(__file__).resolve().parent / "data"
MODEL = DATA / "small-model"
VALUES = DATA / "small-upstream.json"


def structures() -> dict[str, Atoms]:
    """The eight hand-made structures (molecules, a slab, a triclinic oxide, cells
    shorter than the cutoff) and four MPtrj frames across the size range."""
    out = special_structures()
    for k, atoms in enumerate(mptrj_frames(40)[::10]):
        out[f"mptrj_{k}_{atoms.get_chemical_formula()}"] = atoms
    return out


def build(out: Path) -> dict:
    """Writes ``out/small-model`` and returns upstream's float64 values (and the
    checkpoint path under ``out``)."""
    import jax

    from convert_weights.cli import main as convert
    from jmattersim.testing import genuine_checkpoint, upstream_potential

    import upstream

    pth = genuine_checkpoint(out / "small.pth", "small")
    assert convert([str(pth), str(out / "small-model"), "--overwrite"]) == 0
    potential = upstream_potential(pth)
    values = {}
    with jax.enable_x64(True):
        for key, atoms in structures().items():
            ref = upstream.predict(potential, atoms, float64=True)
            values[key] = {
                "energy": ref["energy"],
                "forces": ref["forces"].tolist(),
                "stress_gpa": ref["stress_gpa"].tolist(),
                "n_edge": ref["n_edge"],
                "n_triplet": ref["n_triplet"],
            }
    return values


def main() -> int:
    import shutil

    with tempfile.TemporaryDirectory() as tmp:
        values = build(Path(tmp))
        shutil.rmtree(MODEL, ignore_errors=True)
        shutil.copytree(Path(tmp) / "small-model", MODEL)
    VALUES.write_text(json.dumps(values, indent=1) + "\n")
    print(f"wrote {MODEL} and {VALUES} ({len(values)} structures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
