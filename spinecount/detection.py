"""Trace dendrites and detect dendritic spines in a two-photon stack.

The method, in order (all distances in micrometres, converted with the stack's voxel size):

1. **Working resolution.** The stack is block-averaged laterally to about
   ``working_pixel_um`` (0.24 um) pixels: fine enough for spine heads, and fast.
2. **Background and noise** are estimated per slice (median and scaled median absolute
   deviation), so depth dimming does not bias thresholds.
3. **Dendrites.** The image smoothed by ``dendrite_smoothing_um`` is thresholded at
   ``dendrite_threshold`` noise SDs above background or, where higher, at ``otsu_fraction`` of
   Otsu's threshold of the smoothed stack (in vivo, dim neuropil and out-of-focus processes lie
   many noise SDs above the background; Otsu's split puts them with the background); parts thicker than
   ``max_dendrite_radius_um`` (soma, blobs) are removed. The mask is skeletonised in 3D and turned
   into a graph with skan; tip branches shorter than ``max_spine_length_um`` (spines) are pruned
   repeatedly and isolated pieces shorter than ``min_dendrite_length_um`` dropped. Each remaining
   branch between junctions and tips is one dendrite; its length is measured along its centre
   line smoothed over ``length_smoothing_um``, with the true voxel size in each axis.
   Alternatively the caller gives the centre lines (``traces``).
4. **Shaft model.** Every voxel near a dendrite is assigned to its nearest centre line point
   (z scaled by the PSF's axial elongation). Per 4 um stretch of dendrite, the median intensity
   by side, lateral distance (0.2 um bins) and z offset (slices) is the shaft, forced never to get
   brighter further out. Subtracting it leaves the spines, including heads whose neck is too dim
   to see.
5. **Spines** are peaks of the residual, smoothed at the head scale ``head_sigma_um``, that rise
   ``spine_threshold`` local noise SDs above it (shot noise grows with the shaft model), lie
   within ``max_spine_length_um`` of the shaft surface and within ``max_axial_offset_um`` above
   or below the centre line, are at least ``min_spine_separation_um``
   apart, and protrude: at least ``min_protrusion_fraction`` of the brightness at the head is in
   excess of the shaft model (a local bulge of the shaft is not a spine). Each is attached to its nearest
   dendrite, its base placed on the shaft surface towards the head, and measured: head diameter
   (half-maximum area, PSF removed), neck length, total length, distance from the shaft surface,
   integrated intensity relative to the shaft per micrometre, type (see
   :mod:`spinecount.morphology`) and a confidence ``score`` from its contrast.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .io import Stack
from .morphology import classify_spine
from .params import DetectionParams
from .tables import (BASE, POSITION, conform_spines, dendrite_table, empty_spines, resample_polyline,
                     smooth_polyline)

#: Axial / lateral elongation of the two-photon PSF, used to scale z in the shaft model.
AXIAL_RATIO = 3.0
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
        Dendrite mask at working resolution (when asked for with ``return_mask=True``).
    timings : dict
        Seconds per stage.
    """

    spines: pd.DataFrame
    dendrites: pd.DataFrame
    centerlines: pd.DataFrame
    paths: list = field(default_factory=list)
    mask: np.ndarray | None = None
    timings: dict = field(default_factory=dict)


