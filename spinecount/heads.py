"""Spine heads (step 5 of the method described in :mod:`spinecount.detection`): peaks of the
residual over the shaft model tested as protrusions, thinned out, measured (base, depth, tip,
neck) and sized; candidates are the peaks that pass looser tests only."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .grid import _vertex
from .optics import (AXIAL_RATIO, AXIAL_SCALE, FWHM_PER_SIGMA, cylinder_peak, cylinder_radius,
                     protrusion_sizes)
from .params import DetectionParams
from .shaft import CENTRE_SMOOTHING_UM, _Points, _Shafts
from .tables import POSITION

#: a neck whose middle is at least this bright relative to the head peak is as wide as the head
NECK_RATIO = 0.6
#: the neck's brightness is the median of the residual this far (fractions) from the shaft
#: surface to the head
NECK_WINDOW = (0.05, 0.55)
#: a head's brightness is read at the residual's peak, the brightest of many noisy values:
#: on average this many local noise SDs above the head's true brightness, which is taken off
#: before sizes are read from it (dim heads would otherwise come out too big and their necks
#: too narrow)
PEAK_BIAS_SD = 1.0
#: a head is measured (sizes, length, distance from the shaft) at the residual's own maximum,
#: reached by climbing the residual in the image plane from the peak of contrast, at most this
#: far (um; further, the climb runs down the neck of a thin spine with a dim head); its
#: position stays at the peak: see :func:`_head_measured_at_maximum`
CLIMB_UM = 0.5
#: the measurements read at the residual's maximum (the dendrite, whose brightness sizes
#: them, stays the one the peak is attached to)
HEAD_FIELDS = ("_head", "_neck", "_tip", "_surface", "_reach")
#: such a protrusion at least this many times as long as its head is wide is a tube
TUBE_RATIO = 1.5
#: a peak that fails the protrusion test is still a spine where the residual this far (um)
#: either way along the dendrite is below this fraction of its peak: a compact bump (a stubby
#: spine), not a widening of the shaft
BULGE_UM, BULGE_FRACTION = 1.0, 0.2


def _suppress(idx: np.ndarray, value: np.ndarray, vs, separation_um: float, shape) -> np.ndarray:
    """Of peaks closer than `separation_um` (z scaled by the PSF elongation) keep the strongest
    (ties: the first in raster order). Returns the positions of the kept peaks in `idx`,
    strongest first."""
    from scipy.spatial import cKDTree

    order = np.lexsort((np.ravel_multi_index(tuple(idx.T), shape), -value))
    if len(idx) < 2:
        return order
    pos = idx[order] * (np.asarray(vs) / np.array([AXIAL_RATIO, 1.0, 1.0]))
    tree = cKDTree(pos)
    keep = np.ones(len(idx), bool)
    for i in range(len(idx)):
        if keep[i]:
            for j in tree.query_ball_point(pos[i], separation_um):
                if j > i:
                    keep[j] = False
    return order[keep]


def _apart(rows: list[dict], spines: list[dict], separation_um: float) -> list[dict]:
    """`rows` (candidates) not closer than `separation_um` (z scaled by the PSF elongation) to
    any of `spines`: a spine moved to its brightest depth may have come that close to one,
    which would then be the same head counted twice (time-lapse linking takes candidates)."""
    from scipy.spatial import cKDTree

    if not rows or not spines:
        return rows
    dist, _ = cKDTree(_scaled(spines)).query(_scaled(rows))
    return [r for r, d in zip(rows, dist) if d >= separation_um]


def unstacked(spines: pd.DataFrame, weak: np.ndarray, separation_um: float,
               depth_um: float) -> np.ndarray:
    """Which of the chosen peaks to keep: a spine (not `weak`) whose head lies within
    `separation_um` in the image plane and `depth_um` in depth of a spine with a higher score
    is that head seen at another depth, and so is a weak peak (a candidate) there; both are
    left out. Peaks are thinned out with z counted a third (:func:`_suppress`) and heads
    then moved to their brightest depth, so one head can be left twice, 2-4 um apart in z.

    Examples
    --------
    >>> t = pd.DataFrame({"z_um": [10.0, 13.0, 13.0, 10.0], "y_um": [5.0, 5.3, 9.0, 5.2],
    ...                   "x_um": [5.0] * 4, "score": [0.9, 0.8, 0.7, 0.3]})
    >>> unstacked(t, np.array([False, False, False, True]), 0.7, 4.0).tolist()
    [True, False, True, False]
    """
    from scipy.spatial import cKDTree

    keep = np.ones(len(spines), bool)
    if depth_um <= 0 or len(spines) < 2:
        return keep
    at = spines[list(POSITION)].to_numpy(float)
    tree = cKDTree(at[:, 1:])
    for i in np.argsort(-spines["score"].to_numpy(float), kind="stable"):
        if weak[i] or not keep[i]:
            continue
        near = np.array(tree.query_ball_point(at[i, 1:], separation_um), int)
        near = near[(near != i) & (np.abs(at[near, 0] - at[i, 0]) <= depth_um)]
        keep[near] = False
    return keep


def _scaled(rows: list[dict], key: str | None = None) -> np.ndarray:
    """The heads of `rows` (or their point `key`, given as z, y, x um), z scaled by the PSF's
    elongation: the space in which peaks are thinned out."""
    at = np.array([r[key] if key else (r["z_um"], r["y_um"], r["x_um"]) for r in rows], float)
    return at * AXIAL_SCALE


def _drop_necks(rows: list[dict], separation_um: float, *,
                dimmer_only: bool = False) -> list[dict]:
    """Leave out peaks that lie on the neck of a spine further from the shaft: closer than
    `separation_um` (z scaled by the PSF elongation) to its neck (from the shaft model's
    inner edge to its head), short of the head. A long spine's neck often leaves a second
    residual peak near the shaft. With `dimmer_only` (for the candidates, the classifier's
    pool), only peaks of no more contrast than that spine: a brighter peak by the shaft is
    often a head of its own (a stubby spine) with a faint peak of noise beyond it."""
    from scipy.spatial import cKDTree

    if len(rows) < 2:
        return rows
    head, base = _scaled(rows), _scaled(rows, "_inner")
    surface = np.array([r["shaft_distance_um"] for r in rows])
    seg = head - base
    length2 = np.maximum((seg**2).sum(axis=1), 1e-12)
    # only pairs whose heads lie within one neck and the separation of each other can qualify
    pairs = cKDTree(head).query_pairs(np.sqrt(length2.max()) + separation_um,
                                      output_type="ndarray")
    a = np.concatenate([pairs[:, 0], pairs[:, 1]])  # the peak ...
    b = np.concatenate([pairs[:, 1], pairs[:, 0]])  # ... and the spine whose neck it may lie on
    # t: position of peak a along spine b's neck (0 at the base, 1 at the head)
    t = np.einsum("nk,nk->n", head[a] - base[b], seg[b]) / length2[b]
    gap = np.linalg.norm(head[a] - (base[b] + np.clip(t, 0, 1)[:, None] * seg[b]), axis=1)
    neck = np.zeros(len(rows), bool)
    on = (gap < separation_um) & (t < 0.85) & (surface[a] < surface[b])
    if dimmer_only:
        contrast = np.array([r["contrast"] for r in rows])
        on &= contrast[a] <= contrast[b]
    neck[a[on]] = True
    return [r for r, n in zip(rows, neck) if not n]


def _head_sigma_um(p: DetectionParams, vs) -> tuple[float, float, float]:
    """Smoothing (um) of the residual in which spine heads are found and their brightness read:
    the head scale, and at least half a z step in z."""
    return (max(p.head_sigma_um, 0.5 * vs[0]), p.head_sigma_um, p.head_sigma_um)


def _sizes(spines: pd.DataFrame, shafts: _Shafts, vs, p: DetectionParams) -> None:
    """Head and neck diameters from brightness, and the lengths, in place.

    Each dendrite's dye concentration is its centre line brightness over the peak of a filled
    cylinder of its radius; heads and necks are the filled spheres and cylinders whose peaks
    match theirs (:mod:`spinecount.optics`), all blurred by the PSF, the working pixel and the
    smoothing of the image each was read in. A protrusion that does not narrow (its neck at
    least ``NECK_RATIO`` as bright as its head) and is at least ``TUBE_RATIO`` times as long as
    its head is wide is a tube, not a head on the shaft: its head is the cylinder of its peak,
    and it is moved out from its peak to the middle of its last head-width before the tip.
    The integrated intensity relative to the shaft per um is the volume of head and neck over
    the shaft's cross-section.
    """
    psf = np.array([p.psf_axial_fwhm_um, p.psf_fwhm_um]) / FWHM_PER_SIGMA
    pixel2 = np.array([vs[0], vs[1]]) ** 2 / 12

    def blur(smoothing_um):
        return tuple(np.sqrt(psf**2 + pixel2 + np.asarray(smoothing_um[:2]) ** 2))

    conc = shafts.brightness / cylinder_peak(shafts.radius, blur(CENTRE_SMOOTHING_UM))
    k = spines.pop("_k").to_numpy()
    c = conc[k]
    peak = spines.pop("_head").to_numpy()
    head_peak = peak * (1 - PEAK_BIAS_SD / np.maximum(spines["contrast"].to_numpy(), 1e-9)) / c
    neck_peak = np.minimum(spines.pop("_neck").to_numpy() / c, head_peak)
    sigma = blur(_head_sigma_um(p, vs))
    head, neck = protrusion_sizes(head_peak, neck_peak, sigma_um=sigma)
    tip = spines.pop("_tip").to_numpy()
    surface = spines.pop("_surface").to_numpy()
    length = surface + tip
    # brightness that stays up along the protrusion: no neck narrower than the head is seen
    wide = neck_peak >= NECK_RATIO * head_peak
    tube = wide & (length > TUBE_RATIO * head)
    head = np.where(tube, 2 * cylinder_radius(head_peak, sigma), head)
    # a tube has no head: it is placed at the middle of its last head-width, before the tip
    # (its brightest point often lies part way along it)
    shift = np.where(tube, np.clip(tip - head / 2, 0, None), 0.0)
    spines[POSITION] += shift[:, None] * np.stack(spines.pop("_reach").to_numpy())
    spines["shaft_distance_um"] = surface + shift
    spines["head_diameter_um"] = head
    spines["neck_diameter_um"] = np.where(wide, head, neck)
    spines["length_um"] = length
    spines["neck_length_um"] = np.clip(length - head, 0, None)
    # the dye of head and neck over the shaft's per um, at the concentrations behind the sizes
    volume = np.pi / 6 * head**3 + np.pi / 4 * spines["neck_diameter_um"] ** 2 * spines[
        "neck_length_um"]
    spines["relative_intensity"] = volume / (np.pi * shafts.radius[k] ** 2)


def _local_peaks(rs, ms, region, inner, curve, low: float):
    """Local maxima (over their 26 neighbours) of the residual in local noise units, ``rz =
    rs / spread(ms)`` (`curve`: brightness, spread), above `low` in `region` and in the box
    `inner` (slices): their indices (n, 3; C order) and rz. Only voxels that can pass are
    looked at: the spread never falls with brightness, so rz > low needs rs > low x its least
    value."""
    centres, spread = curve

    def rz_at(idx):
        return rs[idx] / np.interp(ms[idx], centres, spread).astype(np.float32)
    corner = np.array([sl.start or 0 for sl in inner])
    maybe = region[inner] & (rs[inner] > low * spread[0] * (1 - 1e-6))
    at = np.argwhere(maybe) + corner
    rz = rz_at(tuple(at.T))
    keep = rz > low
    at, rz = at[keep], rz[keep]
    top = np.asarray(rs.shape) - 1
    peak = np.ones(len(at), bool)
    for off in np.argwhere(np.ones((3, 3, 3), bool)) - 1:
        if off.any():  # as scipy's maximum filter: a neighbour beyond the edge is the voxel
            peak &= rz_at(tuple(np.clip(at + off, 0, top).T)) <= rz
    return at[peak], rz[peak]


def _near_enough(local, origin, rz, tree, pts: _Points, shafts: _Shafts, vs,
                 p: DetectionParams):
    """Of residual peaks `local` (indices in a tile's arrays, whose first voxel is `origin`
    on the working grid; `rz` their contrast), those outside their shaft, near enough to it
    (and not too far above or below it) and bright enough to be a spine or a candidate, as
    (which, distance to the nearest centre line point, that point, the contrast a spine there
    needs)."""
    hp = (local + origin) * np.asarray(vs)
    dc, ni = tree.query(hp) if len(hp) else (np.zeros(0), np.zeros(0, int))
    k = pts.owner[ni]
    out = dc - shafts.edge[k]
    # heads far out need more contrast: most peaks there are not spines
    far = p.far_contrast_per_um * np.maximum(dc - shafts.radius[k] - p.far_spine_um, 0.0)
    ok = ((out >= 0.1) & (out <= p.max_spine_length_um)
          & (np.abs(hp[:, 0] - pts.xyz[ni, 0]) <= p.max_axial_offset_um)
          & (rz >= np.minimum(p.spine_threshold, p.candidate_threshold) + far))
    which = np.flatnonzero(ok)
    return which, dc[which], ni[which], p.spine_threshold + far[which]


_NEIGHBOURS = np.argwhere(np.ones((1, 3, 3), bool)) - [0, 1, 1]  # in the image plane


def _climb(li, rs: np.ndarray, steps: int) -> np.ndarray:
    """From voxel `li` of `rs`, up the steepest of its 8 neighbours in the image plane while it
    rises, at most `steps` times: the residual's maximum next to it in its slice (an index into
    `rs`; a head's depth is found apart, see :func:`_measure`)."""
    li = np.asarray(li)
    top = np.asarray(rs.shape) - 1
    for _ in range(steps):
        nb = np.clip(li + _NEIGHBOURS, 0, top)
        v = rs[tuple(nb.T)]
        j = int(np.argmax(v))
        if v[j] <= rs[tuple(li)]:
            break
        li = nb[j]
    return li


