"""Synthetic two-photon stacks of spiny dendrites with known truth (like trackpy's ``artificial``).

:func:`make_stack` draws branching dendrites of varying radius and brightness, spines of the four
classic types with known head centres, bases and sizes, and forms the image a two-photon
microscope would record: an anisotropic point-spread function (axial blur several times the
lateral), dimming with depth, background, out-of-focus haze and bright puncta that are not
spines, Poisson shot noise and read noise. Everything is deterministic from ``seed``.

The truth tables use the detector's column contract (:mod:`spinecount.tables`), so a detection
can be scored against them with :func:`spinecount.evaluate.evaluate`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .io import Stack, check_voxel_size, write_imagej
from .morphology import classify_spine
from .tables import conform_spines, dendrite_table, resample_polyline

#: Geometry ranges per spine type, micrometres: head diameter, neck diameter, neck length.
#: Chosen so that :func:`spinecount.morphology.classify_spine` gives the intended type and so
#: that every spine is visible through a two-photon PSF (a human would not count what is not).
#: ``"head"`` as neck means a neck as wide as the head.
SPINE_SHAPES = {
    "mushroom": {"head": (0.7, 1.1), "neck": (0.15, 0.25), "neck_length": (0.5, 1.0)},
    # thin: a protrusion about as wide as its head (head/neck <= 1.1), long for its width
    "thin": {"head": (0.38, 0.48), "neck": "head", "neck_length": (0.9, 1.4)},
    "stubby": {"head": (0.5, 0.8), "neck": "head", "neck_length": (0.0, 0.0)},
    "filopodium": {"head": (0.26, 0.32), "neck": "head", "neck_length": (1.9, 2.6)},
}
DEFAULT_TYPE_FRACTIONS = {"mushroom": 0.35, "thin": 0.3, "stubby": 0.25, "filopodium": 0.1}


#: Columns of :attr:`SyntheticStack.somata`.
SOMA_COLUMNS = ["z_um", "y_um", "x_um", "radius_um"]


@dataclass
class SyntheticStack:
    """A synthetic stack with its truth.

    Attributes
    ----------
    stack : Stack
        The image and its voxel size.
    spines : DataFrame
        True spines in the detector's column contract, plus ``neck_diameter_um``.
    dendrites : DataFrame
        True dendrites (one per branch between junctions and tips) with ``planted_density_per_um``.
    centerlines : DataFrame
        True centre lines, ``dendrite_id, z_um, y_um, x_um``, points 0.25 um apart.
    params : dict
        The arguments that made it.
    somata : DataFrame
        Cell bodies in the field (not dendrites): ``z_um, y_um, x_um, radius_um``.
    """

    stack: Stack
    spines: pd.DataFrame
    dendrites: pd.DataFrame
    centerlines: pd.DataFrame
    params: dict = field(default_factory=dict)
    somata: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SOMA_COLUMNS))


def _perpendicular_basis(t):
    """Unit vectors (u, v) perpendicular to tangent t (z, y, x); u lies in the xy plane."""
    u = np.cross(t, [1.0, 0.0, 0.0])
    if np.linalg.norm(u) < 1e-6:
        u = np.array([0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(t, u)
    return u, v / np.linalg.norm(v)


def _walk(rng, start, direction, length, shape_um, margin, step=0.25, turn=0.025):
    """A smooth random path from `start` along `direction` (z, y, x), clipped to the volume."""
    pts = [np.asarray(start, float)]
    d = np.asarray(direction, float)
    d /= np.linalg.norm(d)
    zlo, zhi = margin[0], shape_um[0] - margin[0]
    curv = np.zeros(3)
    for _ in range(int(length / step)):
        curv = 0.95 * curv + rng.normal(0, turn, 3) * np.array([0.3, 1, 1])
        d = d + curv * step
        p = pts[-1] + d / np.linalg.norm(d) * step
        if p[0] < zlo or p[0] > zhi:  # stay in the imaged depth: level off
            d[0] = -0.5 * d[0]
            curv[0] = 0
            p = pts[-1] + d / np.linalg.norm(d) * step
        d /= np.linalg.norm(d)
        if not all(margin[i] <= p[i] <= shape_um[i] - margin[i] for i in (1, 2)):
            break
        pts.append(p)
    return np.array(pts)


def _min_dist(points, others):
    from scipy.spatial import cKDTree

    if not len(others):
        return np.full(len(points), np.inf)
    return cKDTree(np.vstack(others)).query(points)[0]


def _draw_dendrites(rng, shape_um, n_dendrites, branch_probability):
    """Centre lines of main dendrites and branches; returns list of dicts (points, radius, ...)."""
    margin = (3.0, 1.0, 1.0)
    Z, Y, X = shape_um
    mains = []
    for _ in range(n_dendrites):
        for _attempt in range(40):
            side = rng.integers(4)
            z0 = rng.uniform(0.35, 0.65) * Z
            if side == 0:
                start, d = (z0, margin[1], rng.uniform(0.15, 0.85) * X), (0, 1, rng.normal(0, .5))
            elif side == 1:
                start, d = (z0, Y - margin[1], rng.uniform(0.15, 0.85) * X), (0, -1, rng.normal(0, .5))
            elif side == 2:
                start, d = (z0, rng.uniform(0.15, 0.85) * Y, margin[2]), (0, rng.normal(0, .5), 1)
            else:
                start, d = (z0, rng.uniform(0.15, 0.85) * Y, X - margin[2]), (0, rng.normal(0, .5), -1)
            d = np.array(d, float) + [rng.normal(0, 0.08), 0, 0]
            pts = _walk(rng, start, d, 4 * max(Y, X), shape_um, margin)
            if len(pts) * 0.25 < 0.5 * min(Y, X):
                continue
            if np.all(_min_dist(pts[:, 1:], [m["points"][:, 1:] for m in mains]) > 6.0):
                mains.append({"points": pts, "r0": rng.uniform(0.35, 0.6),
                              "brightness": rng.uniform(0.7, 1.3), "parent": None})
                break
    branches = []
    for mi, m in enumerate(mains):
        if rng.random() >= branch_probability:
            continue
        pts = m["points"]
        for _attempt in range(20):
            k = int(rng.uniform(0.3, 0.7) * len(pts))
            t = pts[min(k + 4, len(pts) - 1)] - pts[max(k - 4, 0)]
            t /= np.linalg.norm(t)
            u, _ = _perpendicular_basis(t)
            ang = np.deg2rad(rng.uniform(35, 65))
            d = np.cos(ang) * t + np.sin(ang) * u * rng.choice([-1, 1])
            bp = _walk(rng, pts[k], d, 2 * max(Y, X), shape_um, margin)
            if len(bp) * 0.25 < 10:
                continue
            others = [o["points"][:, 1:] for o in mains + branches]
            far = np.linalg.norm(bp - pts[k], axis=1) > 8.0  # beyond the junction
            if far.sum() > 8 and np.all(_min_dist(bp[far, 1:], others) > 4.0):
                branches.append({"points": bp, "r0": 0.8 * m["r0"],
                                 "brightness": m["brightness"] * rng.uniform(0.8, 1.1),
                                 "parent": (mi, k), "main": mi})
                break
    # Split mains at their branch points: truth dendrites are branches between junctions and tips.
    cuts = {}
    for b in branches:
        mi, k = b["parent"]
        cuts.setdefault(mi, []).append(k)
    segments = []
    for mi, m in enumerate(mains):
        bounds = [0, *sorted(cuts.get(mi, [])), len(m["points"]) - 1]
        for a, b in zip(bounds[:-1], bounds[1:]):
            segments.append({**m, "points": m["points"][a:b + 1], "main": mi})
    segments += branches
    for s in segments:
        n = len(s["points"])
        phase, wl = rng.uniform(0, 2 * np.pi), rng.uniform(8, 20)
        s["radius"] = s["r0"] * (1 + 0.15 * np.sin(np.arange(n) * 0.25 * 2 * np.pi / wl + phase))
    return segments


def _draw_spines(rng, seg, density, fractions, others, shape_um, max_elevation_deg):
    pts, radius = seg["points"], seg["radius"]
    seglen = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s_cum = np.concatenate([[0], np.cumsum(seglen)])
    length = s_cum[-1]
    n = int(round(density * length))
    types = list(fractions)
    p = np.array([fractions[t] for t in types], float)
    p /= p.sum()
    rows = []
    # Jittered even spacing: every spine has its own stretch of dendrite, like real spacing.
    for i in range(n):
        for _attempt in range(30):
            s = (i + rng.uniform(0.15, 0.85)) * length / n
            k = int(np.clip(np.searchsorted(s_cum, s), 1, len(pts) - 1))
            t = pts[min(k + 2, len(pts) - 1)] - pts[max(k - 2, 0)]
            t /= np.linalg.norm(t)
            u, v = _perpendicular_basis(t)
            elev = np.deg2rad(rng.uniform(-max_elevation_deg, max_elevation_deg))
            direction = rng.choice([-1, 1]) * np.cos(elev) * u + np.sin(elev) * v
            kind = types[rng.choice(len(types), p=p)]
            shape = SPINE_SHAPES[kind]
            head = rng.uniform(*shape["head"])
            neck_d = head if shape["neck"] == "head" else rng.uniform(*shape["neck"])
            neck_len = rng.uniform(*shape["neck_length"])
            centre = pts[k]
            base = centre + radius[k] * direction
            # Stubby heads sit partly in the shaft; others at the end of their neck.
            dist = 0.6 * head / 2 if kind == "stubby" else neck_len + head / 2
            headc = base + dist * direction
            inside = all(0.3 <= headc[j] <= shape_um[j] - 0.3 for j in range(3))
            if inside and _min_dist(headc[None], others)[0] > 2.0:
                break
        else:
            continue
        rows.append({
            "z_um": headc[0], "y_um": headc[1], "x_um": headc[2],
            "base_z_um": base[0], "base_y_um": base[1], "base_x_um": base[2],
            "head_diameter_um": head, "neck_diameter_um": neck_d,
            "neck_length_um": max(dist - head / 2, 0.0), "length_um": dist + head / 2,
            "shaft_distance_um": dist, "intended_type": kind,
            "brightness": rng.uniform(0.9, 1.5),
            "_shaft_radius": radius[k],
        })
    return rows


class _Splatter:
    """Adds Gaussian-blurred volume elements to an image on a voxel grid."""

    def __init__(self, shape, voxel_size, psf_sigma_um):
        self.img = np.zeros(shape, np.float32)
        self.vs = np.asarray(voxel_size, float)
        self.psf2 = np.asarray(psf_sigma_um, float) ** 2
        self.grids = [np.arange(n) * v for n, v in zip(shape, voxel_size)]

    def add(self, centre, volume, object_var):
        sig = np.sqrt(self.psf2 + object_var)
        sl, g = [], []
        for ax in range(3):
            lo = int(np.floor((centre[ax] - 3.5 * sig[ax]) / self.vs[ax]))
            hi = int(np.ceil((centre[ax] + 3.5 * sig[ax]) / self.vs[ax])) + 1
            lo, hi = max(lo, 0), min(hi, self.img.shape[ax])
            if hi <= lo:
                return
            x = self.grids[ax][lo:hi]
            g.append(np.exp(-((x - centre[ax]) ** 2) / (2 * sig[ax] ** 2))
                     / (np.sqrt(2 * np.pi) * sig[ax]) * self.vs[ax])
            sl.append(slice(lo, hi))
        self.img[tuple(sl)] += (volume * g[0][:, None, None] * g[1][None, :, None]
                                * g[2][None, None, :]).astype(np.float32)

    def tube(self, points, radii, weight, step=0.15):
        pts = resample_polyline(points, step)
        r = np.interp(np.linspace(0, 1, len(pts)), np.linspace(0, 1, len(radii)), radii)
        seg = step if len(pts) > 1 else 0.0
        for p, ri in zip(pts, r):
            self.add(p, weight * np.pi * ri**2 * seg, ri**2 / 4)


def _place_somata(rng, segments, shape_um, radius: float) -> list:
    """One cell body of `radius` (um; 0: none) at mid-depth, at least 3 um from every dendrite
    and inside the field laterally, as [(centre, radius)]; [] where there is no room."""
    if radius <= 0:
        return []
    lines = [g["points"] for g in segments]
    for _attempt in range(200):
        centre = np.array([shape_um[0] / 2, *(rng.uniform(radius, e - radius)
                                               for e in shape_um[1:])])
        if _min_dist(centre[None], lines)[0] > radius + 3.0:
            return [(centre, radius)]
    return []


def _render(rng, segments, spine_rows, shape, voxel_size, *, somata=(), psf_sigma_um,
            peak_photons, background_photons, read_noise, haze, puncta_per_1000um3,
            depth_attenuation_um, dtype) -> np.ndarray:
    """The image of dendrite segments, spine rows (also sets ``relative_intensity``) and
    somata (centre, radius)."""
    from scipy.ndimage import gaussian_filter

    splat = _Splatter(shape, voxel_size, psf_sigma_um)
    for seg in segments:
        splat.tube(seg["points"], seg["radius"], seg["brightness"])
    for r in spine_rows:
        b = segments[r["dendrite_id"]]["brightness"] * r["brightness"]
        base = np.array([r["base_z_um"], r["base_y_um"], r["base_x_um"]])
        head = np.array([r["z_um"], r["y_um"], r["x_um"]])
        hr, nr = r["head_diameter_um"] / 2, r["neck_diameter_um"] / 2
        # the neck runs from inside the shaft to the head
        direction = (head - base) / max(np.linalg.norm(head - base), 1e-9)
        if r["neck_length_um"] > 0:
            start = base - 0.3 * direction
            splat.tube(np.array([start, head - hr * direction]), [nr, nr], b, step=0.1)
        splat.add(head, b * 4 / 3 * np.pi * hr**3, hr**2 / 5)
        shaft_per_um = np.pi * r["_shaft_radius"] ** 2
        neck_vol = np.pi * nr**2 * r["neck_length_um"]
        r["relative_intensity"] = r["brightness"] * (4 / 3 * np.pi * hr**3 + neck_vol) / shaft_per_um

    # cell bodies: filled balls of the dendrites' dye concentration, through the PSF
    for centre, radius in somata:
        d2 = sum(((np.arange(n) * v - c) ** 2).reshape([-1 if a == i else 1 for a in range(3)])
                 for i, (n, v, c) in enumerate(zip(shape, voxel_size, centre)))
        ball = (d2 <= radius**2).astype(np.float32) * np.float32(np.prod(voxel_size))
        splat.img += gaussian_filter(ball, np.asarray(psf_sigma_um) / np.asarray(voxel_size))

    # Calibrate: a shaft of radius 0.5 um peaks at `peak_photons`.
    r0 = 0.5
    s2 = np.asarray(psf_sigma_um, float) ** 2 + r0**2 / 4
    ref = np.pi * r0**2 / (2 * np.pi * np.sqrt(s2[0] * s2[1])) * np.prod(voxel_size)
    signal = splat.img * np.float32(peak_photons / ref)

    # Clutter: puncta away from the dendrites, and large out-of-focus haze.
    clutter = _Splatter(shape, voxel_size, psf_sigma_um)
    vol = np.prod(np.asarray(shape) * np.asarray(voxel_size))
    n_p = rng.poisson(puncta_per_1000um3 * vol / 1000)
    cl_all = np.vstack([g["points"] for g in segments]) if segments else np.zeros((0, 3))
    for _ in range(n_p):
        c = rng.uniform(0, 1, 3) * np.asarray(shape) * np.asarray(voxel_size)
        if _min_dist(c[None], [cl_all])[0] > 5.0:
            rp = rng.uniform(0.25, 0.5)
            clutter.add(c, rng.uniform(0.5, 1.5) * 4 / 3 * np.pi * rp**3, rp**2 / 5)
    punct = clutter.img * np.float32(peak_photons / ref)
    haze_img = np.zeros(shape, np.float32)
    if haze > 0:
        seeds = rng.random(shape).astype(np.float32) < 2e-4
        blur = gaussian_filter(seeds.astype(np.float32), np.array([4.0, 4.0, 4.0]) / voxel_size)
        if blur.max() > 0:
            haze_img = blur / blur.max() * np.float32(haze * peak_photons)
    z = (np.arange(shape[0]) * voxel_size[0])[:, None, None]
    atten = np.exp(-z / depth_attenuation_um).astype(np.float32)
    expected = background_photons + (signal + punct + haze_img) * atten
    counts = rng.poisson(expected).astype(np.float32) + rng.normal(0, read_noise, shape).astype(
        np.float32)
    counts = np.clip(counts, 0, None)
    if dtype == "uint8":
        data = np.clip(np.round(counts * 4), 0, 255).astype(np.uint8)
    elif dtype == "uint16":
        data = np.clip(np.round(counts * 16), 0, 65535).astype(np.uint16)
    else:
        data = counts.astype(np.float32)

    return data


def make_stack(*, shape_um=(16.0, 40.0, 40.0), voxel_size=(1.0, 0.12, 0.12),
               n_dendrites: int = 2, branch_probability: float = 0.5,
               spine_density: float = 0.5, density_cv: float = 0.0,
               type_fractions: dict | None = None, max_elevation_deg: float = 40.0,
               psf_sigma_um=(0.8, 0.2, 0.2), peak_photons: float = 40.0,
               background_photons: float = 2.0, read_noise: float = 1.0,
               haze: float = 0.15, puncta_per_1000um3: float = 1.0,
               depth_attenuation_um: float = 100.0, soma_radius_um: float = 0.0,
               dendrite_brightness=None, dtype: str = "uint16",
               seed: int = 0) -> SyntheticStack:
    """Make a synthetic two-photon stack of spiny dendrites with its truth.

    Parameters
    ----------
    shape_um : (z, y, x) floats
        Size of the imaged volume, micrometres.
    voxel_size : (z, y, x) floats
        Voxel size, micrometres.
    n_dendrites : int
        Number of main dendrites crossing the field; each may branch once.
    branch_probability : float
        Chance that a main dendrite has a side branch.
    spine_density : float
        Mean planted spine density, spines per micrometre of dendrite.
    density_cv : float
        Coefficient of variation of the density between dendrites (0: every dendrite the same).
    type_fractions : dict, optional
        Fractions of stubby, thin, mushroom and filopodium spines.
    max_elevation_deg : float
        Spines point at most this far out of the imaging (xy) plane.
    psf_sigma_um : (z, y, x) floats
        Standard deviation of the Gaussian point-spread function (axial several times lateral).
    peak_photons : float
        Expected photons at the centre of a typical shaft (sets the noise level).
    background_photons, read_noise : float
        Background photons per voxel, standard deviation of the camera/PMT read noise.
    haze : float
        Amplitude of out-of-focus haze relative to the shaft.
    puncta_per_1000um3 : float
        Bright spots away from the dendrites (not spines) per 1000 cubic micrometres.
    depth_attenuation_um : float
        Signal falls as exp(-z / depth_attenuation_um).
    soma_radius_um : float
        A cell body of this radius (a filled ball as bright as the dendrites) lies in the field
        at mid-depth, at least 3 um from every dendrite (0: none). It is not a dendrite and
        carries no spines (``somata`` of the result).
    dendrite_brightness : sequence of float, optional
        Brightness of each main dendrite and its branch relative to a typical one (which peaks
        at `peak_photons`), one per dendrite: for example ``(1, 10)`` for a dendrite beside one
        ten times brighter. Haze and puncta stay as bright as for a typical dendrite.
    dtype : {"uint16", "uint8", "float32"}
    seed : int

    Returns
    -------
    SyntheticStack

    Examples
    --------
    >>> syn = make_stack(shape_um=(8, 20, 20), n_dendrites=1, seed=1)
    >>> syn.stack.data.shape
    (8, 167, 167)
    >>> set(syn.spines["type"]) <= {"stubby", "thin", "mushroom", "filopodium"}
    True
    """
    params = {k: v for k, v in locals().items() if k != "rng"}
    rng = np.random.default_rng(seed)
    voxel_size, shape, shape_um = _grid(shape_um, voxel_size)
    fractions = type_fractions or DEFAULT_TYPE_FRACTIONS

    segments, spine_rows, planted = _geometry(
        rng, shape_um, n_dendrites, branch_probability, spine_density, density_cv, fractions,
        max_elevation_deg)
    if dendrite_brightness is not None:
        if len(dendrite_brightness) != n_dendrites:
            raise ValueError(f"dendrite_brightness needs one value per dendrite "
                             f"({n_dendrites}), got {len(dendrite_brightness)}")
        for seg in segments:
            seg["brightness"] *= dendrite_brightness[seg["main"]]
    somata = _place_somata(rng, segments, shape_um, soma_radius_um)
    data = _render(rng, segments, spine_rows, shape, voxel_size, somata=somata,
                   **{k: params[k] for k in _RENDER_ARGS})
    return _assemble(data, voxel_size, segments, spine_rows, planted, params, seed, somata)


#: make_stack's arguments that describe the microscope rather than the tissue (for _render).
_RENDER_ARGS = ("psf_sigma_um", "peak_photons", "background_photons", "read_noise", "haze",
                "puncta_per_1000um3", "depth_attenuation_um", "dtype")


def _grid(shape_um, voxel_size):
    """Checked voxel size, the stack's shape in voxels, and its size in um (whole voxels)."""
    voxel_size = check_voxel_size(voxel_size)
    shape = tuple(max(int(round(e / v)), 1) for e, v in zip(shape_um, voxel_size))
    return voxel_size, shape, tuple(n * v for n, v in zip(shape, voxel_size))


