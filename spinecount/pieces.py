"""Which stretches of the traced dendrites, and which spines on them, are counted (the end of
:func:`spinecount.detection.detect`, automatic tracing only): stretches that run steeply out of
the image plane are left out with the heads next to them, and heads that lie past an end of
their own dendrite or at another dendrite go."""

from __future__ import annotations

import numpy as np

from .optics import AXIAL_SCALE
from .tables import BASE, POSITION, _numbered, polyline_length
from .tracing import CONTINUE_UM, _along

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
