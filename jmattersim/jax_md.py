"""MatterSim on jax-md: neighbour lists with integer image shifts, exact for every cell.

Conventions are jax-md's: positions ``R`` (N, 3) are fractional coordinates and
``box`` (3, 3) maps them to Cartesian Å as ``box @ r`` (``box = atoms.cell.T``).
``-grad`` of the energy with respect to ``R`` is the force in eV/Å (jax-md's
``space.transform``). See the user guide's "jax-md and MD" page.

Importing this module imports jax-md (a few seconds); ``import jmattersim`` does not.
"""

from ._src.jax_md import atoms_to_jax_md, mattersim_neighbor_list, one_hot
from ._src.jax_md_lists import MatterSimNeighborList, NeighborFns
from ._src.md_one import ENSEMBLES

__all__ = [
    "ENSEMBLES",
    "MatterSimNeighborList",
    "NeighborFns",
    "atoms_to_jax_md",
    "mattersim_neighbor_list",
    "one_hot",
]