def _geometry(rng, shape_um, n_dendrites, branch_probability, spine_density, density_cv,
              fractions, max_elevation_deg):
    """Dendrite segments, spine rows (with ``dendrite_id``) and planted density per dendrite."""
    segments = _draw_dendrites(rng, shape_um, n_dendrites, branch_probability)
    spine_rows, planted = [], {}
    all_pts = [s["points"] for s in segments]
    for did, seg in enumerate(segments):
        d = spine_density * (rng.lognormal(-density_cv**2 / 2, density_cv) if density_cv else 1)
        planted[did] = d
        others = [p for j, p in enumerate(all_pts) if j != did]
        rows = _draw_spines(rng, seg, d, fractions, others, shape_um, max_elevation_deg)
        for r in rows:
            r["dendrite_id"] = did
        spine_rows += rows
    return segments, spine_rows, planted


def _assemble(data, voxel_size, segments, spine_rows, planted, params, seed,
              somata=()) -> SyntheticStack:
    """The SyntheticStack (image and truth tables) of rendered geometry."""
    cl_rows = []
    for did, seg in enumerate(segments):
        fine = resample_polyline(seg["points"], 0.25)
        cl_rows.append(pd.DataFrame({"dendrite_id": did, "z_um": fine[:, 0],
                                     "y_um": fine[:, 1], "x_um": fine[:, 2]}))
    spines = pd.DataFrame(spine_rows)
    if len(spines):
        spines["spine_id"] = np.arange(len(spines))
        spines["type"] = classify_spine(spines["head_diameter_um"], spines["neck_diameter_um"],
                                        spines["length_um"])
        spines["score"] = 1.0
        spines = spines.drop(columns=["_shaft_radius", "brightness"])
    spines = conform_spines(spines)
    centerlines = (pd.concat(cl_rows, ignore_index=True) if cl_rows
                   else pd.DataFrame(columns=["dendrite_id", "z_um", "y_um", "x_um"]))
    diam = {i: 2 * float(np.mean(s["radius"])) for i, s in enumerate(segments)}
    dendrites = dendrite_table(centerlines, spines, diam, smooth_um=0)
    dendrites["planted_density_per_um"] = dendrites["dendrite_id"].map(planted)
    stack = Stack(data, voxel_size, None, None,
                  {"format": "synthetic", "voxel_size_source": "synthetic", "seed": seed})
    soma_table = pd.DataFrame([[*c, r] for c, r in somata], columns=SOMA_COLUMNS, dtype=float)
    return SyntheticStack(stack, spines, dendrites, centerlines, params, soma_table)


