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
   (z scaled by the PSF's axial elongation), up to ``max_spine_length_um`` (in whole slices)
   above or below it: further out lie no spines, only background and structures that are not
   traced, which would set the noise curve (step 5) too high next to the shaft. Per 4 um
   stretch of dendrite, the median intensity by side, lateral distance (0.2 um bins) and z
   offset (slices) is the shaft, forced never to get brighter further out, and interpolated
   in z between the slices at each voxel's own offset (a centre line between two slices would
   otherwise leave a ridge above or below the shaft) and laterally between the middles of the
   bins (the steep edge of the shaft would otherwise leave a step of residual at every bin).
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
   A peak is where the residual stands out most against the local noise, which grows
   towards the shaft, so next to a bright shaft it lies a little further out than the head's
   brightest point: the head is placed at the peak but measured (sizes, length, distance from
   the shaft) at the residual's own maximum next to it in the image plane (``CLIMB_UM`` away
   at most; measured at the peak, stubby heads read small and far out, and were typed thin).
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
   Which of the peaks are spines is then chosen by a classifier (:mod:`.classifier`): by
   default the built-in model, gradient-boosted decision trees over each peak's measurements
   and a patch of the image around it, choosing among a looser pool (peaks from
   ``POOL_THRESHOLD`` noise SDs); with ``classifier="rules"`` the tests above decide alone.
   Of two spines then within ``min_spine_separation_um`` in the image plane and
   ``stacked_depth_um`` in depth (one head seen at two depths) the one with the lower score
   goes, and so do candidates there (:func:`.heads.unstacked`).
6. **Chunks.** Every step works in lateral chunks with a margin (:mod:`spinecount.chunks`), and
   what needs the whole stack (background and noise, Otsu's threshold, the shaft model's cell
   medians, the noise curve, close peaks) is gathered from all chunks first, so the result is
   the same in chunks as in one piece. Large stacks are chunked to bound memory; smaller ones
   run as one strip per thread.

This module runs the stages in order; their parts live in modules of their own:
:mod:`.grid` (the working grid, steps 1-2), :mod:`.tracing` (step 3), :mod:`.shaft` (step 4),
:mod:`.heads` (step 5, with the sizes) and :mod:`.pieces` (which stretches of the dendrites
and which spines count, the end of step 5).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .classifier import CANDIDATE_FRACTION, classifier_model, peak_features, pool_params
from .chunks import AUTO_CHUNK_UM, AUTO_CHUNK_VOXELS, assemble_lattice, map_tiles, plan_tiles
from .grid import (_gaussian_at, _lattice_step, _lookup, _sigma_vox, _slice_stats,
                   downsample_xy, upsample_z)
from .heads import (_apart, _drop_necks, _head_measured_at_maximum, _head_sigma_um,
                    _local_peaks, _measure, _near_enough, _sizes, _suppress, unstacked)
from .io import Stack
from .morphology import classify_spine
from .params import DEFAULT_CLASSIFIER, DetectionParams
from .pieces import _flat_pieces
from .shaft import (CENTRE_SMOOTHING_UM, SHAFT_CLIP_RADII, SHAFT_CLIP_SD, _pack, _ShaftModel,
                    _Shafts)
from .tables import (BASE, POSITION, _numbered, dendrite_table, empty_spines, polyline_length,
                     smooth_polyline)
from .tracing import (LOCAL_REACH_UM, _mask_threshold, _recentre, _tile_mask, _trace_dendrites,
                      _warm_numba)

#: The coarsest z step and lateral pixel (um) the detector is measured at (README, Measured
#: accuracy); coarser stacks are detected with a warning.
MEASURED_Z_STEP_UM, MEASURED_PIXEL_UM = 2.0, 0.3
#: Where at least this fraction of the dendrites' centre line lies at the stack's highest grey
#: value, the dendrites are saturated and the detection warns (:func:`_warn_if_saturated`).
SATURATED_FRACTION = 0.05
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


