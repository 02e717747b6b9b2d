"""Dendrites traced in 3D (step 3 of the method described in :mod:`spinecount.detection`): the mask
(a global threshold, lowered locally for dim dendrites, with a shape test), its skeleton as a
graph (skan), side branches that are spines pruned, short cycles broken, gaps bridged, haze
dropped, branches chained through junctions into dendrites, and the centre lines moved onto the
image's ridge."""

from __future__ import annotations

import threading

import numpy as np

from .chunks import Tile
from .grid import _box_max, _nearest_point, _vertex
from .optics import AXIAL_SCALE
from .params import DetectionParams
from .tables import CENTERLINE_STEP_UM, smooth_polyline

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
#: Where skeleton branches are pruned, the skeleton is thinned again within this many voxels of
#: them (:func:`_prune_paths`); thinning a skeleton changes it only next to what was removed.
PRUNE_MARGIN_PX = 3
_warm_lock = threading.Lock()
_warm_started = False


def _warm_numba(*, wait: bool = False) -> None:
    """Load spinecount's numba code (:class:`skeleton.Skeleton`, :func:`grid._nearest_point`;
    compiled once per installation and cached on disk) and import skan once per process, in a
    background thread unless `wait`: about 2 s that otherwise fall on the first stack, and
    that overlap the first stages (which run in C code, outside Python's lock)."""
    global _warm_started

    def toy():
        try:
            import skan
            from .skeleton import Skeleton

            sk = np.zeros((3, 12, 12), bool)
            sk[1, 2:10, 6] = sk[1, 6, 2:10] = True
            skan.summarize(Skeleton(sk, spacing=(1.0, 0.5, 0.5)), separator="_")
            _nearest_point(np.array([[1, 6, 6]]), np.zeros(1), sk.shape, (1.0, 0.5, 0.5), 1.0)
        except Exception:  # the real call will say what is wrong
            pass

    with _warm_lock:
        if _warm_started:
            return
        _warm_started = True
        if wait:
            toy()
        else:
            threading.Thread(target=toy, name="spinecount-warm-numba", daemon=True).start()


def _branch_ends(summ):
    """Node ids at the two ends of every branch of a skan summary, and every node's degree."""
    src, dst = summ["node_id_src"].to_numpy(), summ["node_id_dst"].to_numpy()
    return src, dst, np.bincount(np.concatenate([src, dst]))


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
    from .skeleton import Skeleton

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
    sk = Skeleton(skel, spacing=vs)
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
    from skimage.morphology import skeletonize
    from .skeleton import Skeleton

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
    return Skeleton(img, spacing=sk.spacing)


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
