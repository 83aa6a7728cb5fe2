"""Input checks, on the host and inside ``jit``: the checks every public entry point
runs, and ``checkify`` variants of the energy for traced inputs. Their errors,
``InvalidStructureError`` and ``CapacityOverflowError``, are at the top level.

See the user guide's "Bad input" page.
"""

from ._src.array_checks import check_arrays
from ._src.checked import checked, checked_energy_fn
from ._src.checks import check_atoms

__all__ = ["check_arrays", "check_atoms", "checked", "checked_energy_fn"]