def detect(stack: Stack, *, params: DetectionParams | None = None, traces: pd.DataFrame | None
           = None, return_mask: bool = False, progress: bool = False,
           chunk_um: float | None = None, threads: int | None = None,
           classifier=DEFAULT_CLASSIFIER) -> Detection:
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
    classifier : str, path or SpineClassifier
        What chooses the spines among a looser pool of peaks: by default the built-in model
        (``"rr30a"``, :mod:`spinecount.classifier`), or a file of ``spinecount train``; the
        spines' ``score`` is then its probability (mapped so that its threshold is 0.5,
        :meth:`.SpineClassifier.score`): peaks scored ``min_score`` or more are spines, those
        scored at least a quarter of it candidates. ``"rules"`` (or None) counts the peaks
        that pass the rules (``spine_threshold``, ``min_score`` and the other parameters)
        instead.

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
                         chunk_um=chunk_um, threads=threads, classifier=classifier)
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
                 chunk_um: float | None = None, threads: int | None = None,
                 classifier=DEFAULT_CLASSIFIER):
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
    stacked_depth_um = p.stacked_depth_um  # applied to the final choice (the pool's is 0)
    classifier = classifier_model(classifier)
    if classifier is not None:
        p = pool_params(p)
    timings: dict[str, float] = {}
    if traces is None:
        _warm_numba()

    def lap(name, t0):
        timings[name] = round(time.perf_counter() - t0, 3)
        return time.perf_counter()

    t = time.perf_counter()
    raw = stack.data
    vz, vy, vx = stack.voxel_size
    if len(raw) == 1:
        warnings.warn(
            f"{stack.name}: one plane (a projection or a single optical section), not a z-stack: "
            f"spines above and below a dendrite are hidden in it, so expect fewer (on rr30a's "
            f"maximum projections recall was 0.40 and 0.51 against 0.74 and 0.81 in the "
            f"z-stacks; README, Measured accuracy); detect in the z-stack where there is one",
            stacklevel=3)
    elif vz > MEASURED_Z_STEP_UM + 1e-9 or max(vy, vx) > MEASURED_PIXEL_UM + 1e-9:
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
    step = _lattice_step(shape[1], shape[2])

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
        if traces is None:
            which = "" if stack.channel is None else f" (channel {stack.channel})"
            warnings.warn(
                f"{stack.name}: no dendrite found, nothing bright, long and thin enough: check "
                f"that the stack shows the dendrites in this channel{which} and that its voxel "
                f"size is right; no spine density can be given", stacklevel=3)
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
            row = _measure(local[i], local[i] + tile.origin, dc, ni, need, rz[i], rs, ms,
                           pts, shafts, vs, p)
            if row is not None:
                row = _head_measured_at_maximum(row, local[i], tile.origin, tree, need, rz[i],
                                                rs, ms, pts, shafts, vs, p)
            rows[i] = row
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
    rows += _apart([r for r in _drop_necks(measured, p.min_spine_separation_um, dimmer_only=True)
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
        weak = spines.pop("_candidate").to_numpy(bool)
        if classifier is not None:  # min_score is then the classifier's (0.5: its threshold)
            weak, keep = _chosen(classifier, stack, spines, weak, p.min_score)
            spines = spines[keep]
        else:
            weak = weak | (spines["score"].to_numpy() < p.min_score)
        keep = unstacked(spines, weak, p.min_spine_separation_um, stacked_depth_um)
        spines, weak = spines[keep], weak[keep]
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
    _warn_if_saturated(stack, centerlines, spines)
    return Detection(spines, dendrites, centerlines, [q + offset for q in lines], mask, timings,
                     candidates)


def _chosen(classifier, stack: Stack, peaks: pd.DataFrame, weak: np.ndarray,
            min_score: float):
    """The classifier's choice among the pool of `peaks` (`weak`: those the rules do not
    count): its score (:meth:`.SpineClassifier.score`, 0.5 at its threshold) becomes theirs;
    returns which peaks are weak (scored under `min_score`) and which are kept at all (at
    least ``CANDIDATE_FRACTION`` of it)."""
    score = classifier.score(peak_features(stack, peaks.assign(passes_rules=~weak)))
    peaks["score"] = score
    keep = score >= min_score * CANDIDATE_FRACTION
    return (score < min_score)[keep], keep


def _centerline_table(ids, lines, offset) -> pd.DataFrame:
    """The centre lines table (``dendrite_id, z_um, y_um, x_um``) of `lines`, moved by `offset`."""
    if not lines:
        return pd.DataFrame(columns=["dendrite_id", *POSITION])
    return pd.concat(
        [pd.DataFrame({"dendrite_id": int(i), "z_um": q[:, 0] + offset[0],
                       "y_um": q[:, 1] + offset[1], "x_um": q[:, 2] + offset[2]})
         for i, q in zip(ids, lines)], ignore_index=True)


def _warn_if_saturated(stack: Stack, centerlines: pd.DataFrame, spines: pd.DataFrame) -> None:
    """Warn where at least ``SATURATED_FRACTION`` of the centre line points lie on a voxel at
    the stack's highest grey value: the shaft's brightness is clipped there, and the sizes and
    intensities read from brightness against it are biased."""
    top = stack.data.max()

    def share(table):
        idx = np.round(table[POSITION].to_numpy(float) / np.asarray(stack.voxel_size))
        idx = np.clip(idx.astype(int), 0, np.asarray(stack.data.shape) - 1)
        return float(np.mean(stack.data[tuple(idx.T)] == top)) if len(idx) else 0.0
    line = share(centerlines)
    if line >= SATURATED_FRACTION:
        warnings.warn(
            f"{stack.name}: {line:.0%} of the dendrites' centre line and {share(spines):.0%} of "
            f"the spine heads lie at the stack's highest grey value ({top:g}), saturated: head "
            f"and neck diameters and relative intensities, read from brightness against the "
            f"shaft's, are biased there; image with less laser power or detector gain",
            stacklevel=4)
