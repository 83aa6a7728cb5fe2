"""Radial and angular bases of MatterSim's M3GNet, as pure functions.

Their numeric constants are the buffers upstream stores in its checkpoints
(``rbf.*``, ``sbf.*``): :func:`smooth_bessel_constants` and
:func:`spherical_basis_constants` recompute them in float32 exactly as upstream
does, and the converter checks the stored ones against these.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ..arrays import Array

# Upstream's literals (SmoothBesselBasis); not math.pi, to reproduce its buffers.
_PI = 3.1415926535897
_SQRT2 = 1.41421356237


def smooth_bessel_constants(cutoff: float, max_n: int) -> dict[str, np.ndarray]:
    """Buffers of upstream ``SmoothBesselBasis(r_max=cutoff, max_n)``, float32."""
    f32 = np.float32
    n = np.arange(max_n, dtype=f32)[None, :]
    fnr = (
        (-1.0) ** n
        * f32(_SQRT2)
        * f32(_PI)
        / f32(cutoff**1.5)
        * (n + 1)
        * (n + 2)
        / np.sqrt(2 * n**2 + 6 * n + 5)
    ).astype(f32)
    en = (n**2 * (n + 2) ** 2 / (4 * (n + 1) ** 4 + 1)).astype(f32)
    dn = [f32(1.0)]
    for i in range(1, max_n):
        dn.append(f32(1 - en[0, i] / dn[-1]))
    return {
        "dn": np.asarray(dn, dtype=f32),
        "en": en,
        "fnr_weights": fnr,
        "n_1_pi_cutoff": ((np.arange(max_n, dtype=f32) + 1) * f32(_PI) / f32(cutoff))
        .astype(f32)
        .reshape(1, -1),
        "n_2_pi_cutoff": ((np.arange(max_n, dtype=f32) + 2) * f32(_PI) / f32(cutoff))
        .astype(f32)
        .reshape(1, -1),
        "r_max": np.asarray(cutoff, dtype=f32),
    }


def smooth_bessel(r: Array, c: dict[str, Array]) -> Array:
    """Smooth Bessel radial basis (DimeNet), zero with two derivatives at the cutoff.

    r: (E,) distances in Å, strictly positive. Returns (E, max_n).
    """
    x1 = r[:, None] * c["n_1_pi_cutoff"]
    x2 = r[:, None] * c["n_2_pi_cutoff"]
    fnr = c["fnr_weights"] * (jnp.sin(x1) / x1 + jnp.sin(x2) / x2)
    dn, en = c["dn"], c["en"]
    gn = [fnr[:, 0]]
    for i in range(1, fnr.shape[1]):
        gn.append(1 / jnp.sqrt(dn[i]) * (fnr[:, i] + jnp.sqrt(en[0, i] / dn[i - 1]) * gn[-1]))
    return jnp.stack(gn, axis=1)


# Coefficients of the spherical Bessel functions j_0..j_3 at their first four
# roots, as upstream's SphericalBasisLayer writes them (float32 buffer ``coef``).
_SBF_COEF_ROWS = {
    0: [[3.14159274101257, 6.28318548202515, 9.42477798461914, 12.5663709640503]],
    1: [
        [-1.02446483277785, -1.00834335996107, -1.00419641763893, -1.00252381898662],
        [4.49340963363647, 7.7252516746521, 10.9041213989258, 14.0661935806274],
        [0.22799275301076, 0.130525632358311, 0.092093290316619, 0.0712718627992818],
        [4.49340963363647, 7.7252516746521, 10.9041213989258, 14.0661935806274],
    ],
    2: [
        [-1.04807944170731, -1.01861796359391, -1.01002272174988, -1.00628955560036],
        [5.76345920562744, 9.09501171112061, 12.322940826416, 15.5146026611328],
        [0.545547077361439, 0.335992298618515, 0.245888396928293, 0.194582402961821],
        [5.76345920562744, 9.09501171112061, 12.322940826416, 15.5146026611328],
        [0.0946561878721665, 0.0369424811413594, 0.0199537107571916, 0.0125418876146463],
        [5.76345920562744, 9.09501171112061, 12.322940826416, 15.5146026611328],
    ],
    3: [
        [1.06942831392075, 1.0292173312802, 1.01650804843248, 1.01069656069999],
        [6.9879322052002, 10.4171180725098, 13.6980228424072, 16.9236221313477],
        [0.918235852195231, 0.592803493701152, 0.445250264272671, 0.358326327374518],
        [6.9879322052002, 10.4171180725098, 13.6980228424072, 16.9236221313477],
        [0.328507713452024, 0.142266673367543, 0.0812617757677838, 0.0529328657590962],
        [6.9879322052002, 10.4171180725098, 13.6980228424072, 16.9236221313477],
        [0.0470107184508114, 0.0136570088173405, 0.0059323726279831, 0.00312775039221944],
        [6.9879322052002, 10.4171180725098, 13.6980228424072, 16.9236221313477],
    ],
}


def spherical_basis_constants(cutoff: float) -> dict[str, np.ndarray]:
    """Buffers of upstream ``SphericalBasisLayer(cutoff=cutoff)``, float32."""
    coef = np.zeros((4, 9, 4), dtype=np.float32)
    for n, rows in _SBF_COEF_ROWS.items():
        coef[n, : len(rows)] = np.asarray(rows, dtype=np.float32)
    return {"coef": coef, "factor": np.sqrt(np.float32(2.0 / cutoff**3)).astype(np.float32)}


def _legendre_harmonics(max_l: int, x: Array) -> Array:
    """Y_l0 without its phi part, l < max_l, as a function of x = cos(theta)."""
    out = [jnp.ones_like(x) * 0.5 * math.sqrt(1.0 / math.pi)]
    if max_l > 1:
        out.append(math.sqrt(3.0 / (4.0 * math.pi)) * x)
    if max_l > 2:
        out.append(math.sqrt(5.0 / (16.0 * math.pi)) * (3.0 * x**2 - 1.0))
    if max_l > 3:
        out.append(math.sqrt(7.0 / (16.0 * math.pi)) * x * (5.0 * x**2 - 3.0))
    return jnp.stack(out, axis=-1)


def spherical_radial(r: Array, c: dict[str, Array], cutoff: float, max_n: int, max_l: int) -> Array:
    """Radial part of the three-body basis: spherical Bessel functions j_n(z_nl r / rc).

    r: (K,) lengths in Å, positive. Returns (K, max_n * max_l), n-major.
    """
    k = c["coef"]
    x = r / cutoff
    radial = [jnp.sin(k[0, 0, j] * x) / x for j in range(max_l)]
    if max_n > 1:
        radial += [
            (k[1, 0, j] * x * jnp.cos(k[1, 1, j] * x) + k[1, 2, j] * jnp.sin(k[1, 3, j] * x)) / x**2
            for j in range(max_l)
        ]
    if max_n > 2:
        radial += [
            (
                k[2, 0, j] * x**2 * jnp.sin(k[2, 1, j] * x)
                - k[2, 2, j] * x * jnp.cos(k[2, 3, j] * x)
                + k[2, 4, j] * jnp.sin(k[2, 5, j] * x)
            )
            / x**3
            for j in range(max_l)
        ]
    if max_n > 3:
        radial += [
            (
                k[3, 0, j] * x**3 * jnp.cos(k[3, 1, j] * x)
                - k[3, 2, j] * x**2 * jnp.sin(k[3, 3, j] * x)
                - k[3, 4, j] * x * jnp.cos(k[3, 5, j] * x)
                + k[3, 6, j] * jnp.sin(k[3, 7, j] * x)
            )
            / x**4
            for j in range(max_l)
        ]
    return jnp.stack(radial, axis=-1) * c["factor"]


def spherical_basis(
    r: Array,
    cos_theta: Array,
    c: dict[str, Array],
    cutoff: float,
    max_n: int,
    max_l: int,
    index: Array | None = None,
) -> Array:
    """Three-body basis of bond length and angle (upstream SphericalBasisLayer).

    r: (T,) length r_ik in Å, positive; or, with ``index`` (T,), (E,) edge lengths
    of which triplet t uses ``r[index[t]]`` (the radial part is then computed once
    per edge and gathered: the same values, about T / E times fewer sines).
    cos_theta: (T,) cosine of angle jik, already clamped. Returns (T, max_n * max_l),
    n-major, as upstream orders it.
    """
    radial = spherical_radial(r, c, cutoff, max_n, max_l)
    if index is not None:
        radial = radial[index]
    angular = jnp.repeat(_legendre_harmonics(max_l, cos_theta), max_n, axis=-1)
    return radial * angular


def polynomial_cutoff(r: Array, cutoff: float) -> Array:
    """1 - 6x^5 + 15x^4 - 10x^3 with x = r / cutoff, clamped at 0."""
    x = r / cutoff
    return jnp.maximum(1 - 6 * x**5 + 15 * x**4 - 10 * x**3, 0.0)