def _downsample(data: np.ndarray, f: int) -> np.ndarray:
    """Block-mean by `f` in y and x (float32)."""
    img = data.astype(np.float32, copy=False)
    if f == 1:
        return img.copy() if img is data else img
    z, y, x = img.shape
    y2, x2 = y // f * f, x // f * f
    out = img[:, :y2, :x2].reshape(z, y2 // f, f, x2 // f, f).mean(axis=(2, 4), dtype=np.float32)
    return out


def _slice_stats(img: np.ndarray):
    """Per-slice background (median) and noise SD (1.4826 x MAD), shaped (z, 1, 1)."""
    flat = img.reshape(img.shape[0], -1)
    step = max(1, flat.shape[1] // 200_000)
    sample = flat[:, ::step]
    bg = np.median(sample, axis=1)
    mad = np.median(np.abs(sample - bg[:, None]), axis=1) * 1.4826
    mad = np.maximum(mad, max(float(np.median(mad)) * 0.1, 1e-6))
    return bg[:, None, None].astype(np.float32), mad[:, None, None].astype(np.float32)


def _sigma_vox(sigma_um, vs):
    s = np.broadcast_to(np.asarray(sigma_um, float), (3,))
    return tuple(si / v for si, v in zip(s, vs))


def _branch_ends(summ):
    """Node ids at the two ends of every branch of a skan summary, and every node's degree."""
    src, dst = summ["node_id_src"].to_numpy(), summ["node_id_dst"].to_numpy()
    return src, dst, np.bincount(np.concatenate([src, dst]))


def _dendrite_mask(zs: np.ndarray, p: DetectionParams) -> np.ndarray:
    """Voxels above ``dendrite_threshold`` noise SDs and above ``otsu_fraction`` of Otsu's
    threshold of `zs` (sampled every other voxel laterally)."""
    from skimage.filters import threshold_otsu

    sample = zs[:, ::2, ::2]
    if p.otsu_fraction <= 0 or sample.min() == sample.max():
        return zs > p.dendrite_threshold
    high = max(p.dendrite_threshold, p.otsu_fraction * float(threshold_otsu(sample)))
    return zs > high


def _trace_dendrites(zs: np.ndarray, vs, p: DetectionParams):
    """Centre lines (list of (n,3) um arrays) and the mask, from a z-scored smoothed image."""
    from scipy import ndimage as ndi
    from skimage.morphology import skeletonize
    import skan

    mask = _dendrite_mask(zs, p)
    # Soma and blobs: remove voxels deep inside thick structures, and their surroundings.
    edt = ndi.distance_transform_edt(mask, sampling=vs)
    thick = edt > p.max_dendrite_radius_um
    if thick.any():
        grow = int(np.ceil(p.max_dendrite_radius_um / vs[1]))
        thick = ndi.binary_dilation(thick, iterations=grow, mask=mask)
        mask &= ~thick
    lab, n = ndi.label(mask)
    if n:
        sizes = ndi.sum_labels(np.ones_like(lab, np.float32), lab, index=np.arange(1, n + 1))
        min_vox = p.min_dendrite_length_um / vs[1] * 2
        keep = np.concatenate([[False], sizes >= min_vox])
        mask = keep[lab]
    skel = skeletonize(mask)
    paths = []
    if not skel.any():
        return paths, mask
    sk = skan.Skeleton(skel, spacing=vs)
    for _ in range(6):
        summ = skan.summarize(sk, separator="_")
        radius = edt[tuple(np.round(summ[[f"image_coord_dst_{i}" for i in range(3)]]
                                    .to_numpy()).astype(int).T)]
        tips = ((summ["branch_type"] == 1) & (summ["branch_distance"]
                                              < p.max_spine_length_um + radius)).to_numpy().copy()
        # Where a dendrite ends just past a side branch, the end is a short tip too: of the
        # short tips at a junction with only one other branch, keep the longest.
        src, dst, deg = _branch_ends(summ)
        junction = np.where(deg[src] > 1, src, dst)
        for node in np.unique(junction[tips]):
            at = np.flatnonzero(tips & (junction == node))
            if deg[node] - len(at) == 1:
                tips[at[np.argmax(summ["branch_distance"].to_numpy()[at])]] = False
        if not tips.any():
            break
        sk = sk.prune_paths(np.flatnonzero(tips))
        if sk.n_paths == 0:
            return paths, mask
    summ = skan.summarize(sk, separator="_")
    # whole skeletons shorter than a dendrite (puncta, noise, clusters of blobs) are not dendrites
    total = summ.groupby("skeleton_id")["branch_distance"].transform("sum").to_numpy()
    src, dst, deg = _branch_ends(summ)
    top = (np.asarray(zs.shape) - 1) * np.asarray(vs)
    for i in range(sk.n_paths):
        length = summ["branch_distance"].iloc[i]
        if total[i] < p.min_dendrite_length_um or length < 2 * vs[1]:
            continue
        pts = sk.path_coordinates(i) * np.asarray(vs)
        # A skeleton stops about one radius short of a free end: extend tips by their radius.
        for end, node in ((0, src[i]), (-1, dst[i])):
            if deg[node] == 1 and len(pts) > 2:
                tip = pts[end]
                inner = pts[min(4, len(pts) - 1)] if end == 0 else pts[max(-5, -len(pts))]
                d = tip - inner
                r = edt[tuple(np.round(tip / np.asarray(vs)).astype(int))]
                new = np.clip(tip + d / max(np.linalg.norm(d), 1e-9) * r, 0, top)
                pts = np.vstack([new[None], pts]) if end == 0 else np.vstack([pts, new[None]])
        paths.append(pts)
    return paths, mask


def _suppress(idx: np.ndarray, value: np.ndarray, vs, separation_um: float) -> np.ndarray:
    """Keep the strongest of peaks closer than `separation_um` (z scaled by the PSF elongation)."""
    from scipy.spatial import cKDTree

    if len(idx) < 2:
        return idx
    order = np.argsort(-value[tuple(idx.T)])
    idx = idx[order]
    pos = idx * (np.asarray(vs) / np.array([AXIAL_RATIO, 1.0, 1.0]))
    tree = cKDTree(pos)
    keep = np.ones(len(idx), bool)
    for i in range(len(idx)):
        if keep[i]:
            for j in tree.query_ball_point(pos[i], separation_um):
                if j > i:
                    keep[j] = False
    return idx[keep]


def _rasterize_paths(paths, shape, vs):
    """Centre line points on the working grid.

    Returns a label image (point index + 1, 0 elsewhere) and, per point, its dendrite (index
    into `paths`), its arc length position along it (um), its position (um) and the unit tangent.
    """
    lab = np.zeros(shape, np.int32)
    owners, arcs, xyz, tans = [], [], [], []
    start = 0
    for i, pts in enumerate(paths):
        dense = resample_polyline(pts, min(vs) / 2)
        arc = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))])
        idx = np.round(dense / np.asarray(vs)).astype(int)
        ok = np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)
        idx, arc = idx[ok], arc[ok]
        xyz.append(dense[ok])
        tan = np.gradient(dense, axis=0) if len(dense) > 1 else np.zeros_like(dense)
        tans.append((tan / np.maximum(np.linalg.norm(tan, axis=1, keepdims=True), 1e-9))[ok])
        lab[tuple(idx.T)] = start + np.arange(len(idx)) + 1
        owners.append(np.full(len(idx), i))
        arcs.append(arc)
        start += len(idx)
    return (lab, np.concatenate(owners), np.concatenate(arcs), np.vstack(xyz),
            np.vstack(tans))