@dataclass
class SyntheticTimelapse:
    """Sessions of one synthetic field with known spine identities.

    Attributes
    ----------
    sessions : list of SyntheticStack
        One per session, in its own (moved) frame; ``spines`` carry ``track_id``, the same for
        the same spine in every session.
    shifts_um : ndarray (n_sessions, 3)
        Translation of each session's frame relative to the first.
    planted : DataFrame
        Per interval: ``session_from``, ``session_to``, ``n_from``, ``n_formed``,
        ``n_eliminated``, ``formation``, ``elimination`` (fractions of ``n_from``).
    """

    sessions: list
    shifts_um: np.ndarray
    planted: pd.DataFrame


def make_timelapse(*, n_sessions: int = 3, formation: float = 0.15, elimination: float = 0.15,
                   max_shift_um=(1.5, 3.0, 3.0), deformation_um: float = 0.3,
                   seed: int = 0, **stack_kw) -> SyntheticTimelapse:
    """The same synthetic field imaged on several days, with planted spine turnover.

    Between consecutive sessions, round(`elimination` x N) of the N spines present disappear and
    round(`formation` x N) new ones appear (at least 2.5 um laterally from every head of the
    earlier session, so that which spine is new is beyond doubt): the planted rates are exact. Each session is seen through a random translation (up to
    `max_shift_um` in z, y, x) and a smooth lateral deformation (up to `deformation_um`), as
    when an animal is put back under the microscope.

    Parameters
    ----------
    n_sessions : int
    formation, elimination : float
        Fractions of the spines of the earlier session formed and lost per interval.
    max_shift_um : (z, y, x) floats
    deformation_um : float
    seed : int
    **stack_kw
        Arguments of :func:`make_stack` (size, voxel size, dendrites, density, noise...).

    Examples
    --------
    >>> tl = make_timelapse(n_sessions=2, shape_um=(10, 30, 30), n_dendrites=1, seed=1)
    >>> a, b = (s.spines for s in tl.sessions)
    >>> kept = len(set(a.track_id) & set(b.track_id))
    >>> int(tl.planted.n_eliminated[0]) == len(a) - kept
    True
    """
    defaults = {k: v.default for k, v in inspect.signature(make_stack).parameters.items()}
    kw = {**defaults, **stack_kw, "seed": seed}
    rng = np.random.default_rng(seed)
    voxel_size, shape, shape_um = _grid(kw["shape_um"], kw["voxel_size"])
    fractions = kw["type_fractions"] or DEFAULT_TYPE_FRACTIONS
    segments, rows, planted_density = _geometry(
        rng, shape_um, kw["n_dendrites"], kw["branch_probability"], kw["spine_density"],
        kw["density_cv"], fractions, kw["max_elevation_deg"])
    somata = _place_somata(rng, segments, shape_um, kw["soma_radius_um"])
    for i, r in enumerate(rows):
        r["track_id"] = i
    next_id = len(rows)
    present, sessions, shifts, planted = rows, [], [], []
    render_kw = {k: kw[k] for k in _RENDER_ARGS}
    for s in range(n_sessions):
        if s:
            n = len(present)
            n_lost, n_new = int(round(elimination * n)), int(round(formation * n))
            lost = set(rng.choice(n, size=min(n_lost, n), replace=False).tolist())
            kept = [r for i, r in enumerate(present) if i not in lost]
            new = _new_spines(rng, segments, present, n_new, shape_um, fractions, kw)
            for r in new:
                r["track_id"] = next_id
                next_id += 1
            planted.append({"session_from": s - 1, "session_to": s, "n_from": n,
                            "n_formed": len(new), "n_eliminated": len(lost),
                            "formation": len(new) / n if n else np.nan,
                            "elimination": len(lost) / n if n else np.nan})
            present = kept + new
        shift = (np.zeros(3) if s == 0 else
                 rng.uniform(-1, 1, 3) * np.asarray(max_shift_um, float))
        move = _motion(rng, shift, deformation_um if s else 0.0)
        seg_s = [{**g, "points": move(g["points"])} for g in segments]
        rows_s = [_moved_row(r, move) for r in present]
        somata_s = [(move(c[None])[0], r) for c, r in somata]
        data = _render(rng, seg_s, rows_s, shape, voxel_size, somata=somata_s, **render_kw)
        syn = _assemble(data, voxel_size, seg_s, rows_s, planted_density,
                        {**kw, "session": s}, seed, somata_s)
        syn.spines["track_id"] = [r["track_id"] for r in rows_s]
        sessions.append(syn)
        shifts.append(shift)
    return SyntheticTimelapse(sessions, np.array(shifts), pd.DataFrame(planted))


