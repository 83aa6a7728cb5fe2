"""Exact second and third derivatives of the energy (automatic differentiation, not
finite displacements): Hessians, phonons, elastic constants, third-order force
constants and the lattice thermal conductivity.

See the user guide's "Phonons and elastic constants" page.
"""

from ._src.anharmonic import fc3, thermal_conductivity
from ._src.elastic import ElasticTensor, elastic_tensor
from ._src.hessian import hessian, hessian_columns
from ._src.minimum import NotAtMinimumWarning
from ._src.phonons import PhononSpectrum, phonon_spectrum, phonons

__all__ = [
    "ElasticTensor",
    "NotAtMinimumWarning",
    "PhononSpectrum",
    "elastic_tensor",
    "fc3",
    "hessian",
    "hessian_columns",
    "phonon_spectrum",
    "phonons",
    "thermal_conductivity",
]
