"""MatterSim inside LAMMPS: ``pair_style jmattersim``, exact across MPI ranks.

LAMMPS splits a large system over processes and hosts (domain decomposition);
each rank evaluates the energy of the atoms it owns with this model, from its
owned and ghost atoms. See the user guide's "LAMMPS and MPI" page.

    lmp = jmattersim.lammps.session()           # the plugin loaded, the model attached
    lmp.file("in.lmp")                           # pair_style jmattersim MODEL
                                                 # pair_coeff * * Si O
Or, from a shell (also under ``mpirun -np N``): ``jmattersim lammps in.lmp``.
Needs ``pip install "jmattersim[lammps]"`` and a C++ compiler.
"""

from ._src.lammps_pair import LammpsSetupError, build_plugin
from ._src.lammps_session import run_input, session

__all__ = ["LammpsSetupError", "build_plugin", "run_input", "session"]