def _motion(rng, shift, amplitude):
    """A translation plus a smooth lateral deformation, as a function of (n, 3) points."""
    wl = rng.uniform(30, 60, 2)
    ph = rng.uniform(0, 2 * np.pi, 2)

    def move(p):
        p = np.asarray(p, float).reshape(-1, 3)
        d = np.zeros_like(p)
        d[:, 1] = amplitude * np.sin(2 * np.pi * p[:, 2] / wl[0] + ph[0])
        d[:, 2] = amplitude * np.sin(2 * np.pi * p[:, 1] / wl[1] + ph[1])
        return p + shift + d

    return move


def _moved_row(r: dict, move) -> dict:
    out = dict(r)
    for cols in (("z_um", "y_um", "x_um"), ("base_z_um", "base_y_um", "base_x_um")):
        out.update(zip(cols, move([r[c] for c in cols])[0]))
    return out


def _new_spines(rng, segments, earlier, n_new, shape_um, fractions, kw) -> list[dict]:
    """n_new spines on the dendrites, at least 2.5 um (laterally) from every head of the earlier
    session (kept or lost), so that which spine is new is beyond doubt."""
    heads = np.array([[r["z_um"], r["y_um"], r["x_um"]] for r in earlier]).reshape(-1, 3)
    all_pts = [g["points"] for g in segments]
    cands = []
    for did, seg in enumerate(segments):
        others = [p for j, p in enumerate(all_pts) if j != did]
        for r in _draw_spines(rng, seg, 1.0, fractions, others, shape_um,
                              kw["max_elevation_deg"]):
            r["dendrite_id"] = did
            cands.append(r)
    chosen = []
    for i in rng.permutation(len(cands)):
        r = cands[i]
        h = np.array([r["z_um"], r["y_um"], r["x_um"]])
        if len(heads) and np.min(np.linalg.norm(heads[:, 1:] - h[1:], axis=1)) < 2.5:
            continue
        chosen.append(r)
        heads = np.vstack([heads, h])
        if len(chosen) == n_new:
            break
    return chosen


