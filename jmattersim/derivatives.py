"""Exact second and third derivatives of the energy (automatic differentiation, not
finite displacements): Hessians, phonons, elastic constants, third-order force
constants and the lattice thermal conductivity.

See the user guide's "Phonons and elastic constants" page.
"""

from ._src.derivatives.anharmonic import fc3, thermal_conductivity
from ._src.derivatives.elastic import ElasticTensor, elastic_tensor
from ._src.derivatives.hessian import hessian, hessian_columns
from ._src.derivatives.minimum import NotAtMinimumWarning
from ._src.derivatives.phonons import PhononSpectrum, phonon_spectrum, phonons
from ._src.relaxed import bulk_modulus_gpa

__all__ = [
    "ElasticTensor",
    "NotAtMinimumWarning",
    "PhononSpectrum",
    "bulk_modulus_gpa",
    "elastic_tensor",
    "fc3",
    "hessian",
    "hessian_columns",
    "phonon_spectrum",
    "phonons",
    "thermal_conductivity",
]
