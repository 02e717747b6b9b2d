"""The shaft model (step 4 of the method described in :mod:`spinecount.detection`): what each
dendrite alone would look like, as a brightness profile against the distance from its centre
line, per side, z offset and stretch of centre line, fitted robustly and never rising outwards.
Spines are what stands out of it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .chunks import Tile
from .grid import _nearest_point
from .optics import AXIAL_RATIO
from .params import DetectionParams
from .tables import resample_polyline

#: lateral smoothing (um) of the image in which a dendrite's centre line brightness is read
CENTRE_SMOOTHING_UM = (0.0, 0.3, 0.3)
#: the shaft model is fitted again without the voxels outside this many shaft radii where the
#: residual (smoothed at the head scale) stands this many local noise SDs above it: spines
SHAFT_CLIP_RADII, SHAFT_CLIP_SD = 1.25, 2.0


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
        extent, and the point drawn there).

        Within reach: within `reach` of the nearest centre line point (z scaled by the PSF
        elongation) and in one of the model's z bins, at most ``max_spine_length_um`` (in
        whole slices) above or below it. The voxels further above or below, most of the volume
        within `reach`, hold no spine but background and structures that are not traced: they
        set the residual's noise curve too high near the shaft, where short spines are."""
        pts, vs = self.pts, self.vs
        lab = np.zeros(shape_e, np.int32)
        local = pts.idx - tile.origin
        inside = np.all((local >= 0) & (local < np.asarray(shape_e)), axis=1)
        lab[tuple(local[inside].T)] = np.flatnonzero(inside) + 1
        line = np.flatnonzero(lab)
        line_point = lab.ravel()[line] - 1
        del lab
        nearest = _nearest_point(np.column_stack(np.unravel_index(line, shape_e)), line_point,
                                 shape_e, (vs[0] / AXIAL_RATIO, vs[1], vs[2]), self.reach)
        region = nearest >= 0
        where = np.nonzero(region)
        point = nearest[where]
        del nearest
        # z offset from the nearest centre line point (slices); none beyond the last z bin
        u = ((where[0] + tile.origin[0]) * vs[0] - pts.xyz[point, 0]) / vs[0]
        beyond = np.abs(u) > self.n_dz + 0.5
        region[tuple(w[beyond] for w in where)] = False
        where, point, u = tuple(w[~beyond] for w in where), point[~beyond], u[~beyond]
        del beyond
        # y and x relative to the nearest centre line point, one axis at a time (memory)
        rel = [(w + o) * v - pts.xyz[point, a]
               for a, (w, o, v) in enumerate(zip(where, tile.origin, vs)) if a]
        dzb = np.clip(np.round(u).astype(int), -self.n_dz, self.n_dz)
        frac = np.where(np.abs(dzb) < self.n_dz, u - dzb, 0).astype(np.float32)
        dzb += self.n_dz
        lat = (np.hypot(*rel) / self.LAT_UM).astype(np.float32)
        latb = np.minimum(lat.astype(int), self.n_lat - 1)
        # lateral position from the middle of the bin (bins), for the lateral interpolation
        lat -= latb + np.float32(0.5)
        side = (pts.tan[point, 1] * rel[1] - pts.tan[point, 2] * rel[0] > 0).astype(int)
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
