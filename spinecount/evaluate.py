"""Score detected spines against annotated (or synthetic) ones.

Spines are matched one to one (Hungarian assignment) when they lie within a lateral (xy)
tolerance and an axial (z) tolerance of each other, both in micrometres. Annotations often cover
only some dendrites, so scoring can be restricted to a tube around given centre lines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .tables import BASE, POSITION, centerline_length, resample_polyline

LATERAL_TOL_UM = 1.0
AXIAL_TOL_UM = 2.0
#: bootstrap draws for the confidence interval of an F1 (:func:`f1_interval`)
BOOTSTRAP_DRAWS = 10_000


@dataclass
class Evaluation:
    """Result of :func:`evaluate`.

    Attributes
    ----------
    summary : dict
        ``precision, recall, f1, f1_ci95`` (:func:`f1_interval`), ``n_pred, n_gt,
        true_positives, false_positives, false_negatives`` and the tolerances used.
    matched : DataFrame
        One row per predicted or annotated spine inside the scored region: ``status`` (tp, fp,
        fn), ``pred_index``, ``gt_index`` (row in the input tables, -1 if none), positions
        and the lateral and axial distances of each match.
    per_dendrite : DataFrame
        Per annotated dendrite (when centre lines are given): length, annotated and predicted
        spine counts and densities, and the relative density error; with the detected centre
        lines also the length of the detected dendrites along it and the density of their
        spines (:func:`match_dendrites`: ``matched_length_um, length_error, n_along,
        density_along_per_um, density_along_error``).
    """

    summary: dict
    matched: pd.DataFrame
    per_dendrite: pd.DataFrame

    def write(self, outdir) -> dict[str, Path]:
        """Write ``matched.csv``, ``per_dendrite.csv`` and ``evaluation.json`` to `outdir`."""
        outdir = Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        paths = {"matched": outdir / "matched.csv", "per_dendrite": outdir / "per_dendrite.csv",
                 "summary": outdir / "evaluation.json"}
        self.matched.to_csv(paths["matched"], index=False)
        self.per_dendrite.to_csv(paths["per_dendrite"], index=False)
        paths["summary"].write_text(json.dumps(self.summary, indent=2))
        return paths


def _pairs_within(a: np.ndarray, b: np.ndarray, lateral: float, axial: float):
    """Index pairs (i, j) with |a_i - b_j| within `lateral` in xy and `axial` in z."""
    from scipy.spatial import cKDTree

    if not len(a) or not len(b):
        return np.zeros((0, 2), int)
    # Scale z so that the axial tolerance becomes the lateral one, find candidates in a ball
    # that contains the cylinder, then keep the true cylinder members.
    s = np.array([lateral / axial, 1.0, 1.0])
    ta, tb = cKDTree(a * s), cKDTree(b * s)
    pairs = ta.query_ball_tree(tb, r=lateral * np.sqrt(2) + 1e-9)
    ij = np.array([(i, j) for i, js in enumerate(pairs) for j in js], int).reshape(-1, 2)
    if not len(ij):
        return ij
    d = a[ij[:, 0]] - b[ij[:, 1]]
    ok = (np.hypot(d[:, 1], d[:, 2]) <= lateral + 1e-9) & (np.abs(d[:, 0]) <= axial + 1e-9)
    return ij[ok]


def match_points(pred: np.ndarray, gt: np.ndarray, *, lateral_tol: float = LATERAL_TOL_UM,
                 axial_tol: float = AXIAL_TOL_UM) -> np.ndarray:
    """Match points one to one within tolerances; return (k, 2) index pairs (pred, gt).

    The assignment maximises the number of matches and, among those, minimises the summed
    normalised distance ``sqrt((lateral / lateral_tol)**2 + (axial / axial_tol)**2)``.

    Examples
    --------
    >>> pred = np.array([[0, 0, 0], [0, 0, 0.9], [5, 5, 5.0]])
    >>> gt = np.array([[0, 0, 0.5], [0, 0, 1.6]])
    >>> match_points(pred, gt).tolist()
    [[0, 0], [1, 1]]
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pred = np.asarray(pred, float).reshape(-1, 3)
    gt = np.asarray(gt, float).reshape(-1, 3)
    ij = _pairs_within(pred, gt, lateral_tol, axial_tol)
    if not len(ij):
        return np.zeros((0, 2), int)
    d = pred[ij[:, 0]] - gt[ij[:, 1]]
    cost = np.hypot(np.hypot(d[:, 1], d[:, 2]) / lateral_tol, d[:, 0] / axial_tol)
    # Solve each connected group of candidate pairs on its own (small dense problems).
    n, m = len(pred), len(gt)
    graph = coo_matrix((np.ones(len(ij)), (ij[:, 0], n + ij[:, 1])), shape=(n + m, n + m))
    _, label = connected_components(graph, directed=False)
    out = []
    big = 1e6
    for lab in np.unique(label[ij[:, 0]]):
        sel = label[ij[:, 0]] == lab
        rows, ri = np.unique(ij[sel, 0], return_inverse=True)
        cols, ci = np.unique(ij[sel, 1], return_inverse=True)
        c = np.full((len(rows), len(cols)), big)
        c[ri, ci] = cost[sel]
        r, k = linear_sum_assignment(c)
        keep = c[r, k] < big
        out.append(np.column_stack([rows[r[keep]], cols[k[keep]]]))
    res = np.vstack(out)
    return res[np.argsort(res[:, 0])]


