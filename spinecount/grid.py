"""Arrays on the detector's working grid: the stack block-averaged laterally and interpolated in
z to it, and the small array operations the stages of :func:`spinecount.detection.detect` share
(smoothing in micrometres, per-slice statistics, a box maximum, the nearest of a set of points)."""

from __future__ import annotations

from functools import cache

import numpy as np


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


def _lattice_step(ny: int, nx: int) -> int:
    """Every how many rows and columns a lattice samples an image plane of ny x nx pixels
    for statistics: about 200,000 pixels a plane.

    >>> _lattice_step(512, 512), _lattice_step(100, 100)
    (2, 1)
    """
    return max(1, int(np.ceil(np.sqrt(ny * nx / 200_000))))


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


def _nearest_point(idx: np.ndarray, ids: np.ndarray, shape, sampling,
                   reach: float) -> np.ndarray:
    """For every voxel of an array of `shape`, the id (int32) of its nearest point of `idx`
    (voxels, shape (n, 3), each given once), distances measured with `sampling` (um per
    voxel along each axis); -1 where no point lies within `reach` (um).

    Each point visits only the voxels within `reach` of it, so the work grows with the
    points and the reach, not with the array (compiled with numba, without Python's lock:
    tiles run in parallel). Ties go to the point listed first.

    Examples
    --------
    >>> _nearest_point(np.array([[0, 0, 1], [0, 0, 5]]), np.array([7, 9]), (1, 1, 8),
    ...                (1.0, 1.0, 1.0), 2.5)[0, 0].tolist()
    [7, 7, 7, 7, 9, 9, 9, 9]
    >>> _nearest_point(np.array([[0, 0, 1]]), np.array([7]), (1, 1, 6), (1.0, 1.0, 1.0),
    ...                2.0)[0, 0].tolist()
    [7, 7, 7, 7, -1, -1]
    """
    return _compiled_nearest_within()(np.asarray(idx, np.int64).reshape(-1, 3),
                                      np.asarray(ids, np.int32), tuple(int(n) for n in shape),
                                      tuple(float(v) for v in sampling), float(reach))


@cache
def _compiled_nearest_within():
    """:func:`_nearest_within` compiled (cached on disk), numba imported only here: what
    imports this module without detecting (registration) does not pay for it."""
    import numba

    return numba.njit(cache=True, nogil=True)(_nearest_within)


def _nearest_within(idx, ids, shape, sampling, reach):
    """:func:`_nearest_point`'s loop: each point over the ellipsoid of voxels within reach."""
    owner = np.full(shape, -1, np.int32)
    best = np.full(shape, np.inf, np.float32)  # squared distance to the nearest point so far
    r2 = reach * reach
    rz = int(reach / sampling[0])
    for k in range(idx.shape[0]):
        z0, y0, x0 = idx[k, 0], idx[k, 1], idx[k, 2]
        for z in range(max(z0 - rz, 0), min(z0 + rz + 1, shape[0])):
            dz2 = ((z - z0) * sampling[0]) ** 2
            ry = int(np.sqrt(max(r2 - dz2, 0.0)) / sampling[1])
            for y in range(max(y0 - ry, 0), min(y0 + ry + 1, shape[1])):
                dzy = dz2 + ((y - y0) * sampling[1]) ** 2
                if dzy > r2:
                    continue
                rx = int(np.sqrt(r2 - dzy) / sampling[2])
                for x in range(max(x0 - rx, 0), min(x0 + rx + 1, shape[2])):
                    d2 = dzy + ((x - x0) * sampling[2]) ** 2
                    if d2 < best[z, y, x]:
                        best[z, y, x] = d2
                        owner[z, y, x] = ids[k]
    return owner


def _vertex(a, b, c):
    """Where the parabola through ``(-1, a), (0, b), (1, c)`` peaks (steps from the middle
    point, within half a step either way); 0 where it has no maximum.

    >>> round(float(_vertex(1.0, 2.0, 1.5)), 3)
    0.167
    """
    curve = np.asarray(a - 2 * b + c)
    return np.where(curve < 0, np.clip(0.5 * (a - c) / np.where(curve < 0, curve, -1.0),
                                       -0.5, 0.5), 0.0)


def _lookup(flat: np.ndarray, values: np.ndarray, shape, *, missing: float = 0.0):
    """``f(index)``: `values` at voxels (n, 3) given by their sorted flat indices; `missing`
    elsewhere."""
    def at(index):
        q = np.ravel_multi_index(tuple(np.asarray(index).T), shape)
        i = np.clip(np.searchsorted(flat, q), 0, max(len(flat) - 1, 0))
        found = (flat[i] == q) if len(flat) else np.zeros(len(q), bool)
        return np.where(found, values[i] if len(flat) else missing, missing)
    return at
