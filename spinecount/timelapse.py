"""Time-lapse: follow each spine across imaging sessions; formation, elimination and survival.

``link`` takes the spine tables of one field in session order (and, for registration, the
registrations of each session onto the first, :func:`spinecount.registration.register`), and
gives every spine a persistent ``track_id``:

1. every spine (and centre line) is mapped into the first session's frame;
2. dendrites are matched from each session to the one before: a dendrite belongs to the earlier
   dendrite that most of its registered centre line runs along (within 2 um);
3. spines of consecutive sessions are matched one to one (Hungarian assignment, scipy) on the
   distance of their registered heads and bases (the root mean square of the two distances;
   the head's alone where a table has no bases), with z counted at a quarter weight (axial
   resolution and the z of a click are poor); pairs further apart than the gate (``gate_um``)
   are never linked
   (nor, with ``same_dendrite_only``, spines on dendrites that do not match);
4. with the detector's candidates (peaks that fell short of a spine's tests,
   :attr:`spinecount.detection.Detection.candidates`), a spine without a partner in the next
   session is matched one to one to that session's candidates, and a spine without a partner
   in the session before to that session's candidates, within the distance that 95 % of the
   spines linked across the interval lie within (``RESCUE_PERCENTILE``; only where at least
   ``RESCUE_MIN_LINKS`` were linked): a spine found on one day and missed on the next by a
   narrow margin is the same spine, not one lost and one formed. A candidate so found counts
   as a spine of its session (``rescued`` in the tracks);
5. a spine without a partner in the session before starts a new track.

Fates of a track (a spine's whole history):

``stable``
    present in the first and the last session;
``eliminated``
    present in the first session, absent in the last;
``formed``
    absent in the first session, present in the last;
``transient``
    absent in the first and the last session, present in between.

Turnover per dendrite and interval (session k to k+1), as usually defined (for example Holtmaat
et al. 2005, Neuron 45:279; Holtmaat et al. 2009, Nat Protoc 4:1128), relative to the spines
present at the earlier session N(k):

- formation = spines at k+1 whose track is not at k, divided by N(k);
- elimination = spines at k whose track is not at k+1, divided by N(k);
- turnover ratio = (formed + eliminated) / (2 N(k)).

Survival: the fraction of the spines present at the first session that are still present at
session k (``survival_first``), and of the spines newly formed at the second session that are
still present at session k >= 1 (``survival_new``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .results import RUN_FILE, replace_atomically
from .tables import BASE, POSITION

FATES = ("stable", "formed", "eliminated", "transient")
TRACKS_FILE = "tracks.csv"
#: Links corrected by a reviewer (napari plugin), beside tracks.csv; they win over it.
REVIEWED_TRACKS_FILE = "tracks_reviewed.csv"
#: A spine's head registered onto the first session's frame.
REF_POSITION = [f"ref_{c}" for c in POSITION]
TRACK_COLUMNS = ["session", "row", "spine_id", "track_id", "fate", "dendrite", *POSITION,
                 *REF_POSITION, "rescued"]
#: Said wherever turnover comes from spines nobody reviewed.
AUTOMATIC_TURNOVER_CAVEAT = (
    "formation and elimination from automatic detections are not reliable: most spines they "
    "call formed or lost are detection errors, a spine wrongly found in one session or missed "
    "in the other (on the real benchmark sessions 6 of 35 such calls are true changes, and "
    "the rates, 16 and 10 % against a human's 12 and 16 %, come near them by chance); review "
    "the spines of every session (napari plugin) before reporting turnover")
#: Default gate (um): registered heads further apart than this are different spines.
GATE_UM = 2.0
#: z distances count this much in the linking cost (axial resolution and click z are poor).
Z_WEIGHT = 0.25
#: Registered bases, beside the heads, in the linking cost: heads move between days (necks
#: bend) and clicks on a head vary more than the base (on rr30a the persistent spines'
#: registered heads lie a median 0.52 um apart laterally and 0.82 um in z, their bases 0.41 and
#: 0.49 um); the heads keep spines on opposite sides of a shaft apart.
REF_BASE = ["_ref_base_z", "_ref_base_y", "_ref_base_x"]
#: A spine without a partner is looked for among the other session's candidates within this
#: percentile of the linking costs of the spines linked across the interval ...
RESCUE_PERCENTILE = 95
#: ... where at least this many were linked (else no candidate is taken).
RESCUE_MIN_LINKS = 10


def _match_dendrites(cl_new: pd.DataFrame, cl_old: pd.DataFrame, tol_um: float = 2.0) -> dict:
    """dendrite_id (new session) -> dendrite_id (old session) that most of it runs along."""
    from scipy.spatial import cKDTree

    if cl_new is None or cl_old is None or not len(cl_new) or not len(cl_old):
        return {}
    tree = cKDTree(cl_old[POSITION].to_numpy(float))
    old_ids = cl_old["dendrite_id"].to_numpy()
    out = {}
    for did, g in cl_new.groupby("dendrite_id"):
        d, k = tree.query(g[POSITION].to_numpy(float))
        near = old_ids[k[d <= tol_um]]
        if len(near) >= 0.3 * len(g):
            vals, counts = np.unique(near, return_counts=True)
            out[int(did)] = int(vals[np.argmax(counts)])
    return out


def link(tables: list[pd.DataFrame], *, registrations=None, centerlines=None,
         gate_um: float = GATE_UM, same_dendrite_only: bool = False,
         same_dendrite_ids: bool = False, candidates=None) -> pd.DataFrame:
    """Link the spines of one field across sessions.

    Parameters
    ----------
    tables : list of DataFrame
        Spine tables in session order, with at least ``z_um, y_um, x_um`` (automatic, reviewed
        or annotation tables; ``base_*_um`` where known).
    registrations : list of Registration, optional
        One per session, mapping it onto the first (the first is usually the identity);
        default: no movement.
    centerlines : list of DataFrame or None, optional
        Dendrite centre lines of each session (``dendrite_id, z_um, y_um, x_um``). With them
        dendrites are matched across sessions and turnover is reported per dendrite.
    gate_um : float
        Largest linking cost (um) for two spines to be the same.
    same_dendrite_only : bool
        Never link spines on dendrites that were matched to different dendrites. Off by
        default: with fragmented automatic tracings it breaks more true links than it saves
        (see the README's time-lapse section for the measurements).
    same_dendrite_ids : bool
        Without centre lines: the tables' ``dendrite_id`` (``segment_id`` of an annotation)
        name the same dendrite in every session, as in MapManager annotations.
    candidates : list of DataFrame or None, optional
        Per session, the detector's candidates (``Detection.candidates``, or None). A spine
        without a partner in the next or the previous session is looked for among that
        session's candidates (step 4 of the module), and a candidate found counts as a spine of
        its session (``rescued``). Only sessions whose table is automatic
        (:func:`spines_source`) take candidates: a reviewer decided what a reviewed one holds.

    Returns
    -------
    DataFrame
        One row per spine: ``session`` (position in `tables`, from 0), ``row`` (0-based row in
        its table; for a rescued candidate the table's length plus its row among the
        candidates), ``spine_id``, ``track_id``, ``fate``, ``dendrite`` (id of the dendrite
        track, from the first session it was seen in; -1 when unknown), its own ``z_um, y_um,
        x_um``, its registered ``ref_z_um, ref_y_um, ref_x_um`` and ``rescued``.

    Examples
    --------
    >>> import pandas as pd
    >>> a = pd.DataFrame({"z_um": [1.0, 1.0, 1.0], "y_um": [5.0, 10.0, 15.0], "x_um": 5.0})
    >>> b = pd.DataFrame({"z_um": [1.0, 1.0], "y_um": [10.3, 20.0], "x_um": 5.2})
    >>> link([a, b])[["session", "row", "track_id", "fate"]].values.tolist()
    [[0, 0, 0, 'eliminated'], [0, 1, 1, 'stable'], [0, 2, 2, 'eliminated'], [1, 0, 1, 'stable'], [1, 1, 3, 'formed']]
    """
    from .registration import IDENTITY

    n = len(tables)
    registrations = registrations or [IDENTITY] * n
    centerlines = centerlines or [None] * n
    candidates = candidates or [None] * n
    if not len(registrations) == len(centerlines) == len(candidates) == n:
        raise ValueError("give one registration, one centre line table (or None) and one "
                         "candidate table (or None) per session")
    candidates = [c if spines_source(t) == "automatic" else None
                  for t, c in zip(tables, candidates)]
    ref_cl = [None if c is None or not len(c) else
              c.assign(**dict(zip(POSITION, registrations[s].transform(
                  c[POSITION].to_numpy(float)).T))) for s, c in enumerate(centerlines)]
    same_ids = same_dendrite_ids and all(c is None for c in ref_cl)
    parts, next_track, next_dend = [], 0, 0
    dend_track: dict[tuple[int, int], int] = {}  # (session, dendrite_id) -> dendrite track
    spare = None  # candidates of the session before that no spine took
    for s, table in enumerate(tables):
        # dendrite tracks
        matched = _match_dendrites(ref_cl[s], ref_cl[s - 1]) if s else {}
        continued = set()  # dendrites of this session found in the one before
        if ref_cl[s] is not None:
            for did in sorted(ref_cl[s]["dendrite_id"].unique()):
                prev = matched.get(int(did))
                if prev is not None and (s - 1, prev) in dend_track:
                    dend_track[(s, int(did))] = dend_track[(s - 1, prev)]
                    continued.add(int(did))
                else:
                    dend_track[(s, int(did))] = next_dend
                    next_dend += 1
        kw = {"same_ids": same_ids, "same_dendrite_only": same_dendrite_only}
        cur = _frame(table, s, registrations[s], ref_cl[s], dend_track, continued, **kw)
        cand = None if candidates[s] is None else _frame(
            candidates[s], s, registrations[s], ref_cl[s], dend_track, continued, **kw,
            first_row=len(table), rescued=True)
        if s and len(parts[-1]) and len(cur):
            prev = parts[-1]
            r, c, ok, cost = _assign(prev, cur, gate_um)
            cur.loc[c[ok], "track_id"] = prev["track_id"].to_numpy()[r[ok]]
            # a dendrite met by a linked spine keeps the earlier dendrite track
            same = (cur.loc[c[ok], "dendrite"].to_numpy() < 0)
            cur.loc[c[ok][same], "dendrite"] = prev["dendrite"].to_numpy()[r[ok]][same]
            if ok.sum() >= RESCUE_MIN_LINKS:
                gate = min(gate_um, float(np.percentile(cost[ok], RESCUE_PERCENTILE)))
                if cand is not None:  # spines of the session before, missed in this one
                    lost = prev[~prev["track_id"].isin(cur["track_id"])]
                    found, cand = _rescue(lost, cand, gate)
                    cur = pd.concat([cur, found], ignore_index=True)
                if spare is not None:  # spines new in this session, missed in the one before
                    found, _ = _rescue(cur[cur["track_id"] < 0], spare, gate, later=False)
                    ids = np.arange(next_track, next_track + len(found))
                    next_track += len(found)
                    cur.loc[found.pop("_partner").to_numpy(), "track_id"] = ids
                    parts[-1] = pd.concat([prev, found.assign(track_id=ids)],
                                          ignore_index=True)
        spare = cand
        new = cur["track_id"] < 0
        cur.loc[new, "track_id"] = np.arange(next_track, next_track + new.sum())
        next_track += int(new.sum())
        parts.append(cur)
    tracks = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=TRACK_COLUMNS)
    tracks["fate"] = fates(tracks, n)
    return tracks[TRACK_COLUMNS].astype({"session": int, "row": int, "track_id": int,
                                         "dendrite": int, "rescued": bool})


def _frame(table, s, registration, ref_cl, dend_track, continued, *, same_ids,
           same_dendrite_only, first_row=0, rescued=False) -> pd.DataFrame:
    """One session's spines (or candidates, numbered from `first_row`) as rows for linking:
    registered heads and bases, dendrite track and the dendrite that gates their links."""
    pos = table[POSITION].to_numpy(float).reshape(-1, 3)
    ref = registration.transform(pos)
    base = (table[BASE].to_numpy(float) if all(c in table for c in BASE)
            else np.full_like(pos, np.nan))
    ref_base = np.where(np.isfinite(base), registration.transform(np.nan_to_num(base)), ref)
    own_dend = _spine_dendrites(table, ref_base, ref_cl)
    dtrack = np.array([dend_track.get((s, int(d)), -1) for d in own_dend], int)
    # only a dendrite found again constrains the links; one without a match in the session
    # before (a piece of a fragmented tracing) leaves its spines free
    constrain = np.array([same_dendrite_only and int(d) in continued for d in own_dend], bool)
    if same_ids:  # no centre lines: the tables' own dendrite ids name the same dendrites
        dtrack = table["dendrite_id"].to_numpy(int)
        constrain = np.full(len(table), same_dendrite_only)
    return pd.DataFrame({"session": s, "row": first_row + np.arange(len(table)),
                         "spine_id": (table["spine_id"].to_numpy() if "spine_id" in table
                                      else np.arange(len(table))),
                         "track_id": -1, "dendrite": dtrack, **dict(zip(POSITION, pos.T)),
                         **dict(zip(REF_POSITION, ref.T)), **dict(zip(REF_BASE, ref_base.T)),
                         "_gate_dendrite": np.where(constrain, dtrack, -1), "rescued": rescued})


def _rescue(alone: pd.DataFrame, cand: pd.DataFrame, gate_um: float, *, later: bool = True
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Candidates matched one to one, within `gate_um`, to spines without a partner (`alone`,
    of the session before the candidates' if `later`, else of the one after). Returns the
    candidates found, with their partner's track (`later`) or their partner's index in
    `alone` (``_partner``), and the candidates left."""
    if not len(alone) or not len(cand):
        return cand.iloc[:0].assign(_partner=np.zeros(0, int)), cand
    if later:
        r, c, ok, _ = _assign(alone, cand, gate_um)
        ia, ic = r[ok], c[ok]
    else:
        r, c, ok, _ = _assign(cand, alone, gate_um)
        ia, ic = c[ok], r[ok]
    found = cand.iloc[ic].assign(track_id=alone["track_id"].to_numpy()[ia],
                                 _partner=alone.index.to_numpy()[ia])
    if later:
        found = found.drop(columns="_partner")
    return found.reset_index(drop=True), cand.drop(index=cand.index[ic])


def _assign(prev, cur, gate_um):
    """Hungarian assignment of `prev` to `cur` rows: rows, columns, whether within the gate,
    and their costs."""
    from scipy.optimize import linear_sum_assignment

    cost = _cost(prev, cur, gate_um)
    r, c = linear_sum_assignment(np.where(np.isfinite(cost), cost, 1e6))
    return r, c, np.isfinite(cost[r, c]), cost[r, c]


def _spine_dendrites(table, ref_base, ref_cl) -> np.ndarray:
    """dendrite_id of each spine in its own session (nearest registered centre line)."""
    from .evaluate import nearest_dendrite

    if ref_cl is None:
        return np.full(len(table), -1)
    if "dendrite_id" in table and table["dendrite_id"].isin(ref_cl["dendrite_id"]).all():
        return table["dendrite_id"].to_numpy(int)
    return nearest_dendrite(ref_base, ref_cl)


def _cost(prev: pd.DataFrame, cur: pd.DataFrame, gate_um: float) -> np.ndarray:
    """Linking cost (um) between spines of consecutive sessions; inf beyond the gate or
    across dendrites that do not match."""
    cost2 = 0
    for cols in (REF_POSITION, REF_BASE):  # mean square of head and base distances
        d = prev[cols].to_numpy()[:, None, :] - cur[cols].to_numpy()[None, :, :]
        d[..., 0] *= Z_WEIGHT
        cost2 = cost2 + 0.5 * (d**2).sum(axis=-1)
    pd_, cd_ = prev["dendrite"].to_numpy(), cur["_gate_dendrite"].to_numpy()
    known = (pd_[:, None] >= 0) & (cd_[None, :] >= 0)
    cost2[known & (pd_[:, None] != cd_[None, :])] = np.inf
    cost = np.sqrt(cost2)
    cost[cost > gate_um] = np.inf
    return cost


def fates(tracks: pd.DataFrame, n_sessions: int) -> pd.Series:
    """Fate of each row's track: stable, formed, eliminated or transient (see the module)."""
    first = tracks.groupby("track_id")["session"].transform(
        lambda s: (s == 0).any())
    last = tracks.groupby("track_id")["session"].transform(
        lambda s: (s == n_sessions - 1).any())
    return pd.Series(np.select([first & last, first & ~last, ~first & last],
                               ["stable", "eliminated", "formed"], "transient"),
                     index=tracks.index)


def turnover(tracks: pd.DataFrame) -> pd.DataFrame:
    """Formation, elimination and turnover ratio per dendrite and interval.

    Returns one row per ``dendrite`` (dendrite track; -1 for spines without one) and interval
    (``session_from``, ``session_to``) with ``n_from``, ``n_to``, ``n_formed``,
    ``n_eliminated``, ``formation``, ``elimination``, ``turnover_ratio`` (fractions of
    ``n_from``), and a row ``dendrite = "all"`` per interval for the whole field.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"session": [0, 0, 0, 0, 1, 1, 1, 1], "track_id": [0, 1, 2, 3, 0, 1, 2, 9],
    ...                   "dendrite": 0})
    >>> r = turnover(t).iloc[0]
    >>> int(r.n_from), int(r.n_formed), int(r.n_eliminated), float(r.formation)
    (4, 1, 1, 0.25)
    """
    rows = []
    sessions = sorted(tracks["session"].unique())
    groups = [(int(d), g) for d, g in tracks.groupby("dendrite")] + [("all", tracks)]
    for dend, g in groups:
        for a, b in zip(sessions[:-1], sessions[1:]):
            ta = set(g.loc[g["session"] == a, "track_id"])
            tb = set(g.loc[g["session"] == b, "track_id"])
            n_from, formed, lost = len(ta), len(tb - ta), len(ta - tb)
            rows.append({"dendrite": dend, "session_from": int(a), "session_to": int(b),
                         "n_from": n_from, "n_to": len(tb), "n_formed": formed,
                         "n_eliminated": lost,
                         "formation": formed / n_from if n_from else np.nan,
                         "elimination": lost / n_from if n_from else np.nan,
                         "turnover_ratio": (formed + lost) / (2 * n_from) if n_from else np.nan})
    return pd.DataFrame(rows)


def survival(tracks: pd.DataFrame) -> pd.DataFrame:
    """Surviving fractions per session: of the spines present at the first session
    (``survival_first``) and of those newly formed at the second (``survival_new``)."""
    sessions = sorted(tracks["session"].unique())
    present = {s: set(tracks.loc[tracks["session"] == s, "track_id"]) for s in sessions}
    first = present[sessions[0]]
    new = (present[sessions[1]] - first) if len(sessions) > 1 else set()
    rows = []
    for s in sessions:
        later = s > sessions[0]
        rows.append({"session": int(s), "n_first": len(first),
                     "survival_first": len(first & present[s]) / len(first) if first else np.nan,
                     "n_new": len(new) if later else 0,
                     "survival_new": (len(new & present[s]) / len(new)
                                      if new and later else np.nan)})
    return pd.DataFrame(rows)


def break_link(tracks: pd.DataFrame, session: int, row: int) -> pd.DataFrame:
    """Cut a track before the spine at (`session`, `row`): it and its later sessions become a
    new track. Fates are recomputed.

    Examples
    --------
    >>> t = pd.DataFrame({"session": [0, 1, 2], "row": [0, 0, 0], "track_id": [7, 7, 7]})
    >>> break_link(t, 1, 0)[["track_id", "fate"]].values.tolist()
    [[7, 'eliminated'], [8, 'formed'], [8, 'formed']]
    """
    t = tracks.copy()
    tid = _track_at(t, session, row)
    later = (t["track_id"] == tid) & (t["session"] >= session)
    t.loc[later, "track_id"] = int(t["track_id"].max()) + 1
    t["fate"] = fates(t, int(t["session"].max()) + 1)
    return t


def make_link(tracks: pd.DataFrame, earlier: tuple[int, int], later: tuple[int, int]
              ) -> pd.DataFrame:
    """Link the spine `later` = (session, row) to the spine `earlier` = (session - 1, row): from
    its session on, its track continues the earlier spine's track. Whatever was linked to either
    of them across that interval is cut. Fates are recomputed.

    Examples
    --------
    >>> t = pd.DataFrame({"session": [0, 1, 1], "row": [0, 0, 1], "track_id": [0, 0, 1]})
    >>> make_link(t, (0, 0), (1, 1))[["track_id", "fate"]].values.tolist()
    [[0, 'stable'], [2, 'formed'], [0, 'stable']]
    """
    (s1, r1), (s2, r2) = earlier, later
    if s2 != s1 + 1:
        raise ValueError("links join spines of consecutive sessions")
    t = tracks.copy()
    a = _track_at(t, s1, r1)
    taken = t.index[(t["track_id"] == a) & (t["session"] == s2)]
    if len(taken):  # the earlier spine's old partner starts its own track
        t = break_link(t, s2, int(t.loc[taken[0], "row"]))
    b = _track_at(t, s2, r2)
    if (t.loc[t["track_id"] == b, "session"] < s2).any():  # cut its own past
        t = break_link(t, s2, r2)
        b = _track_at(t, s2, r2)
    t.loc[(t["track_id"] == b) & (t["session"] >= s2), "track_id"] = a
    t["fate"] = fates(t, int(t["session"].max()) + 1)
    return t


def _track_at(t: pd.DataFrame, session: int, row: int) -> int:
    hit = t.loc[(t["session"] == session) & (t["row"] == row), "track_id"]
    if not len(hit):
        raise KeyError(f"no spine at session {session}, row {row}")
    return int(hit.iloc[0])


def track(tables: list[pd.DataFrame], *, stacks=None, centerlines=None,
          gate_um: float = GATE_UM, same_dendrite_ids: bool = False, candidates=None
          ) -> tuple[pd.DataFrame, list]:
    """Register the sessions (when their stacks are given) and link their spines.

    Rejected spines of reviewed tables take no part (their rows keep their numbers). Returns
    the tracks (see :func:`link`, also for `candidates`) and the registrations onto the first
    session.
    """
    from .registration import IDENTITY, register_sessions

    regs = register_sessions(stacks) if stacks else None
    keep = [np.flatnonzero(t["status"].astype(str).to_numpy() != "rejected")
            if "status" in t else np.arange(len(t)) for t in tables]
    kept = [t.iloc[k].reset_index(drop=True) for t, k in zip(tables, keep)]
    tracks = link(kept, registrations=regs, centerlines=centerlines, gate_um=gate_um,
                  same_dendrite_ids=same_dendrite_ids, candidates=candidates)
    # automatic tables (the only ones with rescued candidates) keep every row
    tracks["row"] = [int(keep[s][r]) if r < len(keep[s]) else r
                     for s, r in zip(tracks["session"], tracks["row"])]
    return tracks, regs or [IDENTITY] * len(tables)


def write_tracks(outdir, tracks: pd.DataFrame, registrations, info: dict, *,
                 used: pd.DataFrame | None = None) -> dict:
    """Write tracks.csv (the automatic links), turnover.csv and survival.csv (of the links
    `used`, for example reviewed ones; default: `tracks`) and run.json (with the registrations).

    `info` should hold ``inputs``: per session the stack's ``path``, ``channel`` and
    ``voxel_size_um`` (what the napari plugin needs to show the sessions).
    """
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"tracks": out / TRACKS_FILE, "run": out / RUN_FILE,
             **_write_turnover(out, tracks if used is None else used)}
    tracks.to_csv(paths["tracks"], index=False)
    info = {**info, "registrations": [r.to_dict() for r in registrations]}
    paths["run"].write_text(json.dumps(info, indent=2, default=str))
    return paths