def _head_measured_at_maximum(row: dict, li, origin, tree, threshold, contrast, rs, ms,
                              pts: _Points, shafts: _Shafts, vs, p: DetectionParams) -> dict:
    """A spine row of :func:`_measure` with its head's measurements (:data:`HEAD_FIELDS`) read
    again at the residual's own maximum next to its peak (:func:`_climb`; `li` the peak's index
    in the tile's arrays, whose first voxel is `origin`).

    Peaks are maxima of the residual in local noise units, and the noise grows with the
    shaft's brightness: next to a bright shaft a peak lies a little further out than the head's
    brightest point, and a head measured there reads too small and too far out (stubby spines
    as thin ones). The position stays at the peak."""
    top = _climb(li, rs, int(CLIMB_UM / vs[1] + 1e-6))
    if np.array_equal(top, li):
        return row
    gi = top + origin
    dc, ni = tree.query(gi * np.asarray(vs))
    head = _measure(top, gi, dc, ni, threshold, contrast, rs, ms, pts, shafts, vs, p,
                    test=False)
    row.update({k: head[k] for k in HEAD_FIELDS})
    return row


def _measure(li, gi, dc, ni, threshold, contrast, rs, ms, pts: _Points, shafts: _Shafts, vs,
             p: DetectionParams, *, test: bool = True) -> dict | None:
    """One residual peak (`li`: index in the tile's arrays, `gi`: on the working grid) that
    passed :func:`_near_enough` (`dc`: distance to the nearest centre line point `ni`;
    `threshold`: the contrast a spine there needs; `contrast`: its rz) as a spine row, or None
    where it is a bulge of the shaft itself rather than a protrusion (not tested where `test`
    is false: a head measured again)."""
    zi, yi, xi = li
    hp = gi * np.asarray(vs)
    k = int(pts.owner[ni])
    surface = max(dc - shafts.radius[k], 0.0)
    threshold = float(threshold)
    candidate = contrast < threshold
    origin = gi - li

    def smoothed_at(points, beyond=None):
        """The smoothed residual at `points` (um), the tile's edge value beyond it, or
        `beyond` where given (the tile reaches the stack's edge only: its halo is wider than
        any reach from a head)."""
        idx = np.round(points / np.asarray(vs)).astype(int) - origin
        values = rs[tuple(np.clip(idx, 0, np.asarray(rs.shape) - 1).T)]
        if beyond is None:
            return values
        return np.where(np.all((idx >= 0) & (idx < np.asarray(rs.shape)), axis=1), values,
                        beyond)

    peak = rs[zi, yi, xi]
    cpt = pts.xyz[ni]
    fraction = peak / max(peak + ms[zi, yi, xi], 1e-12)
    if test and fraction < p.min_protrusion_fraction:
        # a bulge of the shaft itself, not a protrusion from it, unless compact along it
        along = smoothed_at(hp[None] + np.outer([-BULGE_UM, BULGE_UM], pts.tan[ni]))
        if along.max() > BULGE_FRACTION * peak:
            if fraction < p.candidate_protrusion_fraction:
                return None
            candidate = True
    direction = (hp - cpt) / max(dc, 1e-9)
    base = cpt + min(shafts.radius[k], dc) * direction

    # head and neck sizes come later from brightness (_sizes); here the brightness at the head
    # and along the neck (NECK_WINDOW of the way from the shaft surface to the head; the median:
    # near the surface the shaft model's subtraction and the noise pull the residual down)
    t_along = np.linspace(0, 1, max(int(np.linalg.norm(hp - base) / 0.1), 2))
    along = smoothed_at(base[None] + t_along[:, None] * (hp - base)[None])
    mid = along[(t_along >= NECK_WINDOW[0]) & (t_along <= NECK_WINDOW[1])]
    neck = max(float(np.median(mid if len(mid) else along)), 0.0)  # at most the head: _sizes
    # the tip: where the brightness beyond the peak (out[0]) first falls to half of it,
    # interpolated; at most 2 um out. Looked for in the image plane: along a direction that
    # rises in z the half-brightness point lies where the PSF's long axial blur ends, not the
    # spine (stubby spines came out as long as thin ones)
    step = 0.05
    out = np.arange(0.0, 2.0 + 1e-9, step)
    plane = np.array([0.0, direction[1], direction[2]])
    reach = plane / np.linalg.norm(plane) if plane.any() else direction
    # the tip is no further out than the stack's edge
    prof = smoothed_at(hp[None] + out[:, None] * reach[None], beyond=-np.inf)
    below = np.flatnonzero(prof < 0.5 * peak)
    j = below[0] if len(below) else 0
    tip = (out[j - 1] + step * (prof[j - 1] - 0.5 * peak) / max(prof[j - 1] - prof[j], 1e-9)
           if j else out[-1])
    # the head's depth: where the image (smoothed at the head scale) is brightest at the head,
    # within the axial PSF's FWHM of the residual's peak (the residual is pushed away from the
    # shaft in z where the model's long axial blur is taken off; synthetic heads come closer to
    # their true depth, and annotators click where a head is brightest), and for the sizes
    # between slices: the vertex of the parabola through that slice and its two neighbours (on
    # the grid, a head close to the shaft but half a slice off its centre reads as far out as
    # a thin spine's)
    reach_z = int(p.psf_axial_fwhm_um / vs[0] + 1e-6)
    lo = max(zi - reach_z, 0)
    column = rs[lo:zi + reach_z + 1, yi, xi] + ms[lo:zi + reach_z + 1, yi, xi]
    zb = int(np.argmax(column))
    head_z = depth = (origin[0] + lo + zb) * vs[0]
    if 0 < zb < len(column) - 1:
        depth += float(_vertex(*column[zb - 1:zb + 2])) * vs[0]
    return {
        "dendrite_id": int(shafts.ids[k]), "y_um": hp[1], "x_um": hp[2],
        "z_um": head_z,
        "base_z_um": base[0], "base_y_um": base[1], "base_x_um": base[2],
        "shaft_distance_um": surface,  # on the grid, for _drop_necks; _sizes puts _surface
        "_surface": max(float(np.linalg.norm([depth - cpt[0], *(hp[1:] - cpt[1:])]))
                        - shafts.radius[k], 0.0),
        "contrast": float(contrast), "_threshold": threshold,
        # for _drop_necks and _sizes, then dropped
        "_inner": cpt + shafts.edge[k] * direction, "_k": k, "_head": float(peak),
        "_neck": neck, "_tip": float(tip), "_reach": reach, "_candidate": bool(candidate),
    }