def _shaft_model(img, bg, noise, smooth_paths, vs, p: DetectionParams):
    """Model of the shaft alone, and the residual (image - model) near the centre lines.

    The model is the median intensity per cell: stretch of dendrite (4 um) x z offset (slices)
    x side x lateral distance (0.2 um bins), in noise units, never rising with distance from the
    centre line (z scaled by the PSF elongation). Returns ``model, resid, region`` (voxels
    within reach of a centre line), the rasterised centre line points' owners and positions,
    the shaft radius per dendrite (1-based) and each dendrite's centre line brightness.
    Intermediate arrays die here, so the spine stage starts with only what it needs.
    """
    from scipy import ndimage as ndi

    vz = vs[0]
    lab, pt_owner, pt_arc, pt_xyz, pt_tan = _rasterize_paths(smooth_paths, img.shape, vs)
    scaled = (vz / AXIAL_RATIO, vs[1], vs[2])
    reach = p.max_spine_length_um + p.max_dendrite_radius_um
    near = np.empty((3, *lab.shape), np.int32)  # int32 indices: half the memory of int64
    dist = ndi.distance_transform_edt(lab == 0, sampling=scaled, return_indices=True,
                                      indices=near)
    point = lab[tuple(near)] - 1  # nearest centre line point of every voxel
    del near
    region = dist <= reach
    del dist
    sig = (img - bg) / noise
    centre_b = ndi.gaussian_filter(sig, _sigma_vox((0.0, 0.3, 0.3), vs))
    # Cells: stretch of dendrite x z offset (slices) x side x lateral distance (0.2 um bins).
    # The two sides are modelled apart, so a centre line a little off the middle of the shaft
    # (or a shaft brighter on one side) leaves no stripe of residual along one edge.
    lat_um, stretch_um = 0.2, 4.0
    n_lat = int(reach / lat_um) + 1
    n_dz = int(np.ceil(p.max_spine_length_um / vz))
    where = np.nonzero(region)
    pts = point[where]
    del point
    # position relative to the nearest centre line point, one axis at a time (memory)
    rel = [w * v - pt_xyz[pts, a] for a, (w, v) in enumerate(zip(where, vs))]
    del where
    dzb = np.clip(np.round(rel[0] / vz).astype(int), -n_dz, n_dz) + n_dz
    latb = np.minimum((np.hypot(rel[1], rel[2]) / lat_um).astype(int), n_lat - 1)
    side = (pt_tan[pts, 1] * rel[2] - pt_tan[pts, 2] * rel[1] > 0).astype(int)
    del rel
    stretch = pt_owner * 100_000 + (pt_arc // stretch_um).astype(int)
    _, group = np.unique(stretch, return_inverse=True)
    n_z = 2 * n_dz + 1
    key = ((group[pts] * n_z + dzb) * 2 + side) * n_lat + latb
    del dzb, side, latb, pts
    med = pd.Series(sig[region]).groupby(key).median()
    prof = np.zeros((group.max() + 1) * n_z * 2 * n_lat, np.float32)
    prof[med.index.to_numpy()] = med.to_numpy()
    prof = prof.reshape(-1, n_z, 2, n_lat)
    # never brighter further out: laterally, then above and below the centre line
    prof = np.maximum.accumulate(prof[..., ::-1], axis=3)[..., ::-1]
    prof[:, n_dz:] = np.maximum.accumulate(prof[:, n_dz:][:, ::-1], axis=1)[:, ::-1]
    prof[:, :n_dz + 1] = np.maximum.accumulate(prof[:, :n_dz + 1], axis=1)
    model = np.zeros_like(img)
    model[region] = prof.ravel()[key]
    prof = prof.max(axis=1).mean(axis=1)  # in-plane profile, for the shaft radius
    radii = {}
    for k in range(len(smooth_paths)):
        g = np.unique(group[pt_owner == k])
        pk_ = np.median(prof[g], axis=0) if len(g) else np.zeros(n_lat)
        half = np.flatnonzero(pk_ < 0.5 * pk_[0])
        radii[k + 1] = float(half[0] * lat_um) if len(half) else reach
    resid = np.where(region, sig - model, 0).astype(np.float32)
    # median centre line brightness of each dendrite (noise units)
    on_line = lab > 0
    line_owner = pt_owner[lab[on_line] - 1]
    line_b = centre_b[on_line]
    shaft_brightness = [max(float(np.median(line_b[line_owner == k])), 1e-3)
                        if np.any(line_owner == k) else 1.0 for k in range(len(smooth_paths))]
    return model, resid, region, pt_owner, pt_xyz, radii, shaft_brightness


def detect(stack: Stack, *, params: DetectionParams | None = None, traces: pd.DataFrame | None
           = None, return_mask: bool = False, progress: bool = False) -> Detection:
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

    steps = detect_steps(stack, params=params, traces=traces, return_mask=return_mask)
    with tqdm(total=len(STAGES), desc=f"detect {stack.name}", unit="stage", leave=False,
              disable=not progress) as bar:
        while True:
            try:
                stage = next(steps)
            except StopIteration as done:
                return done.value
            bar.update(1)
            bar.set_postfix_str(stage)


def detect_steps(stack: Stack, *, params: DetectionParams | None = None,
                 traces: pd.DataFrame | None = None, return_mask: bool = False):
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

    def lap(name, t0):
        timings[name] = round(time.perf_counter() - t0, 3)
        return time.perf_counter()

    t = time.perf_counter()
    vz, vy, vx = stack.voxel_size
    f = max(1, int(round(p.working_pixel_um / max(vy, vx))))
    img = _downsample(stack.data, f)
    vs = (vz, vy * f, vx * f)
    # a working voxel's centre lies (f - 1) / 2 original pixels into its block
    offset = np.array([0.0, (f - 1) / 2 * vy, (f - 1) / 2 * vx])
    bg, noise = _slice_stats(img)
    t = lap("prepare", t)
    yield "prepare"

    # 1. dendrites
    sm = ndi.gaussian_filter(img, _sigma_vox(p.dendrite_smoothing_um, vs))
    bg_s, noise_s = _slice_stats(sm)
    zs = (sm - bg_s) / noise_s
    del sm
    if traces is None:
        paths, mask = _trace_dendrites(zs, vs, p)
    else:
        paths = [g[POSITION].to_numpy(float) - offset
                 for _, g in traces.groupby("dendrite_id", sort=True)]
        mask = _dendrite_mask(zs, p)
    smooth_paths = [smooth_polyline(q, p.length_smoothing_um) for q in paths]
    t = lap("dendrites", t)
    yield "dendrites"

    if traces is None:
        ids = np.arange(len(smooth_paths))
    else:
        ids = np.array(sorted(traces["dendrite_id"].unique()))
    centerlines = pd.concat(
        [pd.DataFrame({"dendrite_id": int(i), "z_um": q[:, 0], "y_um": q[:, 1], "x_um": q[:, 2]})
         for i, q in zip(ids, (q + offset for q in smooth_paths))], ignore_index=True
    ) if smooth_paths else pd.DataFrame(columns=["dendrite_id", *POSITION])
    if not smooth_paths:
        spines = empty_spines()
        dendrites = dendrite_table(centerlines, spines, smooth_um=0)
        for stage in STAGES[2:]:
            yield stage
        return Detection(spines, dendrites, centerlines, [], mask if return_mask else None,
                         timings)

    # 2. shaft model (what the dendrite alone would look like) and the residual
    model, resid, region, pt_owner, pt_xyz, radii, shaft_brightness = _shaft_model(
        img, bg, noise, smooth_paths, vs, p)
    t = lap("shaft model", t)
    yield "shaft model"

    # 3. spine candidates: peaks of the smoothed residual
    head_sig = _sigma_vox((max(p.head_sigma_um, 0.5 * vz), p.head_sigma_um, p.head_sigma_um), vs)
    rs = ndi.gaussian_filter(resid, head_sig)
    # Shot noise grows with brightness: measure the residual's spread as a function of the
    # shaft model and express peaks in those local noise units.
    ms = ndi.gaussian_filter(model, head_sig)
    mv, rv_ = ms[region], rs[region]
    edges = np.unique(np.quantile(mv, np.linspace(0, 1, 13)))
    which = np.clip(np.searchsorted(edges, mv) - 1, 0, max(len(edges) - 2, 0))
    centres, spread = [], []
    for b in range(max(len(edges) - 1, 1)):
        v = rv_[which == b]
        if len(v) > 20:
            centres.append(float(np.median(mv[which == b])))
            spread.append(1.4826 * float(np.median(np.abs(v - np.median(v)))))
    spread = np.maximum.accumulate(np.maximum(spread, 1e-6))  # noise does not fall with signal
    rz = rs / np.interp(ms, centres, spread).astype(np.float32)
    del mv, rv_, which  # ms (the smoothed shaft model) is used below
    peaks = (rz == ndi.maximum_filter(rz, size=3)) & (rz > p.spine_threshold) & region
    pk = _suppress(np.argwhere(peaks), rz, vs, p.min_spine_separation_um)
    rows = []
    if len(pk):
        pos = pk * np.asarray(vs)
        # physical nearest centre line point (of those rasterised for the shaft model)
        dd, nn = cKDTree(pt_xyz).query(pos)
        for (zi, yi, xi), hp, dc, ni in zip(pk, pos, dd, nn):
            k = int(pt_owner[ni])
            r_shaft = max(radii.get(k + 1, 0.5) - 0.5 * p.psf_fwhm_um, 0.2)
            surface = dc - r_shaft
            if (surface < 0.1 or surface > p.max_spine_length_um
                    or abs(hp[0] - pt_xyz[ni, 0]) > p.max_axial_offset_um):
                continue
            peak = rs[zi, yi, xi]
            if peak < p.min_protrusion_fraction * (peak + ms[zi, yi, xi]):
                continue  # a bulge of the shaft itself, not a protrusion from it
            cpt = pt_xyz[ni]
            direction = (hp - cpt) / max(dc, 1e-9)
            base = cpt + r_shaft * direction
            # head size: area above half maximum in the peak's slice
            win = int(np.ceil(1.0 / vs[1]))
            y0, y1 = max(yi - win, 0), min(yi + win + 1, img.shape[1])
            x0, x1 = max(xi - win, 0), min(xi + win + 1, img.shape[2])
            patch = rs[zi, y0:y1, x0:x1] >= 0.5 * peak
            lab2, _ = ndi.label(patch)
            area = np.sum(lab2 == lab2[yi - y0, xi - x0]) * vs[1] * vs[2]
            d_obs = 2 * np.sqrt(area / np.pi)
            head_d = float(np.sqrt(max(d_obs**2 - p.psf_fwhm_um**2, 0.0)))
            head_d = max(head_d, 0.2)
            # neck: residual along base -> head relative to the head
            n_s = max(int(surface / 0.1), 2)
            line = base[None] + np.linspace(0, 1, n_s)[:, None] * (hp - base)[None]
            li = np.clip(np.round(line / np.asarray(vs)).astype(int), 0,
                         np.asarray(img.shape) - 1)
            along = rs[tuple(li.T)]
            ratio = float(np.clip(along[: max(n_s - 3, 1)].min() / peak, 0, 1))
            neck_d = head_d * np.sqrt(ratio) if ratio < 0.6 else head_d
            integ = float(resid[max(zi - 1, 0):zi + 2, y0:y1, x0:x1].clip(0).sum())
            shaft_per_um = shaft_brightness[k] * np.pi * (
                r_shaft + 0.5 * p.psf_fwhm_um) ** 2 / (vs[1] * vs[2] * vs[0])
            rows.append({
                "dendrite_id": int(ids[k]), "z_um": hp[0], "y_um": hp[1], "x_um": hp[2],
                "base_z_um": base[0], "base_y_um": base[1], "base_x_um": base[2],
                "head_diameter_um": head_d,
                "neck_length_um": max(surface - head_d / 2, 0.0),
                "length_um": surface + head_d / 2, "shaft_distance_um": surface,
                "relative_intensity": integ / shaft_per_um,
                "neck_diameter_um": neck_d,
                "contrast": float(rz[zi, yi, xi]),
            })
    t = lap("spines", t)
    yield "spines"
    spines = pd.DataFrame(rows)
    if len(spines):
        spines[POSITION] += offset
        spines[BASE] += offset
        # 0.5 at the detection threshold, rising towards 1 with the contrast above it
        spines["score"] = (0.5 + 0.5 * (1 - np.exp(-(spines["contrast"] - p.spine_threshold)
                                                   / p.spine_threshold))).clip(0, 1)
        spines = spines[spines["score"] >= p.min_score].reset_index(drop=True)
        spines["type"] = classify_spine(spines["head_diameter_um"], spines["neck_diameter_um"],
                                        spines["length_um"])
        spines["spine_id"] = np.arange(len(spines))
        spines = conform_spines(spines)
    else:
        spines = empty_spines()
    diam = {int(ids[k - 1]): 2 * max(r - 0.5 * p.psf_fwhm_um, 0.2) for k, r in radii.items()}
    dendrites = dendrite_table(centerlines, spines, diam, smooth_um=0)
    return Detection(spines, dendrites, centerlines, [q + offset for q in smooth_paths],
                     mask if return_mask else None, timings)