def write_synthetic(syn: SyntheticStack, path) -> dict[str, Path]:
    """Write the stack as ImageJ TIFF and its truth as CSVs beside it.

    Writes ``NAME.tif``, ``NAME_spines.csv``, ``NAME_dendrites.csv`` and ``NAME_centerlines.csv``
    and returns their paths.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.with_suffix("")
    out = {"stack": path, "spines": Path(f"{stem}_spines.csv"),
           "dendrites": Path(f"{stem}_dendrites.csv"),
           "centerlines": Path(f"{stem}_centerlines.csv")}
    write_imagej(path, syn.stack.data, syn.stack.voxel_size, compression="zlib")
    syn.spines.to_csv(out["spines"], index=False)
    syn.dendrites.to_csv(out["dendrites"], index=False)
    syn.centerlines.to_csv(out["centerlines"], index=False)
    syn.stack.path = str(path)
    return out


#: Planted mean densities (spines/um) of the demo experiment.
DEMO_CONDITIONS = {"control": 0.50, "chronic stress": 0.35, "ketamine": 0.47}


def _write_stack(job: tuple) -> None:
    """Make and write one stack of :func:`make_experiment` (runs in a worker process)."""
    path, kw = job
    write_synthetic(make_stack(**kw), path)


def make_experiment(folder, *, conditions: dict | None = None, animals_per_condition: int = 4,
                    stacks_per_animal: int = 2, animal_cv: float = 0.08,
                    dendrite_cv: float = 0.15, seed: int = 0, workers: int | None = None,
                    **stack_kw) -> Path:
    """Write a synthetic experiment (stacks, truth and a manifest) with planted densities.

    Each animal's density is its condition's planted density times a log-normal factor
    (coefficient of variation `animal_cv`); each dendrite varies around its animal's density by
    `dendrite_cv`. Every stack is a 60 x 60 um field, 16 um deep, with three unbranched
    dendrites 100 photons bright at the centre (a signal-to-noise ratio of about 10, still
    below that of typical in vivo stacks such as rr30a's); ``make_stack`` arguments can be
    changed with `stack_kw`. The stacks are made by
    `workers` processes (default: one per core; 0 makes them in this process); the result does
    not depend on it.

    Returns
    -------
    Path
        ``folder/manifest.csv`` with ``path, animal, condition, cell,
        planted_density_per_um`` (the animal's planted density) and one
        ``stacks/<animal>_<cell>.tif`` per stack with its truth CSVs beside it.

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> m = make_experiment(tempfile.mkdtemp(), animals_per_condition=1, stacks_per_animal=1,
    ...                     shape_um=(8, 20, 20), workers=0)
    >>> pd.read_csv(m)[["animal", "condition"]].values.tolist()
    [['m01', 'control'], ['m02', 'chronic stress'], ['m03', 'ketamine']]
    """
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    folder = Path(folder)
    conditions = conditions or DEMO_CONDITIONS
    rng = np.random.default_rng(seed)
    kw = {"shape_um": (16.0, 60.0, 60.0), "n_dendrites": 3, "branch_probability": 0.0,
          "peak_photons": 100.0, **stack_kw}
    rows, jobs = [], []
    for ci, (cond, density) in enumerate(conditions.items()):
        for a in range(1, animals_per_condition + 1):
            animal = f"m{ci * animals_per_condition + a:02d}"
            d = density * rng.lognormal(-animal_cv**2 / 2, animal_cv)
            for cell in range(1, stacks_per_animal + 1):
                rel = f"stacks/{animal}_{cell}.tif"
                jobs.append((folder / rel, {**kw, "spine_density": d, "density_cv": dendrite_cv,
                                            "seed": int(rng.integers(2**31))}))
                rows.append({"path": rel, "animal": animal, "condition": cond, "cell": cell,
                             "planted_density_per_um": round(d, 4)})
    workers = min(os.cpu_count() or 1, len(jobs)) if workers is None else workers
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_write_stack, jobs))
    else:
        for job in jobs:
            _write_stack(job)
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path