def in_tube(points: np.ndarray, centerlines: pd.DataFrame, *, lateral_radius: float,
            axial_radius: float) -> np.ndarray:
    """Which points lie within `lateral_radius` (xy) and `axial_radius` (z) of a centre line point.

    Centre lines are resampled every 0.25 um first, so sparse tracings work too.
    """
    return _in_tube(points, _dense_centerlines(centerlines), lateral_radius, axial_radius)


def _in_tube(points, dense: np.ndarray, lateral_radius: float, axial_radius: float):
    points = np.asarray(points, float).reshape(-1, 3)
    if not len(points) or not len(dense):
        return np.zeros(len(points), bool)
    ij = _pairs_within(points, dense[:, 1:], lateral_radius, axial_radius)
    out = np.zeros(len(points), bool)
    out[ij[:, 0]] = True
    return out


def _dense_centerlines(centerlines: pd.DataFrame, step: float = 0.25) -> np.ndarray:
    """(n, 4) array of dendrite_id, z, y, x, resampled every `step` um (dendrites in order)."""
    parts = []
    for did, g in centerlines.groupby("dendrite_id", sort=True):
        p = resample_polyline(g[POSITION].to_numpy(float), step)
        parts.append(np.column_stack([np.full(len(p), did), p]))
    return np.vstack(parts) if parts else np.zeros((0, 4))


def nearest_dendrite(points: np.ndarray, centerlines: pd.DataFrame) -> np.ndarray:
    """dendrite_id of the nearest centre line for each point (in micrometres)."""
    return _nearest(points, _dense_centerlines(centerlines))[0]


