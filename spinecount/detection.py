"""Trace dendrites and detect dendritic spines in a two-photon stack.

The method, in order (all distances in micrometres, converted with the stack's voxel size):

1. **Working resolution.** The stack is block-averaged laterally to about
   ``working_pixel_um`` (0.24 um) pixels: fine enough for spine heads, and fast. Z steps
   coarser than ``working_z_step_um`` (1 um) are interpolated to it or finer (a cubic spline
   along z; the stack's own slices are kept): the shaft model, the peaks and their depth work
   slice by slice, and at 2 um steps a head between two slices was missed or placed a slice
   off.
2. **Background and noise** are estimated per slice (median and scaled median absolute
   deviation, on a lattice of about 200,000 pixels a slice), so depth dimming does not bias
   thresholds.
3. **Dendrites.** The image smoothed by ``dendrite_smoothing_um`` is thresholded at
   ``dendrite_threshold`` noise SDs above background or, where higher, at ``otsu_fraction`` of
   Otsu's threshold of the smoothed stack (in vivo, dim neuropil and out-of-focus processes lie
   many noise SDs above the background; Otsu's split puts them with the background) or, where
   the brightest smoothed value within :data:`LOCAL_REACH_UM` is lower, at
   ``local_threshold_fraction`` of it (a dendrite much dimmer than the brightest in the field);
   parts thicker than ``max_dendrite_radius_um`` (soma, blobs) are removed. The mask is
   skeletonised in 3D (carried on beyond the stack's sides, so that a dendrite leaving the
   field is traced to its edge) and turned into a graph with skan (pieces on their own whose
   centre line is nowhere clearly brighter than the mask's threshold, below ``HAZE_RATIO``
   times it, are out-of-focus haze and left out, as are pieces traced under a lowered threshold
   that are not long, narrow lines, :func:`_dim_dendrite`); tip branches that reach, in a
   straight line from their junction, no further than ``max_spine_length_um`` beyond the
   dendrite's radius there (spines; the skeleton's path staircases between slices) are pruned
   repeatedly (where a dendrite ends just past a spine, the one that continues the dendrite is
   kept, :func:`_continuation`), short cycles round holes in the mask broken at their dimmest
   branch (:func:`_short_cycles`) and isolated pieces shorter than ``min_dendrite_length_um``
   dropped; where a free end runs on into a spine with no tip of its own to prune (it dims to a
   neck and turns away), the spine is cut off (:func:`_end_spine`) and the dendrite carried on
   along its direction to the mask's end. Each remaining branch between junctions and tips is
   one dendrite (a branch between two junctions closer than the sum of the dendrite's diameters
   there, where the skeleton splits a crossing into several junctions, is part of the dendrite
   it continues best, and two ends that face each other across a gap of up to ``max_gap_um``
   are joined along the brightest route between them where it is nowhere dimmer than half the
   mask's threshold). Its centre line, smoothed over ``length_smoothing_um``, is moved across
   the dendrite in the image plane onto the ridge of the smoothed image (:func:`_recentre`):
   the skeleton runs off the shaft's middle where a spine widens the mask on one side, and
   steps by whole working pixels. Its length is measured along it, with the true voxel size in
   each axis. Alternatively the caller gives the centre lines (``traces``), which are used as
   they are.
4. **Shaft model.** Every voxel near a dendrite is assigned to its nearest centre line point
   (z scaled by the PSF's axial elongation). Per 4 um stretch of dendrite, the median intensity
   by side, lateral distance (0.2 um bins) and z offset (slices) is the shaft, forced never to get
   brighter further out, and interpolated in z between the slices at each voxel's own offset
   (a centre line between two slices would otherwise leave a ridge above or below the shaft)
   and laterally between the middles of the bins (the steep edge of the shaft would otherwise
   leave a step of residual at every bin).
   The model is then fitted again without the voxels beyond ``SHAFT_CLIP_RADII`` shaft radii
   where the first model's residual stands out by ``SHAFT_CLIP_SD`` local noise SDs: where
   spines crowd one side of a stretch, they would otherwise raise its medians and be taken
   into the shaft. Subtracting the model leaves the spines, including heads whose neck is too
   dim to see.
5. **Spines** are peaks of the residual, smoothed at the head scale ``head_sigma_um``, that rise
   ``spine_threshold`` local noise SDs above it (shot noise grows with the shaft model; heads
   more than ``far_spine_um`` from the shaft surface need ``far_contrast_per_um`` more SDs per
   um beyond it), lie within ``max_spine_length_um`` of the shaft surface and within
   ``max_axial_offset_um`` above or below the centre line, are at least
   ``min_spine_separation_um`` apart, protrude (at least ``min_protrusion_fraction`` of the
   brightness at the head is in excess of the shaft model: a local bulge of the shaft is not a
   spine, unless it is compact along the dendrite, its residual ``BULGE_UM`` either way along it
   below ``BULGE_FRACTION`` of its peak, as a stubby spine is), and do not lie on the neck of a
   spine further out. Peaks that pass these tests only with ``candidate_threshold`` and
   ``candidate_protrusion_fraction`` (or score under ``min_score``) are the candidates: not
   counted; time-lapse linking looks among them for a spine missed on one day.
   Each is attached to its nearest dendrite, its head placed at the depth where the image is
   brightest at its position (within the axial PSF's FWHM of the peak: the residual is pushed
   away from the shaft in z, where the model's long axial blur is taken off), its base on the
   shaft surface (at the shaft model's half-maximum radius) towards the head, and measured:
   head and neck diameters from brightness (below), total length from the surface to the tip
   (where the residual beyond the peak, in the image plane, falls to half of it), neck length
   (total less head), distance of the head from the surface (its depth refined between
   slices), integrated intensity relative to the shaft per micrometre (the volume of
   head and neck over the shaft's cross-section, both from their brightness), type (see
   :mod:`spinecount.morphology`) and a confidence ``score`` from its contrast above its
   threshold. The head's peak is the brightest of noisy values, so ``PEAK_BIAS_SD`` noise SDs
   are taken off it before sizes are read from it. Heads are about
   as small as the blur, so their widths in the image hardly vary with their size, but their
   brightness does: each dendrite's dye concentration is its centre line brightness over the
   peak of a filled cylinder of its radius, and the head is the filled sphere, the neck the
   filled cylinder, whose peaks through the same blur (``psf_fwhm_um``, ``psf_axial_fwhm_um``,
   the working pixel and the smoothing) match the residual's peak and its median along the
   inner half of the neck (:mod:`spinecount.optics`). Where the neck is at least
   ``NECK_RATIO`` (0.6) as bright as the head, no neck narrower than the head is seen and the
   neck is as wide as it; such a protrusion at least ``TUBE_RATIO`` (1.5) times as long as its
   head is a tube (a thin spine or filopodium), whose width is the cylinder of its peak.
   Last, stretches of traced dendrite that run more than ``max_dendrite_tilt_deg`` out of the
   image plane are left out with their spines (:func:`_flat_pieces`): along a dendrite diving
   through the stack the axial blur hides spines, and most peaks there are not spines. Spine
   heads within ``DIVE_REACH_UM`` of such a stretch go too, whatever dendrite they belong to,
   and so do heads more than ``PAST_END_UM`` past an end of their own dendrite (nearest to
   that end, within 45 degrees of its direction: the dendrite's rounded end, or its dim
   continuation past where the tracing stopped, :func:`_past_end`), and heads within
   ``OTHER_DENDRITE_UM`` of another dendrite's centre line (where two dendrites cross or
   touch).
6. **Chunks.** Every step works in lateral chunks with a margin (:mod:`spinecount.chunks`), and
   what needs the whole stack (background and noise, Otsu's threshold, the shaft model's cell
   medians, the noise curve, close peaks) is gathered from all chunks first, so the result is
   the same in chunks as in one piece. Large stacks are chunked to bound memory; smaller ones
   run as one strip per thread.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .chunks import (AUTO_CHUNK_UM, AUTO_CHUNK_VOXELS, Tile, assemble_lattice, map_tiles,
                     plan_tiles)
from .io import Stack
from .morphology import classify_spine
from .optics import cylinder_peak, cylinder_radius, protrusion_sizes
from .params import DetectionParams
from .tables import (BASE, CENTERLINE_STEP_UM, POSITION, conform_spines, dendrite_table,
                     empty_spines, polyline_length, resample_polyline, smooth_polyline)

#: The coarsest z step and lateral pixel (um) the detector is measured at (README, Measured
#: accuracy); coarser stacks are detected with a warning.
MEASURED_Z_STEP_UM, MEASURED_PIXEL_UM = 2.0, 0.3
#: Axial / lateral elongation of the two-photon PSF, used to scale z in the shaft model.
AXIAL_RATIO = 3.0
#: Multiplies (z, y, x) um so that distances count z as much as the PSF's elongation allows.
AXIAL_SCALE = np.array([1 / AXIAL_RATIO, 1.0, 1.0])
#: full width at half maximum of a Gaussian, in standard deviations
FWHM_PER_SIGMA = 2.3548
#: lateral smoothing (um) of the image in which a dendrite's centre line brightness is read
CENTRE_SMOOTHING_UM = (0.0, 0.3, 0.3)
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
#: such a protrusion at least this many times as long as its head is wide is a tube
TUBE_RATIO = 1.5
#: the shaft model is fitted again without the voxels outside this many shaft radii where the
#: residual (smoothed at the head scale) stands this many local noise SDs above it: spines
SHAFT_CLIP_RADII, SHAFT_CLIP_SD = 1.25, 2.5
#: a peak that fails the protrusion test is still a spine where the residual this far (um)
#: either way along the dendrite is below this fraction of its peak: a compact bump (a stubby
#: spine), not a widening of the shaft
BULGE_UM, BULGE_FRACTION = 1.0, 0.2
#: A piece of skeleton on its own whose centre line's median brightness is below this many
#: times the mask's threshold is out-of-focus haze, not a dendrite (:func:`_drop_haze`): on
#: rr30a the traced dendrites lie at least 1.45 times above it, haze in the first and last
#: slices of synthetic stacks 1.05-1.25 times
HAZE_RATIO = 1.3
#: Which short tip at a dendrite's last junction is the dendrite (:func:`_continuation`): the
#: directions over ``CONTINUE_UM`` from the junction; the longest tip unless its cosine with the
#: dendrite is below the first value and another's above the second (60 and 37 degrees).
CONTINUE_UM = 2.0
CONTINUE_COS = (0.5, 0.8)
#: A dendrite's free end is a spine (:func:`_end_spine`) where its centre line, within
#: ``max_spine_length_um`` of the tip, dims below the first fraction of the dendrite's median
#: brightness (a neck, blurred: a short one dims the line to about 0.6) and turns away from the
#: dendrite by more than ``END_SPINE_COS`` (cosine, 45 degrees); it is cut where it is last at
#: least the second fraction as bright.
END_SPINE_DIM = (0.7, 0.75)
END_SPINE_COS = 0.7
#: A traced centre line is moved across its dendrite, in the image plane, onto the ridge of the
#: smoothed image (:func:`_recentre`): to the nearest maximum within the first distance (um)
#: either way, the moves taken as their running median over the second (um) along the line
#: (a spine beside the shaft does not pull it), then smoothed over the third (um).
RECENTRE_UM = (0.6, 3.0, 0.5)
#: The mask threshold is lowered to ``local_threshold_fraction`` of the brightest smoothed value
#: within this reach (um, each axis) around a voxel (:func:`_local_threshold`).
LOCAL_REACH_UM = 3.0
#: A piece of skeleton traced where the threshold was lowered is a dim dendrite, not neuropil
#: or haze (:func:`_drop_haze`), where it is at least ``DIM_MIN_LENGTH_UM`` long, has no
#: cycle, and its cross profile is narrow: the image ``DIM_SIDE[0]`` um to its dimmer side (in
#: the image plane) at most ``DIM_SIDE[1]`` times as bright as the centre line (medians along
#: it). On rr30a the pieces traced through hazy patches read 0.39-0.90 there, synthetic dim
#: dendrites 0.11-0.18.
DIM_MIN_LENGTH_UM = 15.0
DIM_SIDE = (1.0, 0.35)
#: A dendrite's tilt out of the image plane is measured over this stretch (um) of its centre
#: line (:func:`_tilted`); flat pieces shorter than it are left out (:func:`_flat_pieces`).
TILT_WINDOW_UM = 3.0
#: Spine heads within this distance (um, z scaled by ``AXIAL_RATIO``) of a stretch left out as
#: steep go with it, whatever dendrite they were attached to: the dive's own axial blur (about
#: 2 um) lies there. On rr30a 6 detections in the annotated tube lay that close, all false.
DIVE_REACH_UM = 2.0
#: Spine heads lying more than this (um, z scaled by ``AXIAL_RATIO``) past an end of their own
#: traced dendrite (the end their nearest point of it, within 45 degrees of its direction over
#: ``CONTINUE_UM``) go: there lies the dendrite's own rounded end, or the dendrite going on
#: dimmer past where the tracing stopped, not a spine standing out of its side
#: (:func:`_flat_pieces`, :func:`_past_end`).
PAST_END_UM = 0.5
#: Spine heads within this distance (um, z scaled by ``AXIAL_RATIO``) of another dendrite's
#: centre line go: they lie at its surface, where two dendrites cross or touch and one's spine
#: cannot be told from the other's shaft (:func:`_off_their_dendrite`; in rr30a's annotated
#: tubes and on the 15 synthetic benchmark stacks 6 detections lay that close, all false).
OTHER_DENDRITE_UM = 1.5
#: Where skeleton branches are pruned, the skeleton is thinned again within this many voxels of
#: them (:func:`_prune_paths`); thinning a skeleton changes it only next to what was removed.
PRUNE_MARGIN_PX = 3
#: Stages of the detection, in order (yielded by :func:`detect_steps`, timed in ``timings``).
STAGES = ("prepare", "dendrites", "shaft model", "spines")


@dataclass
class Detection:
    """Result of :func:`detect`.

    Attributes
    ----------
    spines, dendrites, centerlines : DataFrame
        Tables of the column contract (:mod:`spinecount.tables`).
    paths : list of ndarray
        Dendrite centre lines as (n, 3) arrays in micrometres (napari Shapes path data after
        dividing by the voxel size); ``paths[i]`` belongs to ``dendrites.dendrite_id[i]``.
    mask : ndarray of bool or None
        Dendrite mask at working resolution (``working_pixel_um`` laterally; z steps coarser
        than ``working_z_step_um`` interpolated), when asked for with ``return_mask=True``.
    timings : dict
        Seconds per stage.
    candidates : DataFrame
        Peaks that pass looser tests only (``candidate_threshold``,
        ``candidate_protrusion_fraction``) or score under ``min_score``, measured like the
        spines (their own ``spine_id``). Not counted; time-lapse linking looks among them for a
        spine that was found in the session before or after
        (:func:`spinecount.timelapse.link`).
    """

    spines: pd.DataFrame
    dendrites: pd.DataFrame
    centerlines: pd.DataFrame
    paths: list = field(default_factory=list)
    mask: np.ndarray | None = None
    timings: dict = field(default_factory=dict)
    candidates: pd.DataFrame = field(default_factory=empty_spines)


_warm_lock = threading.Lock()
_warm_started = False


def _warm_skan(*, wait: bool = False) -> None:
    """Compile skan's numba code once per process, in a background thread unless `wait`: about
    3 s that otherwise fall on the first stack, and that overlap the first stages (which run in
    C code, outside Python's lock)."""
    global _warm_started

    def toy():
        try:
            import skan

            sk = np.zeros((3, 12, 12), bool)
            sk[1, 2:10, 6] = sk[1, 6, 2:10] = True
            skel = skan.Skeleton(sk, spacing=(1.0, 0.5, 0.5))
            skan.summarize(skel, separator="_")
            skel.path_coordinates(0)
            skel.prune_paths([0])
        except Exception:  # the real call will say what is wrong
            pass

    with _warm_lock:
        if _warm_started:
            return
        _warm_started = True
        if wait:
            toy()
        else:
            threading.Thread(target=toy, name="spinecount-warm-skan", daemon=True).start()


def downsample_xy(data: np.ndarray, f: int) -> np.ndarray:
    """Block-mean a (z, y, x) stack by `f` in y and x, as float32 (the input is not converted
    as a whole); rows and columns that do not fill a block are dropped.

    Examples
    --------
    >>> downsample_xy(np.arange(18).reshape(1, 3, 6), 2).tolist()
    [[[3.5, 5.5, 7.5]]]
    """
    if f == 1:
        return data.astype(np.float32)
    z, y, x = data.shape
    y2, x2 = y // f * f, x // f * f
    # summed a block offset at a time: numpy's mean over the two block axes is 5 times slower
    out = np.zeros((z, y2 // f, x2 // f), np.float32)
    for i in range(f):
        for j in range(f):
            out += data[:, i:y2:f, j:x2:f]
    out /= f * f
    return out


def upsample_z(data: np.ndarray, m: int) -> np.ndarray:
    """Interpolate `m` - 1 slices between each two of a (z, y, x) stack (a cubic spline along
    z), as float32; the stack's own slices are kept.

    Examples
    --------
    >>> upsample_z(np.array([0.0, 1.0, 8.0, 27.0])[:, None, None], 2).ravel().tolist()
    [0.0, 0.125, 1.0, 3.375, 8.0, 15.625, 27.0]
    """
    n = data.shape[0]
    if m == 1 or n < 2:
        return data.astype(np.float32, copy=False)
    from scipy.interpolate import make_interp_spline

    spline = make_interp_spline(np.arange(n), data, k=min(3, n - 1), axis=0)
    return spline(np.arange((n - 1) * m + 1) / m).astype(np.float32)


def _slice_stats(sample: np.ndarray):
    """Per-slice background (median) and noise SD (1.4826 x MAD) of a (z, ...) sample, shaped
    (z, 1, 1)."""
    flat = sample.reshape(sample.shape[0], -1)
    bg = np.median(flat, axis=1)
    mad = np.median(np.abs(flat - bg[:, None]), axis=1) * 1.4826
    mad = np.maximum(mad, max(float(np.median(mad)) * 0.1, 1e-6))
    return bg[:, None, None].astype(np.float32), mad[:, None, None].astype(np.float32)


def _box_max(a: np.ndarray, size) -> np.ndarray:
    """``scipy.ndimage.maximum_filter(a, size=size, mode="nearest")`` for odd sizes: the
    maximum over a box, one axis at a time, each by doubling windows (maxima of two windows
    offset by their width), about three times faster than scipy's running maximum.

    Examples
    --------
    >>> from scipy import ndimage as ndi
    >>> a = np.random.default_rng(0).random((6, 40, 33)).astype(np.float32)
    >>> bool(np.array_equal(_box_max(a, (3, 25, 7)),
    ...                     ndi.maximum_filter(a, size=(3, 25, 7), mode="nearest")))
    True
    """
    src = a
    for axis, w in enumerate(size):
        r = w // 2
        if r == 0:
            continue
        pad = [(0, 0)] * a.ndim
        pad[axis] = (r, r)
        a = np.pad(a, pad, mode="edge")
        lead = (slice(None),) * axis
        span = 1  # `a` holds the maxima over windows of `span` from each position
        while 2 * span <= w:
            a = np.maximum(a[lead + (slice(None, -span),)], a[lead + (slice(span, None),)])
            span *= 2
        if span < w:
            a = np.maximum(a[lead + (slice(None, span - w),)], a[lead + (slice(w - span, None),)])
    return a.copy() if a is src else a  # never the input itself: callers scale it in place


def _gaussian_at(img: np.ndarray, at: np.ndarray, sigma_vox) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(img, sigma_vox)`` at voxels `at` (n, ndim) only (float32;
    the same kernel and edge mode, summed in float64): for a few voxels of a large image.

    Examples
    --------
    >>> from scipy import ndimage as ndi
    >>> img = np.random.default_rng(0).random((4, 30, 30)).astype(np.float32)
    >>> at = np.array([[0, 0, 0], [2, 15, 29], [3, 7, 8]])
    >>> full = ndi.gaussian_filter(img, (0, 1.2, 2.0))[tuple(at.T)]
    >>> bool(np.allclose(_gaussian_at(img, at, (0, 1.2, 2.0)), full, atol=1e-6))
    True
    """
    at = np.asarray(at)
    weights, offsets = np.ones(1), np.zeros((1, img.ndim), int)
    for a, sd in enumerate(sigma_vox):
        if sd <= 0:
            continue
        r = int(4.0 * sd + 0.5)  # scipy's radius at its default truncate
        x = np.arange(-r, r + 1)
        w = np.exp(-0.5 * (x / sd) ** 2)
        weights = np.outer(weights, w / w.sum()).ravel()
        o = np.zeros((len(x), img.ndim), int)
        o[:, a] = x
        offsets = (offsets[:, None] + o[None]).reshape(-1, img.ndim)
    out = np.empty(len(at), np.float32)
    n = img.shape
    for s in range(0, len(at), 4096):
        idx = at[s:s + 4096, None] + offsets[None]
        # scipy's 'reflect' edge: (c b a | a b c | c b a)
        idx = np.where(idx < 0, -idx - 1, np.where(idx >= n, 2 * np.asarray(n) - idx - 1, idx))
        out[s:s + 4096] = img[tuple(np.clip(idx, 0, np.asarray(n) - 1).transpose(2, 0, 1))
                              ] @ weights
    return out


def _sigma_vox(sigma_um, vs):
    s = np.broadcast_to(np.asarray(sigma_um, float), (3,))
    return tuple(si / v for si, v in zip(s, vs))


def _branch_ends(summ):
    """Node ids at the two ends of every branch of a skan summary, and every node's degree."""
    src, dst = summ["node_id_src"].to_numpy(), summ["node_id_dst"].to_numpy()
    return src, dst, np.bincount(np.concatenate([src, dst]))


def _nearest_zero(a: np.ndarray, sampling) -> tuple[np.ndarray, np.ndarray]:
    """Index (int32, shape (3, ...)) of the nearest zero of `a` for every voxel, and the
    distance to it (um, float32). The distances are computed a slice at a time: scipy's own
    step holds about 40 bytes per voxel at once. Where `a` has no zero (a chunk that no
    centre line crosses), every distance is infinite."""
    from scipy import ndimage as ndi

    if a.all():  # scipy would return indices of -1
        return np.zeros((3, *a.shape), np.int32), np.full(a.shape, np.inf, np.float32)
    near = np.empty((3, *a.shape), np.int32)
    ndi.distance_transform_edt(a, sampling=sampling, return_distances=False,
                               return_indices=True, indices=near)
    dist = np.empty(a.shape, np.float32)
    yy, xx = np.arange(a.shape[1])[:, None], np.arange(a.shape[2])[None, :]
    for z in range(a.shape[0]):
        d2 = ((near[0, z] - z) * sampling[0]) ** 2
        d2 += ((near[1, z] - yy) * sampling[1]) ** 2
        d2 += ((near[2, z] - xx) * sampling[2]) ** 2
        dist[z] = np.sqrt(d2)
    return near, dist


def _mask_threshold(zs_sample: np.ndarray, p: DetectionParams, spacing) -> float:
    """Dendrite mask threshold in noise SDs: ``dendrite_threshold``, or ``otsu_fraction`` of
    Otsu's threshold of a sample of the z-scored smoothed stack where that is higher.

    `zs_sample` is a lattice of the stack (voxels `spacing` um apart). Thick structures (a
    soma, large blobs: thicker than ``max_dendrite_radius_um`` under the first threshold) are
    left out of Otsu's split, which they would otherwise make between background and
    themselves, with the dendrites below it."""
    import edt
    from skimage.filters import threshold_otsu

    def threshold(values):
        if p.otsu_fraction <= 0 or not len(values) or values.min() == values.max():
            return p.dendrite_threshold
        return max(p.dendrite_threshold, p.otsu_fraction * float(threshold_otsu(values)))

    first = threshold(zs_sample.ravel())
    mask = zs_sample > first
    if p.otsu_fraction <= 0 or mask.all() or not mask.any():
        return first
    thick = _thick(mask, edt.edt(mask, anisotropy=spacing, parallel=1), spacing, p)
    return first if thick is None else threshold(zs_sample[~thick])


def _thick(mask: np.ndarray, dist: np.ndarray, vs, p: DetectionParams):
    """The voxels of `mask` that belong to thick structures (soma, blobs), or None where there
    are none: those deeper inside than ``max_dendrite_radius_um`` (`dist`: distance to the
    mask's edge, um) and every mask voxel within that radius and a voxel of them (in um: a
    dilation by steps of one voxel reaches less far along the diagonals, and left a rim of
    a soma that was traced as a dendrite)."""
    import edt

    core = dist > p.max_dendrite_radius_um
    if not core.any():
        return None
    reach = edt.edt(~core, anisotropy=vs, parallel=1)
    return mask & (reach <= p.max_dendrite_radius_um + max(vs))


def _local_threshold(zs: np.ndarray, vs, threshold: float, p: DetectionParams):
    """Each voxel's mask threshold (noise SDs): the global `threshold` or, where lower,
    ``local_threshold_fraction`` of the brightest smoothed value `zs` within
    :data:`LOCAL_REACH_UM`, never under ``dendrite_threshold``. A dendrite much dimmer than the
    brightest ones in the field lies under a global threshold (Otsu's split of the whole stack)
    but stands out of its own surroundings."""
    if p.local_threshold_fraction <= 0 or threshold <= p.dendrite_threshold:
        return np.float32(threshold)
    size = [2 * int(round(LOCAL_REACH_UM / v)) + 1 for v in vs]
    local = _box_max(zs, size)
    local *= p.local_threshold_fraction
    return np.clip(local, p.dendrite_threshold, threshold, out=local)


def _tile_mask(zs: np.ndarray, tile: Tile, shape, vs, threshold: float, p: DetectionParams):
    """A tile's dendrite mask (soma and blobs removed) and, at its mask voxels, the distance
    to the mask's edge (um), the brightness `zs` and the mask's threshold there
    (:func:`_local_threshold`), as (mask, global flat index, distance, brightness,
    threshold)."""
    import edt

    local = _local_threshold(zs, vs, threshold, p)
    mask = zs > local
    # the exact distance transform (seung-lab's edt: the same values as scipy's, about 7 times
    # faster); where a tile has no background voxel, everything is far inside
    dist = (edt.edt(mask, anisotropy=vs, parallel=1) if not mask.all()
            else np.full(mask.shape, np.inf, np.float32))
    # Soma and blobs: remove voxels deep inside thick structures, and their surroundings.
    thick = _thick(mask, dist, vs, p)
    if thick is not None:
        mask &= ~thick
    core = mask[tile.inner].copy()  # not a view, which would keep the extent's mask alive
    where = np.nonzero(core)
    flat = np.ravel_multi_index(
        tuple(w + c for w, c in zip(where, (0, tile.core[0].start, tile.core[1].start))), shape)
    local = np.broadcast_to(local, zs.shape)
    return (core, flat, dist[tile.inner][where].astype(np.float32),
            zs[tile.inner][where].astype(np.float32), local[tile.inner][where].astype(np.float32))


def _trace_dendrites(mask: np.ndarray, edt_at, vs, p: DetectionParams, brightness=None,
                     threshold: float = np.inf, bright_at=None, thr_at=None):
    """Centre lines (list of (n,3) um arrays), the mask without small pieces and which centre
    lines make up each dendrite (:func:`_junction_chains`), from the dendrite mask;
    ``edt_at(index)`` gives the distance to the mask's edge at voxels (n, 3), and
    ``brightness(box)`` the smoothed image in noise SDs in a box (slices), where gaps are
    bridged by paths at least half the mask's `threshold` bright (:func:`_bridge_gaps`);
    ``bright_at(index)``, the same at mask voxels (NaN elsewhere), tells dendrites from
    out-of-focus haze (:func:`_drop_haze`)."""
    from scipy import ndimage as ndi
    from skimage.morphology import skeletonize
    import skan

    try:  # 2 bytes a voxel where the components are few enough, as they usually are
        lab = np.empty(mask.shape, np.uint16)
        n = ndi.label(mask, output=lab)
    except RuntimeError:  # more than 65535 components
        del lab
        lab, n = ndi.label(mask)
    if n:  # a slice at a time: np.bincount and indexing would copy the labels to int64
        sizes = sum(np.bincount(lab[z].ravel(), minlength=n + 1) for z in range(len(lab)))
        keep = sizes >= p.min_dendrite_length_um / vs[1] * 2
        keep[0] = False
        mask = np.empty(lab.shape, bool)
        for z in range(len(lab)):
            mask[z] = keep[lab[z]]
    del lab
    # A skeleton stops about a radius short of the mask's end, and where a dendrite leaves the
    # field sideways that end is the stack's edge: the mask is carried on beyond the edges for
    # the skeleton, so that it runs to the edge (else the stretch left there reads as a spine).
    # Not beyond the top and bottom, along which dendrites often run.
    pad = [(0, 0)] + [(k, k) for k in np.ceil(p.max_dendrite_radius_um / np.asarray(vs[1:]))
                      .astype(int) + 1]
    skel = skeletonize(np.pad(mask, pad, mode="edge"))[
        tuple(slice(a, a + n) for (a, _), n in zip(pad, mask.shape))]
    paths = []
    if not skel.any():
        return paths, mask, []
    sk = skan.Skeleton(skel, spacing=vs)
    for _ in range(6):
        summ = skan.summarize(sk, separator="_")
        src, dst, deg = _branch_ends(summ)
        junction = np.where(deg[src] > 1, src, dst)
        # a tip branch is a spine where it reaches no further from the dendrite's centre line
        # (the junction) than the longest spine from its surface: measured straight, as the
        # skeleton's path staircases between slices (a 2.6 um spine read 5 um along its path)
        radius = edt_at(np.round(sk.coordinates[junction]).astype(int))
        tips = ((summ["branch_type"] == 1) & (summ["euclidean_distance"]
                                              < p.max_spine_length_um + radius)).to_numpy().copy()
        # Where a dendrite ends just past a side branch, the end is a short tip too: of the
        # short tips at a junction with only one other branch, keep the one that continues
        # the dendrite (:func:`_continuation`).
        for node in np.unique(junction[tips]):
            at = np.flatnonzero(tips & (junction == node))
            if deg[node] - len(at) == 1:
                other = np.flatnonzero(~tips & ((src == node) | (dst == node)))
                tips[_continuation(sk, summ, node, at, other, vs)] = False
        # A hole in the mask (a spine bent back to the shaft, two heads touching) closes a
        # ring round it: of each short cycle the dimmest branch goes (:func:`_short_cycles`).
        strength = None if bright_at is None else (
            lambda i: np.nanmedian(bright_at(np.round(sk.path_coordinates(i)).astype(int))))
        drop = tips | _short_cycles(src, dst, summ["branch_distance"].to_numpy(),
                                    4 * p.max_spine_length_um, strength)
        if not drop.any():
            break
        sk = _prune_paths(sk, np.flatnonzero(drop))
        if sk.n_paths == 0:
            return paths, mask, []
    summ = skan.summarize(sk, separator="_")
    # whole skeletons shorter than a dendrite (puncta, noise, clusters of blobs) are not dendrites
    total = summ.groupby("skeleton_id")["branch_distance"].transform("sum").to_numpy()
    src, dst, deg = _branch_ends(summ)
    lengths = summ["branch_distance"].to_numpy()
    branches = [(sk.path_coordinates(i) * np.asarray(vs), (src[i], dst[i]), lengths[i])
                for i in range(sk.n_paths)
                if total[i] >= p.min_dendrite_length_um and lengths[i] >= 2 * vs[1]]
    if brightness is not None and p.max_gap_um > 0:
        branches = _bridge_gaps(branches, deg, brightness, vs, p.max_gap_um, 0.5 * threshold)
    if bright_at is not None:
        branches = _drop_haze(branches, bright_at, vs, threshold, thr_at=thr_at,
                              brightness=brightness)
    nodes = np.unique([b[1] for b in branches]) if branches else np.zeros(0, int)
    radius = dict(zip(nodes, edt_at(np.round(sk.coordinates[nodes]).astype(int))))
    chains = _junction_chains([b[0] for b in branches], [b[1] for b in branches],
                              np.array([b[2] for b in branches]), deg, radius)
    top = (np.asarray(mask.shape) - 1) * np.asarray(vs)
    for pts, (first, last), _ in branches:
        # A skeleton stops about one radius short of a free end: extend tips by their radius.
        # Where the end was a spine, cut off, the dendrite is carried on along its direction
        # to the mask's end.
        for end, node in ((0, first), (-1, last)):
            if deg[node] != 1 or len(pts) <= 2:
                continue
            line = pts if end == 0 else pts[::-1]  # from this free end inwards
            cut = 0 if bright_at is None else _end_spine(line, bright_at, vs,
                                                         p.max_spine_length_um)
            line = line[cut:]
            tip = line[0]
            # the direction over the last few points, or where the end was cut over
            # CONTINUE_UM (the last few still bend towards the spine)
            inner = line[_along(line, CONTINUE_UM) if cut else min(4, len(line) - 1)]
            d = (tip - inner) / max(np.linalg.norm(tip - inner), 1e-9)
            if cut:  # in steps of half a pixel, at most CONTINUE_UM
                step = 0.5 * vs[1]
                walk = np.clip(tip + np.outer(np.arange(1, CONTINUE_UM / step + 1) * step, d),
                               0, top)
                inside = mask[tuple(np.round(walk / np.asarray(vs)).astype(int).T)]
                n_in = len(inside) if inside.all() else int(np.argmin(inside))
                new = walk[n_in - 1] if n_in else tip
            else:
                r = edt_at(np.round(tip / np.asarray(vs)).astype(int)[None])[0]
                new = np.clip(tip + d * r, 0, top)
            line = np.vstack([new[None], line])
            pts = line if end == 0 else line[::-1]
        paths.append(pts)
    return paths, mask, chains


def _prune_paths(sk, indices):
    """``sk.prune_paths(indices)`` (skan), the skeleton thinned again only within
    ``PRUNE_MARGIN_PX`` voxels of the removed paths, where it can change, rather than as a
    whole (0.4-0.6 s a pass on a 70 x 512 x 512 mask)."""
    from scipy.sparse.csgraph import connected_components
    import skan
    from skimage.morphology import skeletonize

    img = sk.skeleton_image.copy()
    lo, hi = [], []
    for i in indices:
        ids = sk.path(i)
        at = np.round(sk.coordinates[ids]).astype(int)
        img[tuple(at[sk.degrees[ids] <= 2].T)] = 0
        lo.append(at.min(0)), hi.append(at.max(0) + 1)
    m = PRUNE_MARGIN_PX + 1  # one voxel more each side than is written back (below)
    lo = np.maximum(np.array(lo) - m, 0)
    hi = np.minimum(np.array(hi) + m, img.shape)
    while True:  # overlapping boxes are thinned as one, as they would be in the whole image
        n, group = connected_components(
            np.all((lo[:, None] < hi[None]) & (hi[:, None] > lo[None]), axis=2), directed=False)
        if n == len(lo):
            break
        lo = np.array([lo[group == k].min(0) for k in range(n)])
        hi = np.array([hi[group == k].max(0) for k in range(n)])
    for a, b in zip(lo, hi):
        thin = skeletonize(img[tuple(map(slice, a, b))])
        # the box's faces cut the skeleton, which can make a junction voxel on them look
        # removable: those inside the image are not written back
        a1, b1 = a + (a > 0), b - (b < img.shape)
        img[tuple(map(slice, a1, b1))] = thin[tuple(map(slice, a1 - a, b1 - a))]
    return skan.Skeleton(img, spacing=sk.spacing)


def _short_cycles(src: np.ndarray, dst: np.ndarray, length: np.ndarray, limit: float,
                  strength=None) -> np.ndarray:
    """Which branches (node ids `src`, `dst`, `length` in um) to drop so that no cycle of the
    graph is at most `limit` um long: taken strongest first (``strength(i)``, else the
    shortest), a branch that closes such a cycle with those kept before it is dropped, so
    each short cycle loses its weakest branch. Longer cycles (dendrites that cross twice) are
    kept.

    Two branches between nodes 0 and 1 (3 and 5 um: the longer goes), a ring at node 1 and a
    third branch between 0 and 1 that makes a long cycle (kept):

    >>> src, dst = np.array([0, 1, 0, 1, 0]), np.array([1, 2, 1, 1, 1])
    >>> _short_cycles(src, dst, np.array([3.0, 9.0, 5.0, 4.0, 20.0]), 12.0).tolist()
    [False, False, True, True, False]
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components, dijkstra

    drop = np.zeros(len(src), bool)
    nodes, at = np.unique(np.r_[src, dst], return_inverse=True)
    a, b = at[:len(src)], at[len(src):]
    n = len(nodes)
    comp = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)),
                                directed=False)[1]
    cyclic = np.bincount(comp[a], minlength=n) >= np.bincount(comp, minlength=n)
    candidates = np.flatnonzero(cyclic[comp[a]])  # branches of graphs with a cycle
    if not len(candidates):
        return drop
    key = (-np.array([strength(i) for i in candidates]) if strength is not None
           else length[candidates])
    parent = np.arange(n)

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    kept = []
    for i in candidates[np.argsort(key, kind="stable")]:
        ra, rb = root(a[i]), root(b[i])
        if ra != rb:
            parent[ra] = rb
        else:  # a cycle: how long is the way round through the branches kept?
            k = np.array(kept, int)
            k = k[np.argsort(length[k])]  # of parallel branches the shortest (csr sums them)
            k = k[np.unique(np.c_[np.minimum(a[k], b[k]), np.maximum(a[k], b[k])], axis=0,
                            return_index=True)[1]]
            graph = coo_matrix((length[k], (a[k], b[k])), shape=(n, n)).tocsr()
            way = 0.0 if a[i] == b[i] else dijkstra(
                graph, directed=False, indices=a[i], limit=limit)[b[i]]
            if way + length[i] <= limit:
                drop[i] = True
                continue
        kept.append(i)
    return drop


def _along(pts: np.ndarray, um: float) -> int:
    """Index of the first point of the line `pts` at least `um` along it from its start (the
    last point where the line is shorter)."""
    run = np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))
    return min(int(np.searchsorted(run, um)) + 1, len(pts) - 1)


def _end_spine(pts: np.ndarray, bright_at, vs, reach_um: float) -> int:
    """How many points at the start of the centre line `pts` (um, from a free end inwards)
    are a spine rather than the dendrite: where a dendrite ends just past a spine, its skeleton
    often runs on into the spine, with no separate tip to prune. The end is a spine where,
    within `reach_um` of it, the line dims below ``END_SPINE_DIM[0]`` of the dendrite's median
    brightness (``bright_at(index)``, a neck) and the stretch out to there turns away from the
    dendrite further in by more than ``END_SPINE_COS``; it is cut where the line is last at
    least ``END_SPINE_DIM[1]`` as bright. 0 where the end is the dendrite's (one that fades
    out of focus runs on straight)."""
    if len(pts) < 4:
        return 0
    run = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    b = bright_at(np.round(pts / np.asarray(vs)).astype(int))
    ref = np.nanmedian(b)
    near = np.flatnonzero(run <= reach_um)
    if not (ref > 0) or np.all(np.isnan(b[near])):
        return 0
    dip = near[np.nanargmin(b[near])]
    if not b[dip] < END_SPINE_DIM[0] * ref:
        return 0
    bright = np.flatnonzero((np.arange(len(pts)) > dip) & (b >= END_SPINE_DIM[1] * ref))
    if not len(bright):
        return 0
    cut = int(bright[0])
    inner = pts[cut + _along(pts[cut:], CONTINUE_UM)]
    out, dend = pts[cut] - pts[0], inner - pts[cut]
    cos = out @ dend / max(np.linalg.norm(out) * np.linalg.norm(dend), 1e-9)
    return cut if cos < END_SPINE_COS and len(pts) - cut >= 2 else 0


def _vertex(a, b, c):
    """Where the parabola through ``(-1, a), (0, b), (1, c)`` peaks (steps from the middle
    point, within half a step either way); 0 where it has no maximum.

    >>> round(float(_vertex(1.0, 2.0, 1.5)), 3)
    0.167
    """
    curve = np.asarray(a - 2 * b + c)
    return np.where(curve < 0, np.clip(0.5 * (a - c) / np.where(curve < 0, curve, -1.0),
                                       -0.5, 0.5), 0.0)


def _ridge(profiles: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The offset of the maximum nearest the middle of each profile (rows), reached by
    climbing from the middle and refined by a parabola; 0 where the climb ends at either end
    (no ridge within reach).

    Examples
    --------
    >>> s = np.linspace(-1, 1, 21)
    >>> _ridge(np.array([np.exp(-(s - 0.33) ** 2), 3 * s, s ** 2]), s).round(2).tolist()
    [0.33, 0.0, 0.0]
    """
    n, rows = profiles.shape[1], np.arange(len(profiles))
    j = np.full(len(profiles), n // 2)
    for _ in range(n):
        up = profiles[rows, np.minimum(j + 1, n - 1)] > profiles[rows, j]
        down = profiles[rows, np.maximum(j - 1, 0)] > profiles[rows, j]
        move = np.where(up, 1, np.where(down, -1, 0))
        if not move.any():
            break
        j += move
    end = (j == 0) | (j == n - 1)
    j = np.clip(j, 1, n - 2)
    sub = _vertex(*(profiles[rows, j + k] for k in (-1, 0, 1)))
    return np.where(end, 0.0, offsets[j] + sub * (offsets[1] - offsets[0]))


def _recentre(lines: list, sample, *, step_um: float = CENTERLINE_STEP_UM) -> list:
    """Centre lines (resampled `step_um` apart by :func:`smooth_polyline`) moved across their
    dendrite in the image plane onto the ridge of the smoothed image, ``sample(points)``
    (:data:`RECENTRE_UM`).

    A skeleton of the thresholded mask runs off the shaft's middle where the mask widens on one
    side (a spine at its edge, a bulge) and steps by whole working pixels; the shaft model is
    read from the centre line in 0.2 um bins, and spines are measured from it.
    """
    from scipy.ndimage import median_filter

    reach, window, smooth = RECENTRE_UM
    offsets = np.arange(-reach, reach + 1e-9, 0.04)
    normals, points = [], []
    for line in lines:
        n = _normals(line)
        normals.append(n)
        points.append(line[:, None, :] + offsets[None, :, None] * n[:, None, :])
    values = sample(np.concatenate(points).reshape(-1, 3)) if points else np.zeros(0)
    out, at = [], 0
    for line, n in zip(lines, normals):
        prof = values[at:at + len(line) * len(offsets)].reshape(len(line), len(offsets))
        at += prof.size
        if len(line) < 5:
            out.append(line)
            continue
        move = median_filter(_ridge(prof, offsets), size=2 * int(window / step_um / 2) + 1,
                             mode="nearest")
        out.append(smooth_polyline(line + move[:, None] * n, smooth, step_um))
    return out


def _drop_haze(branches: list, bright_at, vs, threshold: float, *, thr_at=None,
               brightness=None) -> list:
    """The branches ``(points in um, (first, last) node ids, length)`` less out-of-focus haze:
    pieces of skeleton on their own (branches connected to each other only) whose centre lines
    are nowhere clearly brighter than the mask's threshold (their median brightness,
    ``bright_at(index)``, below ``HAZE_RATIO`` times the median of the threshold there,
    ``thr_at(index)``, else the global `threshold`), and pieces traced under a lowered
    threshold that are not dim dendrites (:func:`_dim_dendrite`)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not branches:
        return branches
    ends = np.array([b[1] for b in branches])
    nodes, at = np.unique(ends, return_inverse=True)
    n_b, n = len(branches), len(branches) + len(nodes)
    links = coo_matrix((np.ones(2 * n_b), (np.repeat(np.arange(n_b), 2), n_b + at.ravel())),
                       shape=(n, n))
    piece = connected_components(links, directed=False)[1][:n_b]
    index = [np.round(b[0] / np.asarray(vs)).astype(int) for b in branches]
    value = [bright_at(i) for i in index]
    top = np.float32(threshold)  # as the thresholds at the voxels were stored
    local = [thr_at(i) if thr_at is not None else np.full(len(i), top) for i in index]
    haze = set()
    for k in np.unique(piece):
        members = np.flatnonzero(piece == k)
        v = np.concatenate([value[i] for i in members])
        t = np.concatenate([local[i] for i in members])
        inside = ~np.isnan(v)  # bridges across dim gaps lie outside the mask
        if not inside.any():
            continue
        own = np.median(t[inside])
        if np.median(v[inside]) < HAZE_RATIO * own:
            haze.add(k)
        elif own < top and not _dim_dendrite(
                [branches[i] for i in members], ends[members], brightness, vs):
            haze.add(k)
    return [b for b, k in zip(branches, piece) if k not in haze]


def _dim_dendrite(branches: list, ends: np.ndarray, brightness, vs) -> bool:
    """Whether a piece of skeleton traced under a lowered threshold, its `branches` (points
    in um, ..., length) with their (first, last) node ids `ends`, is a dim dendrite
    (:data:`DIM_MIN_LENGTH_UM`, :data:`DIM_SIDE`): hazy patches and neuropil give short curls,
    rings and wide ridges. ``brightness(box)`` is the smoothed image in noise SDs."""
    from scipy import ndimage as ndi

    if (sum(b[2] for b in branches) < DIM_MIN_LENGTH_UM
            or len(branches) >= len(np.unique(ends))):  # a graph with a cycle
        return False
    centre, side = [], []
    for line in (b[0] for b in branches):
        normal = DIM_SIDE[0] * _normals(line)
        for k in range(0, len(line), 100):  # in short runs: a box over a whole line is large
            q = line[k:k + 100]
            at = np.vstack([q, q + normal[k:k + 100], q - normal[k:k + 100]]) / np.asarray(vs)
            lo = np.maximum(np.floor(at.min(0)).astype(int) - 1, 0)
            hi = np.ceil(at.max(0)).astype(int) + 2
            img = brightness(tuple(slice(a, b) for a, b in zip(lo, hi)))
            value = ndi.map_coordinates(img, (at - lo).T, order=1, mode="nearest")
            n = len(q)
            centre.append(value[:n])
            side.append(np.minimum(value[n:2 * n], value[2 * n:]))
    return np.median(np.concatenate(side)) <= DIM_SIDE[1] * np.median(np.concatenate(centre))


def _normals(line: np.ndarray) -> np.ndarray:
    """Unit normals (n, 3) of a line (n, 3) in the image plane (zero where it runs along z)."""
    t = np.gradient(line, axis=0) if len(line) > 1 else np.zeros_like(line)
    n = np.column_stack([np.zeros(len(t)), -t[:, 2], t[:, 1]])
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return np.where(norm > 1e-9, n / np.maximum(norm, 1e-9), 0.0)


def _continuation(sk, summ, node, tips: np.ndarray, other: np.ndarray, vs) -> int:
    """Of the short tip branches `tips` at junction `node`, the one that continues the
    dendrite arriving there along `other`: the longest, unless it turns away by more than
    ``CONTINUE_COS[0]`` (cosine) while another at least half as long goes on within
    ``CONTINUE_COS[1]``. A spine near a dendrite's end is often longer than the stretch of
    dendrite past it, and taking it for the dendrite lost the spine and made the end a spine."""
    length = summ["branch_distance"].to_numpy()
    longest = tips[np.argmax(length[tips])]
    if len(tips) < 2 or len(other) != 1:
        return longest
    here = sk.coordinates[node] * np.asarray(vs)

    def heading(branch):  # unit vector from the junction to the branch's point 2 um away
        c = sk.path_coordinates(branch) * np.asarray(vs)
        if np.linalg.norm(c[0] - here) > np.linalg.norm(c[-1] - here):
            c = c[::-1]
        q = c[_along(c, CONTINUE_UM)] - here
        return q / max(np.linalg.norm(q), 1e-9)

    arriving = -heading(other[0])
    # the tips at least half as long as the longest (which is among them): their cosines
    cos = {b: heading(b) @ arriving for b in tips[length[tips] >= 0.5 * length[longest]]}
    best = max(cos, key=cos.get)
    if cos[longest] < CONTINUE_COS[0] and cos[best] > CONTINUE_COS[1]:
        return best
    return longest


def _bridge_gaps(branches: list, deg, brightness, vs, max_gap_um: float,
                 min_bright: float) -> list:
    """Join branches whose free ends face each other across a gap of at most `max_gap_um`
    where the brightest path between the ends (:class:`skimage.graph.MCP_Geometric` through
    ``brightness``, noise SDs) is nowhere dimmer than `min_bright`: a dendrite that runs dimmer
    than the mask's threshold for a stretch. Ends face each other where both turn less than
    about 45° towards the other (z counted at a third, for the PSF's elongation).

    `branches` and the result are lists of (points in um, (first, last) node ids, length)."""
    from scipy.spatial import cKDTree
    from skimage.graph import MCP_Geometric

    vs = np.asarray(vs, float)

    def tip(pts, at_start):  # the end point and its outward direction over about 2 um
        q = pts if at_start else pts[::-1]
        return q[0], q[0] - q[_along(q, 2.0)]

    branches = list(branches)
    free = [(b, k == 0) for b, (_, ends, _) in enumerate(branches) for k, node in enumerate(ends)
            if deg[node] == 1]
    tips = [tip(branches[b][0], s) for b, s in free]
    point = {end: t[0] for end, t in zip(free, tips)}  # joining moves no end
    pairs = []
    near = cKDTree(np.array([t[0] for t in tips]).reshape(-1, 3)).query_pairs(max_gap_um)
    for m, n in sorted(near):
        (pa, da), (pb, db) = tips[m], tips[n]
        gap = pb - pa
        dist = float(np.linalg.norm(gap))
        if free[m][0] == free[n][0] or dist == 0:
            continue
        g, u, v = gap * AXIAL_SCALE, da * AXIAL_SCALE, db * AXIAL_SCALE
        if (u @ g >= 0.7 * np.linalg.norm(u) * np.linalg.norm(g)
                and -(v @ g) >= 0.7 * np.linalg.norm(v) * np.linalg.norm(g)):
            pairs.append((dist, free[m], free[n]))
    where = {(b, s): (b, s) for b, s in free}  # a free end -> (branch now holding it, at start)
    for _, end_a, end_b in sorted(pairs):
        if where[end_a] is None or where[end_b] is None or where[end_a][0] == where[end_b][0]:
            continue  # an end already joined, or both ends now of one branch
        (a, a_start), (b, b_start) = where[end_a], where[end_b]
        pa, pb = point[end_a], point[end_b]
        # the brightest route between the two ends, in a box 2 um (z: 3 um) wider than the gap
        ia, ib = np.round(pa / vs).astype(int), np.round(pb / vs).astype(int)
        margin = np.ceil(np.array([3.0, 2.0, 2.0]) / vs).astype(int)
        lo = np.maximum(np.minimum(ia, ib) - margin, 0)
        img = brightness(tuple(slice(lo[k], max(ia[k], ib[k]) + margin[k] + 1) for k in range(3)))
        ia, ib = (tuple(np.clip(i - lo, 0, np.asarray(img.shape) - 1)) for i in (ia, ib))
        mcp = MCP_Geometric(1 / (1 + np.clip(img, 0, None)), sampling=tuple(vs))
        mcp.find_costs([ia], [ib])
        route = np.asarray(mcp.traceback(ib))
        if img[tuple(route.T)].min() < min_bright:
            continue
        pts_a, (a0, a1), len_a = branches[a]
        pts_b, (b0, b1), len_b = branches[b]
        head = pts_a[::-1] if a_start else pts_a  # ending at the gap
        tail = pts_b if b_start else pts_b[::-1]  # starting at the gap
        bridge = (route + lo) * vs
        joined = np.vstack([head, bridge[1:-1], tail])
        first, last = (a1 if a_start else a0), (b1 if b_start else b0)
        keep_end = {(a, not a_start): True, (b, not b_start): False}  # far ends: at start?
        branches[a] = (joined, (first, last), len_a + len_b + np.linalg.norm(
            np.diff(bridge, axis=0), axis=1).sum())
        branches[b] = None
        for (c, s), holder in list(where.items()):
            if holder in keep_end:
                where[(c, s)] = (a, keep_end[holder])
            elif holder is not None and holder[0] in (a, b):
                where[(c, s)] = None
    return [b for b in branches if b is not None]


def _junction_chains(pts: list, ends: list, lengths, deg, radius) -> list:
    """Which branches make up each dendrite. A branch between two junctions closer than the sum
    of the dendrite's diameters there (where dendrites cross or meet, the skeleton splits one
    junction into several, with a branch of a few voxels between them) is part of the
    neighbouring branch it continues best, or of another branch between the same junctions;
    every other branch is a dendrite of its own.

    `pts` and `ends` give each branch's points (um) and its (first, last) node ids;
    `radius` the mask's radius (um) at every node. Returns one ``(drawn, members)`` per
    dendrite: the branches along its centre line in order as (index, reversed), and all of
    its branches."""
    chains = {i: ([(i, False)], [i], tuple(e)) for i, e in enumerate(ends)}

    def inwards(c, node):  # direction of chain c from its end at node inwards
        drawn, _, (first, _) = chains[c]
        k, rev = drawn[0] if first == node else drawn[-1]
        q = pts[k][::-1] if rev != (first != node) else pts[k]
        return q[min(4, len(q) - 1)] - q[0]

    def flipped(drawn):
        return [(k, not rev) for k, rev in drawn[::-1]]

    for i in sorted(range(len(ends)), key=lambda i: lengths[i]):
        a, b = ends[i]
        if deg[a] < 2 or deg[b] < 2 or lengths[i] >= 2 * (radius[a] + radius[b]):
            continue
        drawn, members, _ = chains[i]
        twins = [c for c in chains if c != i and set(chains[c][2]) == {a, b}]
        if twins:  # another branch joins the same junctions: this one adds no line
            c_drawn, c_members, c_ends = chains[twins[0]]
            chains[twins[0]] = (c_drawn, c_members + members, c_ends)
            del chains[i]
            continue
        best, best_cos = None, -2.0
        for node in (a, b):
            u = inwards(i, node)
            for c in chains:
                if c != i and node in chains[c][2]:
                    v = inwards(c, node)
                    cos = -float(u @ v) / max(np.linalg.norm(u) * np.linalg.norm(v), 1e-12)
                    if cos > best_cos:
                        best, best_cos, at = c, cos, node
        if best is None:
            continue
        far = b if at == a else a
        out = drawn if a == at else flipped(drawn)  # from the shared node outwards
        c_drawn, c_members, (first, last) = chains[best]
        if last == at:
            chains[best] = (c_drawn + out, c_members + members, (first, far))
        else:
            chains[best] = (flipped(out) + c_drawn, members + c_members, (far, last))
        del chains[i]
    return [chains[c][:2] for c in sorted(chains)]


def _lookup(flat: np.ndarray, values: np.ndarray, shape, *, missing: float = 0.0):
    """``f(index)``: `values` at voxels (n, 3) given by their sorted flat indices; `missing`
    elsewhere."""
    def at(index):
        q = np.ravel_multi_index(tuple(np.asarray(index).T), shape)
        i = np.clip(np.searchsorted(flat, q), 0, max(len(flat) - 1, 0))
        found = (flat[i] == q) if len(flat) else np.zeros(len(q), bool)
        return np.where(found, values[i] if len(flat) else missing, missing)
    return at


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


@dataclass
class _Points:
    """Centre line points on the working grid: voxel index, dendrite (index into the paths),
    4 um stretch of dendrite, position (um) and unit tangent."""

    idx: np.ndarray
    owner: np.ndarray
    group: np.ndarray
    xyz: np.ndarray
    tan: np.ndarray


@dataclass
class _Shafts:
    """Per dendrite (index into the paths): spine heads lie outside the `edge` (um from the
    centre line: the inner edge of the shaft model's first bin below half its peak, less half
    the PSF); its surface is at `radius` (half-maximum radius, um), from which spines are
    measured; its centre line `brightness` (noise units) and its id in the tables."""

    edge: np.ndarray
    radius: np.ndarray
    brightness: np.ndarray
    ids: np.ndarray


def _centre_points(paths, shape, vs, stretch_um: float) -> _Points:
    owners, arcs, xyz, tans, idxs = [], [], [], [], []
    for i, pts in enumerate(paths):
        dense = resample_polyline(pts, min(vs) / 2)
        arc = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))])
        idx = np.round(dense / np.asarray(vs)).astype(int)
        ok = np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)
        tan = np.gradient(dense, axis=0) if len(dense) > 1 else np.zeros_like(dense)
        idxs.append(idx[ok])
        xyz.append(dense[ok])
        tans.append((tan / np.maximum(np.linalg.norm(tan, axis=1, keepdims=True), 1e-9))[ok])
        owners.append(np.full(ok.sum(), i))
        arcs.append(arc[ok])
    owner, arc = np.concatenate(owners), np.concatenate(arcs)
    _, group = np.unique(owner * 100_000 + (arc // stretch_um).astype(int), return_inverse=True)
    return _Points(np.vstack(idxs), owner, group, np.vstack(xyz), np.vstack(tans))


def _isotonic(y: np.ndarray, weight: np.ndarray, *, axis: int, increasing: bool) -> np.ndarray:
    """Weighted least-squares fit to `y` that never falls (or, with ``increasing=False``,
    never rises) along `axis`: isotonic regression of many short rows at once, as the
    max-min of the weighted means of all their stretches. Zero weights are allowed.

    Examples
    --------
    >>> _isotonic(np.array([3.0, 1, 2, 0.5]), np.array([1.0, 1, 1, 1]), axis=0,
    ...           increasing=False).tolist()
    [3.0, 1.5, 1.5, 0.5]
    """
    y = np.moveaxis(np.asarray(y, float), axis, -1)
    w = np.moveaxis(np.asarray(weight, float), axis, -1)
    shape, n = y.shape, y.shape[-1]
    y, w = y.reshape(-1, n), np.maximum(w.reshape(-1, n), 1e-6)
    if not increasing:
        y, w = y[:, ::-1], w[:, ::-1]
    out = np.empty_like(y)
    later = np.tri(n, dtype=bool).T  # [j, k]: k >= j
    rows = max(1, 2**22 // (n * n))  # ~100 MB of float64 at a time
    for s in range(0, len(y), rows):
        cw = np.pad(np.cumsum(w[s:s + rows], axis=1), ((0, 0), (1, 0)))
        cy = np.pad(np.cumsum(w[s:s + rows] * y[s:s + rows], axis=1), ((0, 0), (1, 0)))
        with np.errstate(divide="ignore", invalid="ignore"):  # k < j: not used
            # mean[r, j, k]: weighted mean of y[j..k]
            mean = (cy[:, None, 1:] - cy[:, :-1, None]) / (cw[:, None, 1:] - cw[:, :-1, None])
        mean[:, ~later] = np.inf
        low = np.minimum.accumulate(mean[:, :, ::-1], axis=2)[:, :, ::-1]  # min over k >= i
        low[:, ~later] = -np.inf
        out[s:s + rows] = low.max(axis=1)  # max over j <= i
    if not increasing:
        out = out[:, ::-1]
    return np.moveaxis(out.reshape(shape), -1, axis)


def _pack(cell: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Cell ids and float32 values as uint64s whose order is (cell, value): the cell in the
    high 32 bits, the value's bits in the low 32, flipped so that they sort as the floats do."""
    bits = np.ascontiguousarray(value, np.float32).view(np.uint32)
    bits = np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31))
    return (cell.astype(np.uint64) << np.uint64(32)) | bits


def _unpack(packed: np.ndarray) -> np.ndarray:
    """The float32 values of :func:`_pack`."""
    bits = (packed & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return np.where(bits >> 31, bits & np.uint32(0x7FFFFFFF), ~bits).view(np.float32)


def _neighbour(key: np.ndarray, up: np.ndarray, *, stride: int, n: int) -> np.ndarray:
    """The cells next to cells `key` along an axis of `n` bins that is `stride` apart in the
    key: the next one where `up`, else the one before; the cell itself at either end."""
    i = (key // stride) % n
    return np.where(up, np.where(i < n - 1, key + stride, key),
                    np.where(i > 0, key - stride, key))


class _ShaftModel:
    """The shaft alone, in cells: stretch of dendrite (4 um) x z offset (slices) x side x
    lateral distance from the centre line (0.2 um bins).

    Every voxel within reach of a centre line belongs to the cell of its nearest centre line
    point (z scaled by the PSF elongation). The model of a cell is the median intensity of its
    voxels (noise units), never rising with distance from the centre line. The two sides are
    modelled apart, so a centre line a little off the middle of the shaft (or a shaft brighter on
    one side) leaves no stripe of residual along one edge.
    """

    LAT_UM, STRETCH_UM = 0.2, 4.0

    def __init__(self, paths, shape, vs, p: DetectionParams):
        self.vs = vs
        self.reach = p.max_spine_length_um + p.max_dendrite_radius_um
        self.n_lat = int(self.reach / self.LAT_UM) + 1
        self.n_dz = int(np.ceil(p.max_spine_length_um / vs[0]))
        self.n_paths = len(paths)
        self.pts = _centre_points(paths, shape, vs, self.STRETCH_UM)
        self.n_cells = (self.pts.group.max() + 1) * (2 * self.n_dz + 1) * 2 * self.n_lat
        self.profile = self.offset = None
        self._group_owner = np.zeros(self.pts.group.max() + 1, int)
        self._group_owner[self.pts.group] = self.pts.owner

    def cells(self, tile: Tile, shape_e):
        """For a tile's extent: the voxels within reach (`region`), their cell, their z offset
        from the middle of its z bin (slices), and the centre line voxels (flat index into the
        extent, and the point drawn there)."""
        pts, vs = self.pts, self.vs
        lab = np.zeros(shape_e, np.int32)
        local = pts.idx - tile.origin
        inside = np.all((local >= 0) & (local < np.asarray(shape_e)), axis=1)
        lab[tuple(local[inside].T)] = np.flatnonzero(inside) + 1
        near, dist = _nearest_zero(lab == 0, (vs[0] / AXIAL_RATIO, vs[1], vs[2]))
        region = dist <= self.reach
        del dist
        where = np.nonzero(region)
        point = lab[tuple(near[:, where[0], where[1], where[2]])] - 1
        del near
        line = np.flatnonzero(lab)
        line_point = lab.ravel()[line] - 1
        del lab
        # position relative to the nearest centre line point, one axis at a time (memory)
        rel = [(w + o) * v - pts.xyz[point, a]
               for a, (w, o, v) in enumerate(zip(where, tile.origin, vs))]
        u = rel[0] / vs[0]
        dzb = np.clip(np.round(u).astype(int), -self.n_dz, self.n_dz)
        frac = np.where(np.abs(dzb) < self.n_dz, u - dzb, 0).astype(np.float32)
        dzb += self.n_dz
        lat = (np.hypot(rel[1], rel[2]) / self.LAT_UM).astype(np.float32)
        latb = np.minimum(lat.astype(int), self.n_lat - 1)
        # lateral position from the middle of the bin (bins), for the lateral interpolation
        lat -= latb + np.float32(0.5)
        side = (pts.tan[point, 1] * rel[2] - pts.tan[point, 2] * rel[1] > 0).astype(int)
        del rel
        key = ((pts.group[point] * (2 * self.n_dz + 1) + dzb) * 2 + side) * self.n_lat + latb
        return (region, key.astype(np.int32 if self.n_cells < 2**31 else np.int64),
                (frac, lat), (line, line_point))

    def model(self, key: np.ndarray, frac) -> np.ndarray:
        """The shaft model at voxels of cells `key` that lie ``frac = (dz, lat)`` slices above
        the middle of their z bin and lateral bins outside the middle of their lateral bin:
        interpolated linearly in z between the cell and its neighbour above or below, each at
        the mean z offset of its voxels, and laterally between the cell and its neighbour
        further out or further in, each at the middle of its bin. A centre line that runs
        between two slices would otherwise leave a ridge of residual above or below the shaft,
        whose noise peaks are not spines, and the steep edge of the shaft a step of residual
        at every lateral bin (about 2 noise SDs at 100 photons)."""
        dz, lat = frac
        near = _neighbour(key, lat > 0, stride=1, n=self.n_lat)
        y0 = self._model_z(key, dz)
        # at the first and last bin `near` is the cell itself, and the difference 0
        return y0 + (self._model_z(near, dz) - y0) * np.abs(lat)

    def _model_z(self, key: np.ndarray, dz: np.ndarray) -> np.ndarray:
        """The model of cells `key` interpolated in z at `dz` (see :meth:`model`)."""
        up = dz > self.offset[key]
        near = _neighbour(key, up, stride=2 * self.n_lat, n=2 * self.n_dz + 1)
        dx = self.offset[near] + np.where(up, 1, -1) - self.offset[key]
        y0 = self.profile[key]
        return (y0 + (self.profile[near] - y0) * (dz - self.offset[key])
                / np.where(np.abs(dx) > 1e-3, dx, np.inf)).astype(np.float32)

    def lateral(self, key: np.ndarray) -> np.ndarray:
        """Lateral distance (um, inner edge of the bin) of cells from the centre line."""
        return (key % self.n_lat) * self.LAT_UM

    def owner(self, key: np.ndarray) -> np.ndarray:
        """The dendrite (index into the paths) of cells."""
        return self._group_owner[key // (self.n_lat * 2 * (2 * self.n_dz + 1))]

    def fit(self, packed: np.ndarray, offsets) -> tuple[np.ndarray, np.ndarray]:
        """Set the model from every cell's voxels (cell and value packed by :func:`_pack`;
        sorted here in place) and their z offsets (per tile: cells, sum, count). Returns two
        shaft radii per dendrite (um): the inner edge of the first 0.2 um bin below half the
        peak (spine heads lie outside it), and the half-maximum crossing interpolated between
        bins (the radius of a filled shaft wider than the blur: its surface, diameter and dye
        concentration)."""
        total, count = np.zeros(self.n_cells), np.zeros(self.n_cells, np.int64)
        for cell, s, c in offsets:  # each tile's cells, with the sum and count of z offsets
            total[cell] += s
            count[cell] += c
        self.offset = np.where(count > 0, total / np.maximum(count, 1), 0).astype(np.float32)
        packed.sort()  # by cell, then by value: 8 bytes a voxel, where a groupby needs ~40
        start = np.searchsorted(packed, np.arange(self.n_cells + 1, dtype=np.uint64)
                                << np.uint64(32))
        count = np.diff(start)
        has = np.flatnonzero(count)
        first = start[has]
        lo = _unpack(packed[first + (count[has] - 1) // 2])
        hi = _unpack(packed[first + count[has] // 2])
        prof = np.zeros(self.n_cells, np.float32)
        prof[has] = (lo.astype(np.float64) + hi) / 2  # the median of each cell
        n_dz, n_z = self.n_dz, 2 * self.n_dz + 1
        prof = prof.reshape(-1, n_z, 2, self.n_lat)
        weight = np.zeros(self.n_cells)
        weight[has] = count[has]
        weight = weight.reshape(prof.shape)
        # never brighter further out: the closest such profile (least squares, each cell
        # weighted by its voxels) laterally, then above and below the centre line; a running
        # maximum alone would follow the noise up and lie about a noise SD too high away from
        # the shaft (synthetic stacks), where it hid dim spines.
        prof = _isotonic(prof, weight, axis=3, increasing=False).astype(np.float32)
        prof[:, n_dz:] = _isotonic(prof[:, n_dz:], weight[:, n_dz:], axis=1, increasing=False)
        prof[:, :n_dz + 1] = _isotonic(prof[:, :n_dz + 1], weight[:, :n_dz + 1], axis=1,
                                       increasing=True)
        # the running maxima mend what the fits in z undid laterally
        prof = np.maximum.accumulate(prof[..., ::-1], axis=3)[..., ::-1]
        prof[:, n_dz:] = np.maximum.accumulate(prof[:, n_dz:][:, ::-1], axis=1)[:, ::-1]
        prof[:, :n_dz + 1] = np.maximum.accumulate(prof[:, :n_dz + 1], axis=1)
        self.profile = prof.ravel()
        inplane = prof.max(axis=1).mean(axis=1)  # in-plane profile, for the shaft radius
        radii, half_max_radius = np.zeros(self.n_paths), np.zeros(self.n_paths)
        for k in range(self.n_paths):
            g = np.unique(self.pts.group[self.pts.owner == k])
            pk_ = np.median(inplane[g], axis=0) if len(g) else np.zeros(self.n_lat)
            half = np.flatnonzero(pk_ < 0.5 * pk_[0])
            radii[k] = half[0] * self.LAT_UM if len(half) else self.reach
            # where the profile crosses half its peak, between the centres of the bins around
            # it: the radius of a filled shaft wider than the blur
            i = half[0] if len(half) else self.n_lat - 1
            frac = (pk_[i - 1] - 0.5 * pk_[0]) / max(pk_[i - 1] - pk_[i], 1e-9) if i else 0.0
            half_max_radius[k] = (i - 0.5 + np.clip(frac, 0, 1)) * self.LAT_UM
        return radii, half_max_radius


def detect(stack: Stack, *, params: DetectionParams | None = None, traces: pd.DataFrame | None
           = None, return_mask: bool = False, progress: bool = False,
           chunk_um: float | None = None, threads: int | None = None) -> Detection:
    """Trace the dendrites of a stack and detect their spines.

    Parameters
    ----------
    stack : Stack
        From :func:`spinecount.io.read_stack` (or any array with its voxel size).
    params : DetectionParams, optional
        Detection parameters in micrometres; the defaults suit ordinary two-photon data.
    traces : DataFrame, optional
        Dendrite centre lines to analyse (``dendrite_id, z_um, y_um, x_um``, e.g. from
        :func:`spinecount.traces.read_traces`) instead of tracing them automatically.
    return_mask : bool
        Keep the dendrite mask in the result.
    progress : bool
        Show a progress bar per stage.
    chunk_um : float, optional
        Process the stack in overlapping lateral chunks of this size (um), with the same
        result as in one piece; the large float arrays then exist one chunk at a time. By
        default stacks of more than :data:`spinecount.chunks.AUTO_CHUNK_VOXELS` working voxels
        (for example 200 x 2048 x 2048 at 0.12 um) are processed in 64 um chunks and smaller
        ones in one piece.
    threads : int, optional
        Threads that process chunks in parallel (default: one per core).

    Returns
    -------
    Detection
        ``spines``, ``dendrites`` and ``centerlines`` tables of the column contract.

    See Also
    --------
    detect_steps : the same, one stage at a time (for progress bars and cancelling in a GUI).

    Examples
    --------
    >>> from spinecount.synthetic import make_stack
    >>> syn = make_stack(shape_um=(10, 24, 24), n_dendrites=1, branch_probability=0, seed=2)
    >>> det = detect(syn.stack)
    >>> len(det.dendrites) >= 1 and set(det.spines.columns) >= {"spine_id", "score", "type"}
    True
    """
    from tqdm.auto import tqdm

    steps = detect_steps(stack, params=params, traces=traces, return_mask=return_mask,
                         chunk_um=chunk_um, threads=threads)
    with tqdm(total=len(STAGES), desc=f"detect {stack.name}", unit="stage", leave=False,
              disable=not progress) as bar:
        while True:
            try:
                stage = next(steps)
            except StopIteration as done:
                return done.value
            bar.update(1)
            bar.set_postfix_str(stage)


def _halo_px(vs, p: DetectionParams) -> int:
    """Margin (working voxels) a tile needs for its core to come out as in one piece: the mask
    needs its smoothing, soma distance and growth; the shaft model's cells need the nearest
    centre line point of every voxel within reach of the core, and the spine stage a head-scale
    smoothing and measurements within reach of a head."""
    reach = p.max_spine_length_um + p.max_dendrite_radius_um

    def gauss(sigma_um):
        return int(4 * sigma_um / vs[1] + 0.5) + 1

    mask = (gauss(p.dendrite_smoothing_um) + 2 * int(np.ceil(p.max_dendrite_radius_um / vs[1]))
            + int(np.ceil(LOCAL_REACH_UM / vs[1])))
    spines = 2 * int(np.ceil(reach / vs[1])) + gauss(max(p.head_sigma_um, 0.3))
    return max(mask, spines) + 3


def detect_steps(stack: Stack, *, params: DetectionParams | None = None,
                 traces: pd.DataFrame | None = None, return_mask: bool = False,
                 chunk_um: float | None = None, threads: int | None = None):
    """:func:`detect` as a generator: yields the name of each stage of :data:`STAGES` as it
    finishes and returns the :class:`Detection` (the ``value`` of ``StopIteration``).

    A caller that stops iterating cancels the detection between stages.

    Examples
    --------
    >>> from spinecount.synthetic import make_stack
    >>> syn = make_stack(shape_um=(10, 24, 24), n_dendrites=1, branch_probability=0, seed=2)
    >>> list(detect_steps(syn.stack)) == list(STAGES)
    True
    """
    from scipy import ndimage as ndi
    from scipy.spatial import cKDTree

    p = params or DetectionParams()
    timings: dict[str, float] = {}
    if traces is None:
        _warm_skan()

    def lap(name, t0):
        timings[name] = round(time.perf_counter() - t0, 3)
        return time.perf_counter()

    t = time.perf_counter()
    raw = stack.data
    vz, vy, vx = stack.voxel_size
    if vz > MEASURED_Z_STEP_UM + 1e-9 or max(vy, vx) > MEASURED_PIXEL_UM + 1e-9:
        warnings.warn(
            f"{stack.name}: voxel size {vz:g} x {vy:g} x {vx:g} um (z, y, x) is coarser than "
            f"the detector is measured at (z steps up to {MEASURED_Z_STEP_UM:g} um, pixels up "
            f"to {MEASURED_PIXEL_UM:g} um): expect more missed spines (README, Measured "
            f"accuracy)", stacklevel=3)
    f = max(1, int(round(p.working_pixel_um / max(vy, vx))))
    # coarse z steps are interpolated: fz - 1 slices between each two of the stack's
    fz = max(1, int(np.ceil(vz / p.working_z_step_um - 1e-6))) if p.working_z_step_um else 1
    vs = (vz / fz, vy * f, vx * f)
    shape = ((raw.shape[0] - 1) * fz + 1 if len(raw) else 0, raw.shape[1] // f,
             raw.shape[2] // f)

    def working(ys, xs):
        """The working image (float32) of all slices in a lateral box (working pixels)."""
        return upsample_z(downsample_xy(raw[:, ys.start * f:ys.stop * f,
                                            xs.start * f:xs.stop * f], f), fz)
    # a working voxel's centre lies (f - 1) / 2 original pixels into its block
    offset = np.array([0.0, (f - 1) / 2 * vy, (f - 1) / 2 * vx])
    n_threads = threads or os.cpu_count() or 1
    # Stacks that fit in memory are cut into one strip per thread (for speed) and keep their
    # arrays between stages; larger ones are processed in chunks, recomputed where needed.
    keep = chunk_um is None and np.prod(shape) <= AUTO_CHUNK_VOXELS
    if keep:
        tile_px = (shape[1], -(-shape[2] // n_threads)) if n_threads > 1 else None
    else:
        tile_px = int((chunk_um or AUTO_CHUNK_UM) / vs[1])
    tiles = plan_tiles(shape, tile_px=tile_px, halo_px=_halo_px(vs, p))
    # id(tile) -> {name: array}: for the whole detection when the stack fits in memory, else
    # while a task on the tile runs (a chunk's cells are otherwise computed twice in a task)
    cache: dict = {}

    def kept(name, tile, make):
        arrays = cache.setdefault(id(tile), {})
        if name not in arrays:
            arrays[name] = make()
        return arrays[name]

    def forget(name, tile):
        cache.get(id(tile), {}).pop(name, None)

    def over_tiles(func):
        """``func`` on every tile (:func:`map_tiles`); a chunk's arrays are dropped after."""
        def task(tile):
            try:
                return func(tile)
            finally:
                if not keep:
                    cache.pop(id(tile), None)
        return map_tiles(task, tiles, threads=n_threads)

    def image(tile):
        return kept("img", tile, lambda: working(*tile.ext))

    def smoothed(tile, img=None):
        return kept("sm", tile, lambda: ndi.gaussian_filter(
            image(tile) if img is None else img, _sigma_vox(p.dendrite_smoothing_um, vs)))

    # statistics on a lattice (every step-th row and column): the same in chunks as in one piece
    step = max(1, int(np.ceil(np.sqrt(shape[1] * shape[2] / 200_000))))

    def lattice_samples(tile):
        img = image(tile)  # copies, not views: a view would keep the tile's array alive
        return img[tile.lattice(step)].copy(), smoothed(tile, img)[tile.lattice(step)].copy()

    samples = over_tiles(lattice_samples)
    lat_img = assemble_lattice([a for a, _ in samples], shape, step, tiles)
    lat_sm = assemble_lattice([b for _, b in samples], shape, step, tiles)
    del samples
    bg, noise = _slice_stats(lat_img)
    bg_s, noise_s = _slice_stats(lat_sm)
    threshold = _mask_threshold((lat_sm - bg_s) / noise_s, p, (vs[0], vs[1] * step, vs[2] * step))
    del lat_img, lat_sm
    t = lap("prepare", t)
    yield "prepare"

    # 1. dendrites
    mask = None
    if traces is None or return_mask:
        parts = over_tiles(lambda tl: _tile_mask((smoothed(tl) - bg_s) / noise_s, tl, shape, vs,
                                                 threshold, p))
        mask = np.zeros(shape, bool)
        for tl, (core, *_) in zip(tiles, parts):
            mask[(slice(None),) + tl.core] = core
        flat = np.concatenate([a[1] for a in parts])
        order = np.argsort(flat)
        flat = flat[order]
        edt_at, bright_at, thr_at = (
            _lookup(flat, np.concatenate([a[k] for a in parts])[order], shape, missing=m)
            for k, m in ((2, 0.0), (3, np.nan), (4, np.nan)))
        del parts, flat, order

    def brightness(box):
        """The smoothed image in noise SDs in a box (slices of working voxels)."""
        m = np.ceil(3 * p.dendrite_smoothing_um / np.asarray(vs)).astype(int)
        lo = [max(b.start - k, 0) for b, k in zip(box, m)]
        hi = [b.stop + k for b, k in zip(box, m)]
        img = working(slice(lo[1], hi[1]), slice(lo[2], hi[2]))[lo[0]:hi[0]]
        sm = ndi.gaussian_filter(img, _sigma_vox(p.dendrite_smoothing_um, vs))
        z = (sm - bg_s[lo[0]:hi[0]]) / noise_s[lo[0]:hi[0]]
        return z[tuple(slice(b.start - a, b.stop - a) for b, a in zip(box, lo))]

    def smoothed_at(points):
        """The smoothed image at `points` (um on the working grid; linear interpolation), each
        read in the tile whose core holds it."""
        idx = points / np.asarray(vs)
        cell = np.floor(idx[:, 1:] + 0.5).astype(int).clip(0, np.array(shape[1:]) - 1)

        def task(tile):
            own = np.flatnonzero(np.all([(cell[:, a] >= c.start) & (cell[:, a] < c.stop)
                                         for a, c in enumerate(tile.core)], axis=0))
            return own, ndi.map_coordinates(smoothed(tile), (idx[own] - tile.origin).T,
                                            order=1, mode="nearest")
        values = np.zeros(len(points), np.float32)
        for own, v in over_tiles(task):
            values[own] = v
        return values

    if traces is None:
        paths, mask, chains = _trace_dendrites(mask, edt_at, vs, p, brightness, threshold,
                                               bright_at, thr_at)
        del edt_at, bright_at, thr_at  # whole-field arrays the later stages do not need
    else:
        paths = [g[POSITION].to_numpy(float) - offset
                 for _, g in traces.groupby("dendrite_id", sort=True)]
        chains = [([(k, False)], [k]) for k in range(len(paths))]
    if not return_mask:
        mask = None  # nor this one
    smooth_paths = [smooth_polyline(q, p.length_smoothing_um) for q in paths]
    if traces is None:
        smooth_paths = _recentre(smooth_paths, smoothed_at)
    for tl in tiles:
        forget("sm", tl)
    t = lap("dendrites", t)
    yield "dendrites"

    if traces is None:
        ids = np.arange(len(smooth_paths))
    else:
        ids = np.array(sorted(traces["dendrite_id"].unique()))
    if not smooth_paths:
        spines = empty_spines()
        centerlines = _centerline_table([], [], offset)
        dendrites = dendrite_table(centerlines, spines, smooth_um=0)
        for stage in STAGES[2:]:
            yield stage
        return Detection(spines, dendrites, centerlines, [], mask, timings)

    # 2. shaft model (what the dendrite alone would look like) and the residual
    shaft = _ShaftModel(smooth_paths, shape, vs, p)
    pts = shaft.pts
    head_sig = _sigma_vox(_head_sigma_um(p, vs), vs)

    def signal(tile):
        def make():
            sig = (image(tile) - bg) / noise
            forget("img", tile)  # not needed any more
            return sig
        return kept("sig", tile, make)

    def cells(tile):
        shape_e = (shape[0],) + tuple(e.stop - e.start for e in tile.ext)
        return kept("cells", tile, lambda: shaft.cells(tile, shape_e))

    def in_core(tile, region):
        inside = np.zeros(region.shape, bool)
        inside[tile.inner] = True
        return inside

    def cell_values(tile, clip=None):
        """The tile's core voxels as packed (cell, value), and their cells with the sum and
        count of their z offsets; with `clip` (noise curve, radius per dendrite), without the
        spines."""
        region, key, frac, _ = cells(tile)
        core = in_core(tile, region)[region]
        if clip is not None:  # leave out the spines that stand out of the first model
            curve, clip_radius = clip
            rs, ms = (a[region] for a in residual(tile))
            core &= ~((shaft.lateral(key) >= clip_radius[shaft.owner(key)])
                      & (rs > SHAFT_CLIP_SD * np.interp(ms, *curve)))
        key = key[core]
        count = np.bincount(key, minlength=shaft.n_cells)
        cell = np.flatnonzero(count)  # kept per tile until the fit: only the tile's cells
        offsets = (cell, np.bincount(key, frac[0][core], minlength=shaft.n_cells)[cell],
                   count[cell])
        return _pack(key, signal(tile)[region][core]), offsets

    def fit(clip=None):
        """Fit the shaft model; returns its two radii per dendrite (:meth:`_ShaftModel.fit`)."""
        parts = over_tiles(lambda tl: cell_values(tl, clip))
        offsets = [b for _, b in parts]
        values = [a for a, _ in parts]
        del parts
        packed = np.empty(sum(len(v) for v in values), np.uint64)
        at = 0
        while values:  # each tile's values freed as they are copied
            n = len(values[0])
            packed[at:at + n] = values.pop(0)
            at += n
        radii = shaft.fit(packed, offsets)
        del packed
        for tl in tiles:  # the residual of the old model
            forget("resid", tl)
        return radii

    def centre_brightness(tile):
        """Each dendrite's smoothed centre line brightness, as (dendrite, value) at the
        tile's centre line voxels."""
        region, _, _, (line, line_point) = cells(tile)
        on = in_core(tile, region).ravel()[line]
        at = np.column_stack(np.unravel_index(line[on], region.shape))
        centre_b = _gaussian_at(signal(tile), at, _sigma_vox(CENTRE_SMOOTHING_UM, vs))
        return pts.owner[line_point[on]], centre_b

    def smoothed_signal(tile):
        """The signal within reach of the centre lines (0 beyond) smoothed at the head scale:
        the same for every shaft model."""
        return kept("ssig", tile, lambda: ndi.gaussian_filter(
            np.where(cells(tile)[0], signal(tile), 0).astype(np.float32), head_sig))

    def residual(tile):
        def make():
            region, key, frac, _ = cells(tile)
            model = np.zeros(region.shape, np.float32)
            model[region] = shaft.model(key, frac)
            # peaks of the residual smoothed at the head scale (the residual, signal less
            # model within reach, smoothed as the two apart), against the smoothed model
            ms = ndi.gaussian_filter(model, head_sig)
            del model
            return smoothed_signal(tile) - ms, ms
        return kept("resid", tile, make)

    def spread_sample(tile):
        rs, ms = residual(tile)
        lat = tile.lattice(step)
        region = cells(tile)[0][lat]
        return ms[lat][region], rs[lat][region]

    def noise_curve():
        """Shot noise grows with brightness: the residual's spread as a function of the shaft
        model (brightness, spread), in which peaks are expressed as local noise units."""
        parts = over_tiles(spread_sample)
        mv = np.concatenate([a for a, _ in parts])
        rv_ = np.concatenate([b for _, b in parts])
        del parts
        edges = np.unique(np.quantile(mv, np.linspace(0, 1, 13))) if len(mv) else np.zeros(1)
        which = np.clip(np.searchsorted(edges, mv) - 1, 0, max(len(edges) - 2, 0))
        centres, spread = [], []
        for b in range(max(len(edges) - 1, 1)):
            v = rv_[which == b]
            if len(v) > 20:
                centres.append(float(np.median(mv[which == b])))
                spread.append(1.4826 * float(np.median(np.abs(v - np.median(v)))))
        if not centres:
            centres, spread = [0.0], [1.0]
        # noise does not fall with signal
        return centres, np.maximum.accumulate(np.maximum(spread, 1e-6))

    parts = over_tiles(centre_brightness)
    line_owner = np.concatenate([a[0] for a in parts])
    line_b = np.concatenate([a[1] for a in parts])
    del parts
    edge, _ = fit()
    edge, radius = fit((noise_curve(), SHAFT_CLIP_RADII * edge))
    for tl in tiles:  # the residual is all the later stages need
        forget("sig", tl)
    shafts = _Shafts(
        edge=np.maximum(edge - 0.5 * p.psf_fwhm_um, 0.2), radius=radius, ids=ids,
        # median centre line brightness of each dendrite (noise units)
        brightness=np.array([max(float(np.median(line_b[line_owner == k])), 1e-3)
                             if np.any(line_owner == k) else 1.0
                             for k in range(len(smooth_paths))]))
    centres, spread = noise_curve()
    t = lap("shaft model", t)
    yield "shaft model"

    # 3. spines: peaks of the smoothed residual, measured where they are; those that pass the
    # looser tests only are the candidates (the stronger peaks win the same as without them)
    tree = cKDTree(pts.xyz)
    low = min(p.spine_threshold, p.candidate_threshold)

    def peaks(tile):
        rs, ms = residual(tile)
        local, rz = _local_peaks(rs, ms, cells(tile)[0], tile.inner, (centres, spread), low)
        near = _near_enough(local, tile.origin, rz, tree, pts, shafts, vs, p)
        rows = [None] * len(local)
        for i, dc, ni, need in zip(*near):
            rows[i] = _measure(local[i], local[i] + tile.origin, dc, ni, need, rz[i], rs, ms,
                               pts, shafts, vs, p)
        return local + tile.origin, rz, rows

    parts = over_tiles(peaks)
    cache.clear()
    pk = np.vstack([a[0] for a in parts])
    rows_all = [r for a in parts for r in a[2]]
    kept_order = _suppress(pk, np.concatenate([a[1] for a in parts]), vs,
                           p.min_spine_separation_um, shape)
    measured = [rows_all[i] for i in kept_order if rows_all[i] is not None]
    rows = _drop_necks([r for r in measured if not r["_candidate"]], p.min_spine_separation_um)
    if rows:  # _measure moves heads to their brightest depth: two may have come too close
        final = np.round(np.array([[r["z_um"], r["y_um"], r["x_um"]] for r in rows])
                         / np.asarray(vs)).astype(int)
        rows = [rows[i] for i in sorted(_suppress(final, np.array([r["contrast"] for r in rows]),
                                                  vs, p.min_spine_separation_um, shape))]
    rows += _apart([r for r in _drop_necks(measured, p.min_spine_separation_um)
                    if r["_candidate"]], rows, p.min_spine_separation_um)
    del parts
    t = lap("spines", t)
    yield "spines"
    spines = pd.DataFrame(rows).drop(columns="_inner", errors="ignore")
    candidates = empty_spines()
    if len(spines):
        _sizes(spines, shafts, vs, p)
        spines[POSITION] += offset
        spines[BASE] += offset
        # 0.5 at the spine's detection threshold, rising towards 1 with the contrast above it
        above = spines["contrast"] - spines.pop("_threshold")
        spines["score"] = (0.5 + 0.5 * (1 - np.exp(-above / p.spine_threshold))).clip(0, 1)
        spines["type"] = classify_spine(spines["head_diameter_um"], spines["neck_diameter_um"],
                                        spines["length_um"])
        weak = spines.pop("_candidate").to_numpy(bool) | (spines["score"] < p.min_score)
        spines, candidates = _numbered(spines[~weak]), _numbered(spines[weak])
    else:
        spines = empty_spines()
    # the branches of one dendrite (pieces at junctions) joined: spines as they were found
    lines, out_ids, owner, diam = [], [], np.zeros(len(ids), int), {}
    for c, (drawn, members) in enumerate(chains):
        line = np.vstack([smooth_paths[k][::-1] if rev else smooth_paths[k] for k, rev in drawn])
        lines.append(line)
        out_ids.append(int(ids[c]))  # automatic: ids[c] == c
        owner[members] = out_ids[-1]
        length = [polyline_length(smooth_paths[k]) for k, _ in drawn]
        diam[out_ids[-1]] = 2 * float(np.average(radius[[k for k, _ in drawn]],
                                                 weights=np.maximum(length, 1e-9)))
    if traces is None:
        for table in (spines, candidates):
            table["dendrite_id"] = owner[table["dendrite_id"].to_numpy(int)]
        # stretches that run steeply through z are left out, with their spines
        lines, source, (spines, candidates) = _flat_pieces(
            lines, out_ids, [spines, candidates], p.max_dendrite_tilt_deg, offset)
        out_ids, diam = list(range(len(lines))), {k: diam[d] for k, d in enumerate(source)}
    centerlines = _centerline_table(out_ids, lines, offset)
    dendrites = dendrite_table(centerlines, spines, diam, smooth_um=0)
    return Detection(spines, dendrites, centerlines, [q + offset for q in lines], mask, timings,
                     candidates)


def _tilted(line: np.ndarray, max_deg: float) -> np.ndarray:
    """Which points of the centre line `line` (n, 3 um) lie on a stretch running more than
    `max_deg` degrees out of the image plane: the chord over ``TILT_WINDOW_UM`` round each
    point (shorter at the ends).

    A line 10 um along x, then 5 um straight up, points 0.5 um apart:

    >>> x, z = np.r_[np.arange(20), np.full(10, 19)] / 2, np.r_[np.zeros(20), np.arange(1, 11)] / 2
    >>> _tilted(np.c_[z, np.zeros(30), x], 60).astype(int).tolist()[15:]
    [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    """
    if max_deg >= 90 or len(line) < 2:
        return np.zeros(len(line), bool)
    run = np.r_[0, np.cumsum(np.linalg.norm(np.diff(line, axis=0), axis=1))]
    lo = np.searchsorted(run, run - TILT_WINDOW_UM / 2)
    hi = np.searchsorted(run, run + TILT_WINDOW_UM / 2, side="right") - 1
    chord = line[hi] - line[lo]
    return np.abs(chord[:, 0]) > np.tan(np.radians(max_deg)) * np.hypot(chord[:, 1], chord[:, 2])


def _flat_pieces(lines: list, ids: list, tables: list, max_deg: float, offset):
    """The dendrites cut where they run more than `max_deg` out of the image plane, where
    the axial blur hides spines: each stretch in between at least ``TILT_WINDOW_UM`` long is
    a dendrite (`lines`, numbered anew; which old id each came from) and the spine `tables`
    keep the spines whose base (less `offset`) lies next to one, with its id, and whose head
    lies no nearer than ``DIVE_REACH_UM`` to a stretch left out as steep, nor off its piece
    (:func:`_off_their_dendrite`)."""
    from scipy.spatial import cKDTree

    pieces, source, label, steep = [], [], {}, [np.zeros((0, 3))]
    for did, line in zip(ids, lines):
        lab = np.full(len(line), -1)
        flat = ~_tilted(line, max_deg)
        steep.append(line[~flat] * AXIAL_SCALE)
        edges = np.flatnonzero(np.diff(np.r_[0, flat.astype(int), 0]))
        for a, b in zip(edges[::2], edges[1::2]):
            if polyline_length(line[a:b]) >= TILT_WINDOW_UM:
                lab[a:b] = len(pieces)
                pieces.append(line[a:b])
                source.append(did)
        label[did] = lab
    steep = np.vstack(steep)
    scaled = [q * AXIAL_SCALE for q in pieces]
    out = []
    for table in tables:
        keep = np.zeros(len(table), bool)
        new = np.zeros(len(table), int)
        base = table[BASE].to_numpy(float) - offset
        for did, line in zip(ids, lines):
            mine = np.flatnonzero(table["dendrite_id"].to_numpy() == did)
            if len(mine):
                near = np.argmin(np.linalg.norm(base[mine, None] - line[None], axis=2), axis=1)
                new[mine] = label[did][near]
                keep[mine] = new[mine] >= 0
        head = (table[POSITION].to_numpy(float) - offset) * AXIAL_SCALE
        if len(steep) and len(table):
            keep &= cKDTree(steep).query(head)[0] > DIVE_REACH_UM
        keep[keep] = ~_off_their_dendrite(scaled, head[keep], new[keep])
        out.append(_numbered(table[keep].assign(dendrite_id=new[keep])))
    return pieces, source, out


def _off_their_dendrite(lines: list, heads: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Which `heads` (n, 3) of spines on the dendrites `owner` (index into the centre `lines`;
    um, both with z scaled by ``AXIAL_RATIO``) lie more than ``PAST_END_UM`` past an end of
    their own dendrite (:func:`_past_end`) or within ``OTHER_DENDRITE_UM`` of another
    dendrite's centre line.

    Two parallel lines 2.5 um apart along x from 0 to 10 um; heads of spines on the first:
    beside it, 1 um past its end, and 1 um from the second:

    >>> lines = [np.c_[np.zeros(21), np.full(21, y), np.arange(21) / 2] for y in (0, 2.5)]
    >>> heads = np.array([[0, -1.0, 5], [0, 0, 11], [0, 1.5, 5]])
    >>> _off_their_dendrite(lines, heads, np.zeros(3, int)).tolist()
    [False, True, True]
    """
    from scipy.spatial import cKDTree

    off = np.zeros(len(heads), bool)
    for k, line in enumerate(lines):
        mine = np.flatnonzero(owner == k)
        if len(mine):
            off[mine] = _past_end(line, heads[mine]) > PAST_END_UM
    if OTHER_DENDRITE_UM > 0 and len(heads):
        label = np.repeat(np.arange(len(lines)), [len(q) for q in lines])
        near = cKDTree(np.vstack(lines)).query_ball_point(heads, OTHER_DENDRITE_UM)
        off |= np.array([np.any(label[n] != k) for n, k in zip(near, owner)], bool)
    return off


def _past_end(line: np.ndarray, heads: np.ndarray) -> np.ndarray:
    """How far (um) `heads` (n, 3) lie past an end of the centre line `line`, along the end's
    direction over ``CONTINUE_UM``, for heads whose nearest point of the line is that end and
    that lie within 45 degrees of its direction (-inf for the others: a line that curls back
    at its end points its direction there at its own middle).

    A line along x from 0 to 10 um; heads beside it, 1 um past its end, and 1 um past it but
    3 um to the side:

    >>> line = np.c_[np.zeros(21), np.zeros(21), np.arange(21) / 2]
    >>> _past_end(line, np.array([[0, 1.0, 5], [0, 0.2, 11], [0, 3.0, 11]])).tolist()
    [-inf, 1.0, -inf]

    The same line hooked back at its end (a half circle, then 2 um back along x): the head
    beside it at x 5 lies ahead of the hook's end, but nearer the line's middle:

    >>> t = np.linspace(-np.pi / 2, np.pi / 2, 7)[1:]
    >>> hook = np.c_[np.zeros(6), 1 + np.sin(t), 10 + np.cos(t)]
    >>> back = np.c_[np.zeros(4), np.full(4, 2.0), 10 - np.arange(1, 5) / 2]
    >>> _past_end(np.vstack([line, hook, back]), np.array([[0, 1.0, 5]])).tolist()
    [-inf]
    """
    past = np.full(len(heads), -np.inf)
    nearest = np.linalg.norm(heads[:, None] - line[None], axis=2).argmin(axis=1)
    for end, pts in ((0, line), (len(line) - 1, line[::-1])):
        out = pts[0] - pts[_along(pts, CONTINUE_UM)]
        out /= max(np.linalg.norm(out), 1e-9)
        along = (heads - pts[0]) @ out
        side = np.linalg.norm(heads - pts[0] - along[:, None] * out, axis=1)
        past = np.where((nearest == end) & (along >= side), np.maximum(past, along), past)
    return past


def _numbered(spines: pd.DataFrame) -> pd.DataFrame:
    """The spines (or candidates) table in the column contract, its rows numbered in order
    (``spine_id``)."""
    return conform_spines(spines.reset_index(drop=True).assign(spine_id=np.arange(len(spines))))


def _centerline_table(ids, lines, offset) -> pd.DataFrame:
    """The centre lines table (``dendrite_id, z_um, y_um, x_um``) of `lines`, moved by `offset`."""
    if not lines:
        return pd.DataFrame(columns=["dendrite_id", *POSITION])
    return pd.concat(
        [pd.DataFrame({"dendrite_id": int(i), "z_um": q[:, 0] + offset[0],
                       "y_um": q[:, 1] + offset[1], "x_um": q[:, 2] + offset[2]})
         for i, q in zip(ids, lines)], ignore_index=True)


def _apart(rows: list[dict], spines: list[dict], separation_um: float) -> list[dict]:
    """`rows` (candidates) not closer than `separation_um` (z scaled by the PSF elongation) to
    any of `spines`: a spine moved to its brightest depth may have come that close to one,
    which would then be the same head counted twice (time-lapse linking takes candidates)."""
    from scipy.spatial import cKDTree

    if not rows or not spines:
        return rows
    dist, _ = cKDTree(_scaled(spines)).query(_scaled(rows))
    return [r for r, d in zip(rows, dist) if d >= separation_um]


def _scaled(rows: list[dict], key: str | None = None) -> np.ndarray:
    """The heads of `rows` (or their point `key`, given as z, y, x um), z scaled by the PSF's
    elongation: the space in which peaks are thinned out."""
    at = np.array([r[key] if key else (r["z_um"], r["y_um"], r["x_um"]) for r in rows], float)
    return at * AXIAL_SCALE


def _drop_necks(rows: list[dict], separation_um: float) -> list[dict]:
    """Leave out peaks that lie on the neck of a spine further from the shaft: closer than
    `separation_um` (z scaled by the PSF elongation) to its neck (from the shaft model's
    inner edge to its head), short of the head. A long spine's neck often leaves a second
    residual peak near the shaft."""
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
    neck[a[(gap < separation_um) & (t < 0.85) & (surface[a] < surface[b])]] = True
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


def _measure(li, gi, dc, ni, threshold, contrast, rs, ms, pts: _Points, shafts: _Shafts, vs,
             p: DetectionParams) -> dict | None:
    """One residual peak (`li`: index in the tile's arrays, `gi`: on the working grid) that
    passed :func:`_near_enough` (`dc`: distance to the nearest centre line point `ni`;
    `threshold`: the contrast a spine there needs; `contrast`: its rz) as a spine row, or None
    where it is a bulge of the shaft itself rather than a protrusion."""
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
    if fraction < p.min_protrusion_fraction:
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
