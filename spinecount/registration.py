"""Registration of two imaging sessions of one field: a 3D translation, then local corrections.

Living tissue moves between imaging days: the whole field shifts (the animal is put back under
the objective a little differently), and the tissue deforms slowly and unevenly. ``register``
first finds the translation (lateral: phase correlation of high-passed maximum projections, with
scikit-image; axial: the z offset that best correlates the laterally aligned stacks), then
measures what is left in overlapping blocks of the field (phase correlation per block, checked
against its neighbours), and returns a :class:`Registration` that maps points of the moving
session into the reference session's frame, in micrometres.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi


@dataclass
class Registration:
    """Maps points (z, y, x in um) of a moving session into the reference session's frame.

    ``reference = moving + shift_um + local(moving)``, where ``local`` is interpolated
    (bilinear in y and x) from the block corrections ``local_um`` measured at ``grid_y_um``,
    ``grid_x_um``.
    """

    shift_um: np.ndarray
    grid_y_um: np.ndarray = field(default_factory=lambda: np.zeros(0))
    grid_x_um: np.ndarray = field(default_factory=lambda: np.zeros(0))
    local_um: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 3)))

    def transform(self, points) -> np.ndarray:
        """Moving-frame points (n, 3) in um -> reference-frame points."""
        p = np.asarray(points, float).reshape(-1, 3)
        out = p + np.asarray(self.shift_um, float)
        if self.local_um.size:
            fy = np.interp(p[:, 1], self.grid_y_um, np.arange(len(self.grid_y_um)))
            fx = np.interp(p[:, 2], self.grid_x_um, np.arange(len(self.grid_x_um)))
            for a in range(3):
                out[:, a] += ndi.map_coordinates(self.local_um[..., a], [fy, fx], order=1,
                                                 mode="nearest")
        return out

    def to_dict(self) -> dict:
        return {"shift_um": np.asarray(self.shift_um).tolist(),
                "grid_y_um": np.asarray(self.grid_y_um).tolist(),
                "grid_x_um": np.asarray(self.grid_x_um).tolist(),
                "local_um": np.asarray(self.local_um).tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Registration":
        return cls(np.asarray(d["shift_um"], float), np.asarray(d["grid_y_um"], float),
                   np.asarray(d["grid_x_um"], float),
                   np.asarray(d["local_um"], float).reshape(
                       len(d["grid_y_um"]), len(d["grid_x_um"]), 3))


IDENTITY = Registration(np.zeros(3))


def _highpass(img2d: np.ndarray, vs: float) -> np.ndarray:
    """Band-pass (0.12 to 1 um) of a 2D image: keeps dendrites and spines, drops haze."""
    x = img2d.astype(np.float32)
    return ndi.gaussian_filter(x, 0.12 / vs) - ndi.gaussian_filter(x, 1.0 / vs)


def _pcc2d(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """Shift (pixels) that moves b onto a, and the normalised correlation after it."""
    from skimage.filters import window
    from skimage.registration import phase_cross_correlation

    w = window("hann", a.shape)
    shift, _, _ = phase_cross_correlation(a * w, b * w, upsample_factor=10,
                                          normalization=None)
    bs = ndi.shift(b, shift, order=1)
    aa, bb = a - a.mean(), bs - bs.mean()
    den = np.sqrt((aa * aa).sum() * (bb * bb).sum())
    return shift, float((aa * bb).sum() / den) if den > 0 else 0.0


def _z_offset(a: np.ndarray, b: np.ndarray, max_slices: int) -> float:
    """z shift (slices, parabola-refined) that moves stack b onto a (already laterally aligned)."""
    scores = []
    shifts = range(-max_slices, max_slices + 1)
    for dz in shifts:
        lo, hi = max(0, dz), min(a.shape[0], b.shape[0] + dz)
        if hi - lo < 2:
            scores.append(-np.inf)
            continue
        x, y = a[lo:hi], b[lo - dz:hi - dz]
        den = np.sqrt((x * x).sum() * (y * y).sum())
        scores.append(float((x * y).sum() / den) if den > 0 else -np.inf)
    i = int(np.argmax(scores))
    best = float(shifts[i])
    if 0 < i < len(scores) - 1 and np.all(np.isfinite(scores[i - 1:i + 2])):
        c0, c1, c2 = scores[i - 1:i + 2]
        den = c0 - 2 * c1 + c2
        if den < 0:
            best += 0.5 * (c0 - c2) / den
    return best


def register(reference, moving, *, block_um: float = 30.0, max_shift_um: float = 15.0,
             max_local_um: float = 2.0, max_z_shift_um: float = 10.0,
             max_local_z_um: float = 4.0, local: bool = True) -> Registration:
    """Register `moving` onto `reference` (two :class:`~spinecount.io.Stack` of one field).

    Parameters
    ----------
    reference, moving : Stack
        The same field on two days, with the same lateral voxel size.
    block_um : float
        Size of the blocks (um, lateral) in which the local correction is measured; blocks
        overlap by half.
    max_shift_um, max_z_shift_um : float
        Largest translation searched, laterally and in z.
    max_local_um, max_local_z_um : float
        Largest local correction, laterally and in z; a block that asks for more, or disagrees
        with its neighbours by more than 1 um laterally or half `max_local_z_um` in z, is
        replaced by the median of its neighbours.
    local : bool
        Measure the local correction (else the translation only).

    Returns
    -------
    Registration

    Examples
    --------
    >>> import numpy as np
    >>> from spinecount.synthetic import make_stack
    >>> from spinecount.io import Stack
    >>> a = make_stack(shape_um=(10, 30, 30), n_dendrites=2, seed=3).stack
    >>> moved = Stack(np.roll(a.data, (1, 10, -15), axis=(0, 1, 2)), a.voxel_size)
    >>> reg = register(a, moved, local=False)
    >>> np.round(reg.shift_um, 1).tolist()  # moved + shift = reference
    [-1.0, -1.2, 1.8]
    """
    from .grid import downsample_xy

    vz, vy, vx = reference.voxel_size
    if not np.allclose(moving.voxel_size[1:], (vy, vx), rtol=1e-3):
        raise ValueError("the two sessions need the same lateral voxel size")
    A, B = reference.data, moving.data
    # 1. lateral translation from the maximum projections (same lateral size needed)
    ny, nx = min(A.shape[1], B.shape[1]), min(A.shape[2], B.shape[2])
    ma = _highpass(A[:, :ny, :nx].max(axis=0), vy)
    mb = _highpass(B[:, :ny, :nx].max(axis=0), vy)
    shift_yx, _ = _pcc2d(ma, mb)
    limit = max_shift_um / vy
    shift_yx = np.clip(shift_yx, -limit, limit)
    # 2. axial offset of the laterally aligned stacks, binned to ~0.5 um pixels
    f = max(1, int(round(0.5 / vy)))
    Bs = ndi.shift(B.astype(np.float32), (0, *shift_yx), order=1)
    a3, b3 = downsample_xy(A, f), downsample_xy(Bs, f)
    haze = (0, 2.0 / (f * vy), 2.0 / (f * vy))  # 2 um: what varies more slowly is haze
    a3, b3 = a3 - ndi.gaussian_filter(a3, haze), b3 - ndi.gaussian_filter(b3, haze)
    dz = _z_offset(a3, b3, int(np.ceil(max_z_shift_um / vz)))
    shift = np.array([dz * vz, shift_yx[0] * vy, shift_yx[1] * vx])
    reg = Registration(shift)
    if not local:
        return reg
    # 3. local corrections per block of the aligned projections
    n = max(int(round(block_um / vy)), 32)
    step = n // 2
    mbs = _highpass(Bs[:, :ny, :nx].max(axis=0), vy)
    ys = list(range(0, max(ny - n, 0) + 1, step))
    xs = list(range(0, max(nx - n, 0) + 1, step))
    loc = np.full((len(ys), len(xs), 3), np.nan)
    nz = int(np.ceil(max_local_z_um / vz))
    for i, y0 in enumerate(ys):
        for j, x0 in enumerate(xs):
            a_b, b_b = ma[y0:y0 + n, x0:x0 + n], mbs[y0:y0 + n, x0:x0 + n]
            if a_b.std() == 0 or b_b.std() == 0:
                continue
            s, corr = _pcc2d(a_b, b_b)
            if corr > 0.2 and np.all(np.abs(s) * vy <= max_local_um):
                loc[i, j, 1:] = s * vy
                # the z offset of this block (a tilted or bent field), on the binned stacks
                by, bx = slice(y0 // f, (y0 + n) // f), slice(x0 // f, (x0 + n) // f)
                zb = _z_offset(a3[:, by, bx], b3[:, by, bx], int(np.ceil(abs(dz))) + nz)
                if abs(zb - dz) <= nz:
                    loc[i, j, 0] = (zb - dz) * vz
    local_um = np.stack([_robust_fill(loc[..., 0], max_local_z_um / 2),
                         *np.moveaxis(_robust_fill(loc[..., 1:], 1.0), -1, 0)], axis=-1)
    # block centres in the moving frame (blocks were measured on the shifted stack)
    gy = np.array(ys) * vy + n * vy / 2 - shift[1]
    gx = np.array(xs) * vx + n * vx / 2 - shift[2]
    return Registration(shift, gy, gx, local_um)


def register_sessions(stacks, **kw) -> list[Registration]:
    """Registrations of every session onto the first (the first's is the identity); `kw` go to
    :func:`register`."""
    return [IDENTITY] + [register(stacks[0], s, **kw) for s in stacks[1:]]


def _robust_fill(loc: np.ndarray, tolerance_um: float) -> np.ndarray:
    """Replace missing blocks, and blocks that disagree with the median of their neighbours by
    more than `tolerance_um`, by that median; 0 where nothing is known. `loc` is (ny, nx) or
    (ny, nx, k)."""
    squeeze = loc.ndim == 2
    loc = loc[..., None] if squeeze else loc
    out = loc.copy()
    ny, nx, k = loc.shape
    for i in range(ny):
        for j in range(nx):
            nb = loc[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].reshape(-1, k)
            nb = nb[np.all(np.isfinite(nb), axis=1)]
            med = np.median(nb, axis=0) if len(nb) else np.zeros(k)
            if not np.all(np.isfinite(loc[i, j])) or np.abs(loc[i, j] - med).max() > tolerance_um:
                out[i, j] = med
    out = np.nan_to_num(out)
    return out[..., 0] if squeeze else out
