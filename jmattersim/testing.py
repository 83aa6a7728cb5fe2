"""Random-weight models for tests, benchmarks and demos, and upstream's side of them.

- :func:`random_checkpoint`: upstream MatterSim's own model with seeded random
  weights, saved by upstream's ``Potential.save`` (a *genuine-format* checkpoint:
  what the published files look like, without their weights).
- :data:`ARCHITECTURES` and :data:`SEEDS`: the architectures the tests and
  benchmarks use, and their seeds; :func:`genuine_checkpoint` makes one of them.
- :func:`upstream_potential` and :func:`upstream_graph`: upstream's calculator
  model and graph, the reference everything is compared with.
- :func:`demo_model`: the published checkpoint where it can be had, else a random one,
  labelled as such.

All but :data:`ARCHITECTURES` and :data:`SEEDS` need torch and the ``mattersim``
package (``pip install "jmattersim[test]"``); they are imported on first call.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ._src.examples import Demo, demo_model, random_checkpoint
from ._src.published import ARCHITECTURES as _PUBLISHED

# upstream model_args by short name: the published 1M (num_blocks=3, units=128) and
# 5M (num_blocks=4, units=256), and "small" (2 blocks, 16 units, max_l = max_n = 2), a
# model about 10x cheaper per step for tests of the MD and relaxation machinery.
ARCHITECTURES: dict[str, dict[str, int]] = {
    **{name.rsplit("-", 1)[-1]: args for name, args in _PUBLISHED.items()},
    "small": {"num_blocks": 2, "units": 16, "max_l": 2, "max_n": 2},
}
SEEDS: dict[str, int] = {"1M": 0, "5M": 1, "small": 3}


def genuine_checkpoint(path: str | os.PathLike, name: str) -> Path:
    """The genuine-format random checkpoint of architecture ``name`` (a key of
    :data:`ARCHITECTURES`) with its seed from :data:`SEEDS`, saved at ``path``."""
    return random_checkpoint(path, SEEDS[name], **ARCHITECTURES[name])


def upstream_potential(path: str | os.PathLike):
    """Upstream's ``Potential`` loaded from a .pth checkpoint, on the CPU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mattersim.forcefield.potential import Potential

        return Potential.from_checkpoint(str(path), device="cpu", load_training_state=False)


def upstream_graph(atoms, model_args: dict):
    """Upstream's graph of ``atoms`` (torch_geometric ``Data``) as its calculator builds
    it, and the atoms as upstream normalises them (wrapped into the cell; a molecule
    put into its cubic box)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mattersim.datasets.utils.convertor import GraphConvertor

        normalised = atoms.copy()
        convertor = GraphConvertor("m3gnet", model_args["cutoff"], True,
                                   model_args["threebody_cutoff"])
        return convertor.convert(normalised), normalised


__all__ = [
    "ARCHITECTURES",
    "SEEDS",
    "Demo",
    "demo_model",
    "genuine_checkpoint",
    "random_checkpoint",
    "upstream_graph",
    "upstream_potential",
]
