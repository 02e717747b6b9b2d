"""Peak brightness of filled objects against images of them rendered and blurred here."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from spinecount.optics import cylinder_peak, protrusion_sizes, sphere_peak

SIGMA = (0.8, 0.3)  # axial, lateral (um)
STEP = (0.05, 0.025, 0.025)  # voxel (um)


def _grid(extent_um=(6.0, 2.4, 3.2)):
    axes = [np.arange(-e / 2, e / 2 + s / 2, s) for e, s in zip(extent_um, STEP)]
    return np.meshgrid(*axes, indexing="ij")


def _blurred_at_centre(filled: np.ndarray) -> float:
    img = ndi.gaussian_filter(filled.astype(float), [SIGMA[0] / STEP[0], SIGMA[1] / STEP[1],
                                                      SIGMA[1] / STEP[2]], mode="constant")
    return float(img[tuple(n // 2 for n in img.shape)])


@pytest.mark.parametrize("radius", [0.15, 0.4])
def test_sphere_peak_matches_a_blurred_filled_sphere(radius):
    z, y, x = _grid()
    got = _blurred_at_centre(z**2 + y**2 + x**2 <= radius**2)
    assert sphere_peak([radius], SIGMA)[0] == pytest.approx(got, rel=0.03)


@pytest.mark.parametrize("radius", [0.1, 0.5])
def test_cylinder_peak_matches_a_blurred_filled_cylinder(radius):
    # an infinitely long cylinder along x: its cross-section (z, y) blurred in 2D
    step = 0.005
    z, y = np.meshgrid(*[np.arange(-e, e + step / 2, step) for e in (3.5, 1.5)], indexing="ij")
    img = ndi.gaussian_filter((z**2 + y**2 <= radius**2).astype(float),
                              [SIGMA[0] / step, SIGMA[1] / step], mode="constant")
    got = float(img[tuple(n // 2 for n in img.shape)])
    assert cylinder_peak([radius], SIGMA)[0] == pytest.approx(got, rel=0.03)


def test_point_limits():
    r = 0.02
    volume = 4 / 3 * np.pi * r**3
    point = volume / ((2 * np.pi) ** 1.5 * SIGMA[0] * SIGMA[1] ** 2)
    assert sphere_peak([r], SIGMA)[0] == pytest.approx(point, rel=0.01)
    line = np.pi * r**2 / (2 * np.pi * SIGMA[0] * SIGMA[1])
    assert cylinder_peak([r], SIGMA)[0] == pytest.approx(line, rel=0.01)
    assert sphere_peak([5.0], SIGMA)[0] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("head_r, neck_r", [(0.45, 0.1), (0.22, 0.22), (0.35, 0.15)])
def test_head_and_neck_sizes_come_back_from_a_rendered_spine(head_r, neck_r):
    # a head on a neck running along +x from its surface out of the grid, like a spine whose
    # shaft lies beyond; and the neck's own brightness far from the head
    z, y, x = _grid(extent_um=(6.0, 2.4, 6.4))
    spine = (z**2 + y**2 + x**2 <= head_r**2) | ((z**2 + y**2 <= neck_r**2) & (x > 0))
    img = ndi.gaussian_filter(spine.astype(float), [SIGMA[0] / STEP[0], SIGMA[1] / STEP[1],
                                                     SIGMA[1] / STEP[2]],
                              mode=["constant", "constant", "nearest"])
    centre = tuple(n // 2 for n in img.shape)
    head_peak = img[centre]
    neck_peak = img[centre[0], centre[1], -1]
    head_d, neck_d = protrusion_sizes([head_peak], [neck_peak], sigma_um=SIGMA)
    assert head_d[0] == pytest.approx(2 * head_r, abs=0.04)
    assert neck_d[0] == pytest.approx(2 * neck_r, abs=0.04)