def _write_turnover(folder: Path, tracks: pd.DataFrame) -> dict:
    """turnover.csv and survival.csv of `tracks` in `folder`; returns their paths."""
    paths = {"turnover": folder / "turnover.csv", "survival": folder / "survival.csv"}
    turnover(tracks).to_csv(paths["turnover"], index=False)
    survival(tracks).to_csv(paths["survival"], index=False)
    return paths


def spines_source(spines: pd.DataFrame) -> str:
    """Where a spine table came from: ``reviewed`` (it has the reviewer's ``status``),
    ``automatic`` (the detector's, with a ``score`` on every spine) or ``given`` (positions
    from elsewhere, for example an annotation).

    Examples
    --------
    >>> import pandas as pd
    >>> spines_source(pd.DataFrame({"z_um": [1.0], "score": [0.7]}))
    'automatic'
    """
    if "status" in spines:
        return "reviewed"
    if "score" in spines and len(spines) and spines["score"].notna().all():
        return "automatic"
    return "given"


def prefer_reviewed(tracks: pd.DataFrame, folder) -> tuple[pd.DataFrame, str]:
    """The reviewed links saved in `folder` where they cover the same spines as `tracks` (their
    fates recomputed), else `tracks`; and which it is (``reviewed`` or ``automatic``)."""
    import warnings

    path = Path(folder) / REVIEWED_TRACKS_FILE
    if not path.exists():
        return tracks, "automatic"
    rev = pd.read_csv(path)
    if set(zip(rev["session"], rev["row"])) != set(zip(tracks["session"], tracks["row"])):
        warnings.warn(f"{path}: the reviewed links do not cover the current spines (a spine "
                      "table changed since); using automatic links", stacklevel=2)
        return tracks, "automatic"
    rev["fate"] = fates(rev, int(tracks["session"].max()) + 1)
    return rev, "reviewed"


def save_reviewed_tracks(folder, tracks: pd.DataFrame) -> Path:
    """Save reviewed links as tracks_reviewed.csv beside the automatic tracks.csv (which stays)
    and bring turnover.csv and survival.csv up to date with them."""
    folder = Path(folder)
    path = replace_atomically(folder / REVIEWED_TRACKS_FILE,
                              lambda tmp: tracks.to_csv(tmp, index=False))
    _write_turnover(folder, tracks)
    return path