def nearest_centerline_point(points, centerlines: pd.DataFrame
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each point (um): the nearest dendrite's id, the nearest centre line point, the distance.

    Examples
    --------
    >>> cl = pd.DataFrame({"dendrite_id": [4, 4], "z_um": [0, 0], "y_um": [0, 0],
    ...                    "x_um": [0, 10]})
    >>> ids, closest, dist = nearest_centerline_point([[0, 2, 5]], cl)
    >>> int(ids[0]), closest[0].tolist(), float(dist[0])
    (4, [0.0, 0.0, 5.0], 2.0)
    """
    return _nearest(points, _dense_centerlines(centerlines))


def _nearest(points, dense: np.ndarray):
    from scipy.spatial import cKDTree

    points = np.asarray(points, float).reshape(-1, 3)
    if not len(dense) or not len(points):
        return (np.full(len(points), -1), np.full((len(points), 3), np.nan),
                np.full(len(points), np.inf))
    dist, k = cKDTree(dense[:, 1:]).query(points)
    return dense[k, 0].astype(int), dense[k, 1:], dist


def _dense_with_directions(centerlines: pd.DataFrame, step: float, z_weight: float):
    """Dendrite ids, points every `step` um, unit directions along the centre lines with z
    weighted by `z_weight` (smoothed over about 2 um: traced lines step in whole z slices),
    pointing out of the line at its first point, and whether each point ends its line."""
    from scipy.ndimage import gaussian_filter1d

    dense = _dense_centerlines(centerlines, step)
    ids, pts = dense[:, 0], dense[:, 1:]
    dirs = np.zeros_like(pts)
    end = np.zeros(len(pts), bool)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    for a, b in zip(starts, np.r_[starts[1:], len(ids)]):
        end[[a, b - 1]] = True
        if b - a > 1:
            dirs[a:b] = gaussian_filter1d(np.gradient(pts[a:b], axis=0), 2.0 / step, axis=0,
                                          mode="nearest")
            dirs[a] *= -1
    dirs[:, 0] *= z_weight
    dirs /= np.maximum(np.linalg.norm(dirs, axis=1, keepdims=True), 1e-9)
    return ids, pts, dirs, end


def _along(centerlines: pd.DataFrame, traced: pd.DataFrame, lateral_um: float,
           axial_um: float, min_cos: float, step_um: float):
    """Detected centre line points every `step_um` (dendrite ids, points) and the traced
    dendrite each runs along (-1: none); see :func:`match_dendrites`."""
    from scipy.spatial import cKDTree

    scale = np.array([lateral_um / axial_um, 1.0, 1.0])  # z counts as much as its tolerance
    did, pts, dirs, _ = _dense_with_directions(centerlines, step_um, scale[0])
    tid, tpts, tdirs, tend = _dense_with_directions(traced, step_um, scale[0])
    belongs = np.full(len(pts), -1)
    if len(pts) and len(tpts):
        dist, k = cKDTree(tpts * scale).query(pts * scale,
                                              distance_upper_bound=lateral_um * np.sqrt(2))
        near = np.isfinite(dist)
        k = np.where(near, k, 0)
        d = pts - tpts[k]
        near &= (np.hypot(d[:, 1], d[:, 2]) <= lateral_um) & (np.abs(d[:, 0]) <= axial_um)
        near &= np.abs((dirs * tdirs[k]).sum(axis=1)) >= min_cos
        near &= ~tend[k] | ((d * scale * tdirs[k]).sum(axis=1) <= step_um)  # not past an end
        belongs = np.where(near, tid[k], -1)
        # A detected dendrite that only touches the traced one (a side branch leaving it at a
        # junction) is not part of it: at least half of it or 2 * lateral_um must run along it.
        n_own = dict(zip(*np.unique(did, return_counts=True)))
        pairs, n_along = np.unique(np.c_[did, belongs][near], axis=0, return_counts=True)
        for (i, t), n in zip(pairs, n_along):
            if n * step_um < 2 * lateral_um and n < n_own[i] / 2:
                belongs[(did == i) & (belongs == t)] = -1
    return did, pts, belongs


def _spines_along(spines: pd.DataFrame, did, pts, belongs) -> np.ndarray:
    from scipy.spatial import cKDTree

    cols = BASE if set(BASE) <= set(spines.columns) else POSITION
    where = spines[cols].to_numpy(float)
    out = np.full(len(spines), -1)
    sid = spines["dendrite_id"].to_numpy()
    for d in np.intersect1d(sid, did):  # per dendrite: its point nearest to each base
        own, these = np.flatnonzero(did == d), np.flatnonzero(sid == d)
        out[these] = belongs[own[cKDTree(pts[own]).query(where[these])[1]]]
    return out


def spines_along(spines: pd.DataFrame, centerlines: pd.DataFrame, traced: pd.DataFrame, *,
                 lateral_um: float = 1.5, axial_um: float = 3.0, min_cos: float = 0.7,
                 step_um: float = 0.25) -> np.ndarray:
    """The traced dendrite each detected spine belongs to, by its own dendrite (-1: none).

    A spine belongs to a traced dendrite where the point of its own detected dendrite nearest
    to its base runs along that traced dendrite (as in :func:`match_dendrites`). Spines of
    dendrites that cross a traced one, or pass close by, belong to none: an annotation of the
    traced dendrites says nothing about them.

    Parameters
    ----------
    spines : DataFrame
        Detected spines with ``dendrite_id`` and base columns (``base_z_um, ...``; the head
        position where there are none).
    centerlines, traced : DataFrame
        Detected and traced centre lines (``dendrite_id, z_um, y_um, x_um``).

    Returns
    -------
    ndarray of int, one per spine

    Examples
    --------
    A detected dendrite 7 runs along traced dendrite 1 (y = 10 um); dendrite 8 crosses it.

    >>> t = np.linspace(0, 20, 41)
    >>> traced = pd.DataFrame({"dendrite_id": 1, "z_um": 0.0, "y_um": 10.0, "x_um": t})
    >>> found = pd.DataFrame({"dendrite_id": np.repeat([7, 8], 41), "z_um": 0.0,
    ...                       "y_um": np.r_[np.full(41, 10.4), t],
    ...                       "x_um": np.r_[t, np.full(41, 10.0)]})
    >>> spines = pd.DataFrame({"dendrite_id": [7, 8], "z_um": 0.0, "y_um": [11.5, 9.0],
    ...                        "x_um": [5.0, 11.0]})
    >>> spines_along(spines, found, traced).tolist()
    [1, -1]
    """
    return _spines_along(spines, *_along(centerlines, traced, lateral_um, axial_um, min_cos,
                                         step_um))


def match_dendrites(centerlines: pd.DataFrame, traced: pd.DataFrame, *,
                    spines: pd.DataFrame | None = None, lateral_um: float = 1.5,
                    axial_um: float = 3.0, min_cos: float = 0.7,
                    step_um: float = 0.25) -> pd.DataFrame:
    """Detected dendrite length and spine density along each traced dendrite.

    A detected centre line point belongs to a traced dendrite when it lies within `lateral_um`
    (xy) and `axial_um` (z) of it, runs along it (the cosine of the angle between the two
    directions at least `min_cos`, with z weighted by ``lateral_um / axial_um``) and lies not
    beyond its ends; a detected dendrite counts only where at least half of it, or
    ``2 * lateral_um``, runs along. So dendrites that cross it, pass close by, dive through it
    in z, branch off it at a junction or go on past the traced stretch do not count. A spine
    belongs where the nearest point of its own dendrite to
    its base belongs (:func:`spines_along`). This is the length and density a user would read
    off the detected dendrites that match the traced one.

    Parameters
    ----------
    centerlines : DataFrame
        Detected centre lines (``dendrite_id, z_um, y_um, x_um``).
    traced : DataFrame
        Traced (annotated) centre lines, the same columns.
    spines : DataFrame, optional
        Detected spines with ``dendrite_id`` and base columns (``base_z_um, ...``; the head
        position where there are none).

    Returns
    -------
    DataFrame
        Per traced dendrite: ``dendrite_id, length_um`` (traced), ``matched_length_um``,
        ``length_error``, and with `spines` also ``n_spines, density_per_um``.

    Examples
    --------
    >>> line = lambda i, y0, x0, y1, x1: pd.DataFrame({"dendrite_id": i, "z_um": 0.0,
    ...     "y_um": np.linspace(y0, y1, 50), "x_um": np.linspace(x0, x1, 50)})
    >>> traced = line(1, 10, 0, 10, 20)
    >>> found = pd.concat([line(7, 10.4, 0, 10.4, 20), line(8, 0, 10, 20, 10)])  # along, across
    >>> m = match_dendrites(found, traced)
    >>> round(float(m["matched_length_um"].iloc[0]))
    20
    """
    did, pts, belongs = _along(centerlines, traced, lateral_um, axial_um, min_cos, step_um)
    spine_of = None if spines is None else _spines_along(spines, did, pts, belongs)
    rows = []
    for t, g in traced.groupby("dendrite_id", sort=True):
        length = centerline_length(g[POSITION].to_numpy(float))
        matched = step_um * int((belongs == t).sum())
        row = {"dendrite_id": t, "length_um": length, "matched_length_um": matched,
               "length_error": matched / length - 1 if length else np.nan}
        if spine_of is not None:
            n = int((spine_of == t).sum())
            row.update(n_spines=n, density_per_um=n / matched if matched else np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def distal_edge(spines: pd.DataFrame) -> np.ndarray:
    """The edge of each spine's head furthest from its dendrite, as seen in the image plane:
    the head centre moved away from the base, in the image plane, by the head's radius (z as
    the head's). Annotators often click there rather than on the head's brightest point (on
    rr30a, MapManager clicks lie a median 0.6 um further out than the brightest point of the
    head). Where the head diameter or the base is unknown, the head centre.

    Returns
    -------
    ndarray, shape (n, 3)
        ``z, y, x`` in um.

    Examples
    --------
    >>> s = pd.DataFrame({"z_um": [2.0], "y_um": [5.0], "x_um": [1.0], "base_z_um": [1.0],
    ...                   "base_y_um": [4.0], "base_x_um": [1.0], "head_diameter_um": [0.8]})
    >>> distal_edge(s).round(2).tolist()
    [[2.0, 5.4, 1.0]]
    """
    head = spines[POSITION].to_numpy(float).reshape(-1, 3)
    if not all(c in spines for c in [*BASE, "head_diameter_um"]):
        return head
    d = head[:, 1:] - spines[BASE[1:]].to_numpy(float)
    norm = np.linalg.norm(d, axis=1)
    shift = (spines["head_diameter_um"].to_numpy(float) / 2 / np.where(norm > 0, norm, np.nan)
             )[:, None] * d
    out = head.copy()
    out[:, 1:] += np.nan_to_num(shift)
    return out


def f1_interval(true_positives: int, false_positives: int, false_negatives: int, *,
                level: float = 0.95, draws: int = BOOTSTRAP_DRAWS, seed: int = 0
                ) -> tuple[float, float]:
    """Confidence interval of an F1 score, by the bootstrap over the scored spines.

    The matched pairs, the unmatched detections and the unmatched annotations are drawn again
    with replacement, as many as there were (a multinomial draw of the three counts), and the
    interval is the central `level` of the F1s of the draws (percentiles). On one stack of a
    hundred or so annotated spines it reaches about 0.06 either side of the F1: only a larger
    difference from a goal, or from another detector's F1 on the same stack, is clear. Spines
    of one dendrite are not independent (a dim stretch hides several), so the true
    uncertainty is larger still.

    Parameters
    ----------
    true_positives, false_positives, false_negatives : int
        Matched pairs, unmatched detections and unmatched annotations (:func:`evaluate`).
    level : float
        Coverage of the interval.
    draws : int
        Bootstrap draws.
    seed : int
        Seed of the draws (the same counts give the same interval).

    Returns
    -------
    tuple of float
        Lower and upper limit (NaN for nothing scored).

    Examples
    --------
    >>> lo, hi = f1_interval(100, 25, 35)
    >>> round(2 * 100 / (2 * 100 + 25 + 35), 3), round(lo, 2), round(hi, 2)
    (0.769, 0.71, 0.82)
    """
    counts = np.array([true_positives, false_positives, false_negatives], float)
    n = int(counts.sum())
    if n == 0:
        return float("nan"), float("nan")
    tp, fp, fn = np.random.default_rng(seed).multinomial(n, counts / n, size=draws).T
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(f1, [tail, 100 - tail])
    return float(lo), float(hi)


def evaluate(pred: pd.DataFrame, gt: pd.DataFrame, *, lateral_tol: float = LATERAL_TOL_UM,
             axial_tol: float = AXIAL_TOL_UM, centerlines: pd.DataFrame | None = None,
             tube_lateral_um: float = 4.0, tube_axial_um: float = 5.0,
             pred_point: str = "head", pred_centerlines: pd.DataFrame | None = None
             ) -> Evaluation:
    """Match predicted spines to annotated spines and report precision, recall and F1.

    Parameters
    ----------
    pred, gt : DataFrame
        Spine tables with ``z_um, y_um, x_um`` (see :func:`spinecount.tables.read_spines`).
    lateral_tol, axial_tol : float
        Largest xy and z distance (um) at which a prediction counts as the annotated spine.
    centerlines : DataFrame, optional
        Centre lines of the annotated dendrites (``dendrite_id, z_um, y_um, x_um``). When given,
        only spines inside the tube around them are scored, and densities are reported per
        dendrite (spines are attributed to the nearest centre line, lengths are measured along
        the smoothed centre lines, :func:`spinecount.tables.centerline_length`).
    tube_lateral_um, tube_axial_um : float
        Tube radius in xy and half-height in z (um).
    pred_point : {"head", "distal_edge"}
        Which point of a predicted spine is compared with the annotated one: its head centre
        (``z_um, y_um, x_um``), or the edge of its head furthest from the dendrite in the image
        plane (:func:`distal_edge`), for annotations clicked there. Positions in ``matched``
        are the points compared.
    pred_centerlines : DataFrame, optional
        The detected dendrites' centre lines (with `centerlines`): ``per_dendrite`` then also
        gives, per annotated dendrite, the length of the detected dendrites that run along it
        and the density of their spines (:func:`match_dendrites`; `pred` then needs
        ``dendrite_id``).

    Returns
    -------
    Evaluation

    Examples
    --------
    >>> pred = pd.DataFrame({"z_um": [0, 0, 3], "y_um": [0, 5, 9], "x_um": [0, 0, 9]})
    >>> gt = pd.DataFrame({"z_um": [0.5, 0], "y_um": [0.3, 5.0], "x_um": [0, 1.5]})
    >>> ev = evaluate(pred, gt)
    >>> ev.summary["true_positives"], round(ev.summary["precision"], 3), ev.summary["recall"]
    (1, 0.333, 0.5)
    """
    points = {"head": lambda t: t[POSITION].to_numpy(float), "distal_edge": distal_edge}
    if pred_point not in points:
        raise ValueError(f"pred_point must be one of {sorted(points)}, not {pred_point!r}")
    p_all = points[pred_point](pred)
    g_all = gt[POSITION].to_numpy(float)
    p_idx, g_idx = np.arange(len(p_all)), np.arange(len(g_all))
    if centerlines is not None:
        dense = _dense_centerlines(centerlines)
        p_idx = p_idx[_in_tube(p_all, dense, tube_lateral_um, tube_axial_um)]
        g_idx = g_idx[_in_tube(g_all, dense, tube_lateral_um, tube_axial_um)]
    P, G = p_all[p_idx], g_all[g_idx]
    pairs = match_points(P, G, lateral_tol=lateral_tol, axial_tol=axial_tol)
    tp = len(pairs)
    n_pred, n_gt = len(P), len(G)
    precision = tp / n_pred if n_pred else float("nan")
    recall = tp / n_gt if n_gt else float("nan")
    f1 = 2 * tp / (n_pred + n_gt) if (n_pred + n_gt) else float("nan")

    rows = []
    matched_p, matched_g = set(pairs[:, 0].tolist()), set(pairs[:, 1].tolist())
    for i, j in pairs:
        d = P[i] - G[j]
        rows.append(("tp", p_idx[i], g_idx[j], *P[i], *G[j], float(np.hypot(d[1], d[2])),
                     float(abs(d[0]))))
    nan3 = (np.nan, np.nan, np.nan)
    for i in sorted(set(range(n_pred)) - matched_p):
        rows.append(("fp", p_idx[i], -1, *P[i], *nan3, np.nan, np.nan))
    for j in sorted(set(range(n_gt)) - matched_g):
        rows.append(("fn", -1, g_idx[j], *nan3, *G[j], np.nan, np.nan))
    matched = pd.DataFrame(rows, columns=[
        "status", "pred_index", "gt_index", "pred_z_um", "pred_y_um", "pred_x_um",
        "gt_z_um", "gt_y_um", "gt_x_um", "lateral_distance_um", "axial_distance_um"])
    if "spine_id" in pred:
        matched["pred_spine_id"] = [pred["spine_id"].iloc[i] if i >= 0 else -1
                                    for i in matched["pred_index"]]
    if "spine_id" in gt:
        matched["gt_spine_id"] = [gt["spine_id"].iloc[j] if j >= 0 else -1
                                  for j in matched["gt_index"]]

    per_dendrite = pd.DataFrame(columns=["dendrite_id", "length_um", "n_gt", "n_pred",
                                         "density_gt_per_um", "density_pred_per_um",
                                         "density_error"])
    if centerlines is not None and len(centerlines):
        pd_, gd_ = _nearest(P, dense)[0], _nearest(G, dense)[0]
        recs = []
        for did, g in centerlines.groupby("dendrite_id", sort=True):
            length = centerline_length(g[POSITION].to_numpy(float))
            ng, npred = int((gd_ == did).sum()), int((pd_ == did).sum())
            recs.append({"dendrite_id": int(did), "length_um": length, "n_gt": ng,
                         "n_pred": npred, "density_gt_per_um": ng / length,
                         "density_pred_per_um": npred / length,
                         "density_error": (npred - ng) / ng if ng else np.nan})
        per_dendrite = pd.DataFrame(recs)
        if pred_centerlines is not None:
            along = match_dendrites(pred_centerlines, centerlines, spines=pred).rename(
                columns={"n_spines": "n_along", "density_per_um": "density_along_per_um"})
            per_dendrite = per_dendrite.merge(along.drop(columns="length_um"), on="dendrite_id")
            per_dendrite["density_along_error"] = (per_dendrite["density_along_per_um"]
                                                   / per_dendrite["density_gt_per_um"]
                                                   .replace(0, np.nan) - 1)

    summary = {
        "precision": precision, "recall": recall, "f1": f1,
        "f1_ci95": list(f1_interval(tp, n_pred - tp, n_gt - tp)), "n_pred": n_pred, "n_gt": n_gt,
        "true_positives": tp, "false_positives": n_pred - tp, "false_negatives": n_gt - tp,
        "lateral_tol_um": lateral_tol, "axial_tol_um": axial_tol, "pred_point": pred_point,
        "tube": None if centerlines is None else {"lateral_um": tube_lateral_um,
                                                   "axial_um": tube_axial_um},
        "mean_abs_density_error": (float(per_dendrite["density_error"].abs().mean())
                                   if len(per_dendrite) else None),
    }
    return Evaluation(summary, matched, per_dendrite)
