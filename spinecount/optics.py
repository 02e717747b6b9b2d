"""Peak brightness of small, uniformly filled objects blurred by a Gaussian point spread function.

A spine head is close to a filled sphere, a neck and a dendrite shaft to filled cylinders, and a
two-photon image is the dye in them blurred by the microscope (plus any smoothing). Objects this
small are narrower than the blur, so their widths in the image say little about their size,
but their peak brightness does: it is the dye concentration times a fraction that depends only
on the object's size and the blur. :func:`sphere_peak` and :func:`cylinder_peak` compute that
fraction. Dividing a head's peak by its shaft's (whose radius is measured from its width, where
the shaft is wider than the blur) removes the concentration; inverting the fractions turns the
ratio into micrometres. This is the usual two-photon measure of spine size, brightness relative
to the dendrite (for example Holtmaat et al. 2005, Neuron 45: 279), on a physical scale.

Sigmas are Gaussian standard deviations in micrometres, ``(axial, lateral)``.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf, erfc

#: Axial / lateral elongation of the two-photon PSF, used to scale z in the shaft model.
AXIAL_RATIO = 3.0
#: Multiplies (z, y, x) um so that distances count z as much as the PSF's elongation allows.
AXIAL_SCALE = np.array([1 / AXIAL_RATIO, 1.0, 1.0])
#: full width at half maximum of a Gaussian, in standard deviations
FWHM_PER_SIGMA = 2.3548

_T = np.linspace(-1.0, 1.0, 161)  # quadrature nodes across the object, in units of its radius


def _peak(radius, sigma_um, lateral) -> np.ndarray:
    """Fraction of the blur at the centre of a round object of `radius` that falls inside it:
    the axial Gaussian integrated over z across the object (trapezoid rule), times the
    fraction ``lateral(c2, sigma_lateral)`` that falls inside its cross-section at height z,
    whose half-width squared is ``c2``."""
    sz, sl = sigma_um
    r = np.atleast_1d(np.asarray(radius, float))[:, None]
    z = _T[None] * r
    w = np.exp(-z**2 / (2 * sz**2)) / (np.sqrt(2 * np.pi) * sz)
    w = w * (_T[1] - _T[0]) * r
    w[:, [0, -1]] *= 0.5
    return (w * lateral(np.clip(r**2 - z**2, 0, None), sl)).sum(axis=1)


def sphere_peak(radius_um, sigma_um) -> np.ndarray:
    """Brightness at the centre of a filled sphere, as a fraction of its dye concentration.

    Parameters
    ----------
    radius_um : array_like
        Sphere radii (um).
    sigma_um : (float, float)
        Blur (axial, lateral), Gaussian standard deviations in um.

    Returns
    -------
    ndarray
        The probability that a point spread as the blur lands inside the sphere.

    Examples
    --------
    >>> sphere_peak([0.1, 0.3, 3.0], (0.8, 0.2)).round(3).tolist()
    [0.008, 0.147, 1.0]
    """
    # a disc of radius c: the lateral Gaussian inside it in 2D
    return _peak(radius_um, sigma_um, lambda c2, sl: 1 - np.exp(-c2 / (2 * sl**2)))


def cylinder_peak(radius_um, sigma_um) -> np.ndarray:
    """Brightness on the axis of a long filled cylinder lying in the image plane, as a fraction
    of its dye concentration.

    Parameters
    ----------
    radius_um : array_like
        Cylinder radii (um).
    sigma_um : (float, float)
        Blur (axial, lateral), Gaussian standard deviations in um; the cross-section of the
        cylinder spans z and one lateral direction.

    Examples
    --------
    >>> cylinder_peak([0.1, 0.5, 3.0], (0.8, 0.2)).round(3).tolist()
    [0.03, 0.426, 1.0]
    """
    # a band of half-width c: the lateral Gaussian inside it in 1D
    return _peak(radius_um, sigma_um, lambda c2, sl: erf(np.sqrt(c2) / (np.sqrt(2) * sl)))


def _cylinder_table(sigma_um, max_radius_um: float) -> tuple[np.ndarray, np.ndarray]:
    """Radii from 0.005 um to `max_radius_um` and their :func:`cylinder_peak` (rising)."""
    grid = np.linspace(0.005, max_radius_um, 600)
    return grid, cylinder_peak(grid, sigma_um)


def cylinder_radius(peak, sigma_um, *, max_radius_um: float = 1.5) -> np.ndarray:
    """Radius of the filled cylinder whose :func:`cylinder_peak` is `peak` (the inverse).

    Parameters
    ----------
    peak : array_like
        Brightness on the axis divided by the dye concentration.
    sigma_um : (float, float)
        Blur (axial, lateral), Gaussian standard deviations in um.
    max_radius_um : float
        Largest radius returned.

    Examples
    --------
    >>> cylinder_radius(cylinder_peak([0.1, 0.5], (0.8, 0.2)), (0.8, 0.2)).round(2).tolist()
    [0.1, 0.5]
    """
    grid, cyl = _cylinder_table(sigma_um, max_radius_um)
    return np.interp(np.atleast_1d(np.asarray(peak, float)), cyl, grid)


def protrusion_sizes(head_peak, neck_peak, *, sigma_um, max_radius_um: float = 1.5):
    """Head and neck diameters of spines from their peak brightness, relative to the dye
    concentration.

    The neck is a cylinder; the head a sphere at the neck's end, whose centre also receives the
    light of the neck beyond its surface. The neck's brightness is taken far enough from the
    head (and the shaft) that neither adds to it.

    Parameters
    ----------
    head_peak, neck_peak : array_like
        Brightness at the head centre and along the middle of the neck, each divided by the dye
        concentration (a shaft's peak over :func:`cylinder_peak` of its radius).
    sigma_um : (float, float)
        Blur (axial, lateral) of the image both were measured in, um.
    max_radius_um : float
        Largest radius returned.

    Returns
    -------
    head_diameter, neck_diameter : ndarray
        Micrometres; the neck is never wider than the head.

    Examples
    --------
    A head of radius 0.4 um on a neck of radius 0.1 um:

    >>> sig = (0.8, 0.3)
    >>> neck = cylinder_peak([0.1], sig)
    >>> start = (0.4**2 - 0.1**2 / 2) ** 0.5  # where the neck leaves the head
    >>> head = sphere_peak([0.4], sig) + neck * 0.5 * erfc(start / (0.3 * 2**0.5))
    >>> [d.round(2).tolist() for d in protrusion_sizes(head, neck, sigma_um=sig)]
    [[0.8], [0.2]]
    """
    grid, cyl = _cylinder_table(sigma_um, max_radius_um)
    neck = np.clip(np.atleast_1d(np.asarray(neck_peak, float)), cyl[0], cyl[-1])
    neck_r = np.interp(neck, cyl, grid)  # cylinder_radius, on the same table
    head_peak = np.atleast_1d(np.asarray(head_peak, float))
    # head centre brightness for every head radius (columns), with each spine's neck (rows):
    # the sphere, and the neck beyond the sphere's surface (where it meets the neck's mean
    # square radius)
    rn = np.minimum(grid[None], neck_r[:, None])
    start = np.sqrt(grid[None] ** 2 - rn**2 / 2)
    tail = 0.5 * erfc(start / (np.sqrt(2) * sigma_um[1]))
    model = sphere_peak(grid, sigma_um)[None] + np.minimum(cyl[None], neck[:, None]) * tail
    above = model >= head_peak[:, None]
    head_r = np.where(above.any(axis=1), grid[above.argmax(axis=1)], max_radius_um)
    return 2 * head_r, 2 * np.minimum(neck_r, head_r)
