"""Reviewed (corrected) spine tables: where they live, what they hold, and which spines count.

A stack's result folder holds the automatic result (``spines.csv``, ``dendrites.csv``,
``centerlines.csv``, ``run.json``). A human review is saved beside it as ``spines_reviewed.csv``
(:data:`spinecount.results.REVIEWED_SPINES_FILE`): the spine columns of the detector plus

``status``
    ``detected`` (not looked at), ``accepted``, ``added``, ``moved``, ``retyped`` or
    ``rejected``. Rejected spines stay in the table, so the audit is complete, but do not count.
``reviewer``, ``reviewed_at``
    Who changed the row last, and when (ISO 8601).

The automatic table is never overwritten. Wherever a reviewed table exists, ``spinecount run``
counts its spines instead of the automatic ones and says so in a ``source`` column.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .results import (CANDIDATES_FILE, CENTERLINES_FILE, DENDRITES_FILE, REVIEWED_SPINES_FILE,
                      RUN_FILE, SPINES_FILE, replace_atomically)
from .tables import (BASE, POSITION, SPINE_TYPES, conform_spines, dendrite_table,
                     read_centerlines, read_spines)

#: a candidate with an added spine this close (um) was taken as that spine
TAKEN_UM = 0.5
STATUSES = ("detected", "accepted", "added", "moved", "retyped", "rejected")
REVIEW_COLUMNS = ("status", "reviewer", "reviewed_at")
#: Statuses that an accept, a move or a retype leave as they are (they say more).
_KEEP = {"accepted": ("added", "moved", "retyped"), "moved": ("added",),
         "retyped": ("added", "moved")}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def reviewer_name(reviewer: str | None = None) -> str:
    """`reviewer`, else ``$SPINECOUNT_REVIEWER``, else the login name."""
    return reviewer or os.environ.get("SPINECOUNT_REVIEWER") or getpass.getuser()


def counted(spines: pd.DataFrame) -> pd.DataFrame:
    """The spines that count: all but those with status ``rejected``."""
    if "status" not in spines:
        return spines
    return spines[spines["status"].astype(str) != "rejected"].reset_index(drop=True)


def write_reviewed(spines: pd.DataFrame, result_dir, *, reviewer: str | None = None
                   ) -> Path:
    """Write a reviewed spine table beside the automatic result (atomically).

    Rows without a ``status`` are marked ``detected``; ``reviewer`` and ``reviewed_at`` are
    filled in for rows that have none.
    """
    df = conform_spines(spines)
    if "status" not in df:
        df["status"] = "detected"
    df["status"] = df["status"].fillna("detected").astype(str)
    bad = sorted(set(df["status"]) - set(STATUSES))
    if bad:
        raise ValueError(f"unknown status {bad}; use one of {STATUSES}")
    for col, val in (("reviewer", reviewer_name(reviewer)), ("reviewed_at", _now())):
        if col not in df:
            df[col] = ""
        empty = df[col].isna() | (df[col].astype(str) == "")
        df.loc[empty, col] = val
    return replace_atomically(Path(result_dir) / REVIEWED_SPINES_FILE,
                              lambda tmp: df.to_csv(tmp, index=False))


def load_result(result_dir) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, str]:
    """The spines that count, the dendrites, the centre lines and the source of a result folder.

    Returns the reviewed spines (without rejected ones) and ``"reviewed"`` when a reviewed table
    exists, else the automatic spines and ``"automatic"``. Dendrite spine counts and densities
    are recomputed from the spines returned; reviewed spines without a known dendrite are
    attached to the nearest centre line.
    """
    d = Path(result_dir)
    centerlines = read_centerlines(d / CENTERLINES_FILE)
    auto = pd.read_csv(d / DENDRITES_FILE)
    spines, source = _spines(d, centerlines)
    spines = counted(spines)
    return spines, _dendrites(centerlines, spines, auto), centerlines, source


def load_candidates(result_dir) -> pd.DataFrame | None:
    """The detector's candidates of a result folder (``candidates.csv``), or None where its
    spines were reviewed (the reviewer decided what is there) or it has none."""
    d = Path(result_dir)
    if (d / REVIEWED_SPINES_FILE).exists() or not (d / CANDIDATES_FILE).exists():
        return None
    return read_spines(d / CANDIDATES_FILE)


def _spines(folder: Path, centerlines: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The reviewed table of a result folder (every row, each on a known dendrite) and
    ``"reviewed"`` where there is one, else the automatic table and ``"automatic"``."""
    reviewed = folder / REVIEWED_SPINES_FILE
    if reviewed.exists():
        return _attach_unknown(conform_spines(pd.read_csv(reviewed)), centerlines), "reviewed"
    return read_spines(folder / SPINES_FILE), "automatic"


def _dendrites(centerlines, spines, auto) -> pd.DataFrame:
    """Per-dendrite lengths (of the automatic table), counts and densities of `spines`."""
    diam = dict(zip(auto["dendrite_id"], auto["diameter_um"]))
    # the saved centre lines are already smoothed: lengths are those of the automatic table
    return dendrite_table(centerlines, spines, diam, smooth_um=0)


def _attach_unknown(spines: pd.DataFrame, centerlines: pd.DataFrame) -> pd.DataFrame:
    """Spines whose dendrite_id is not a centre line's get the nearest centre line's."""
    from .evaluate import nearest_dendrite

    unknown = ~spines["dendrite_id"].isin(centerlines["dendrite_id"])
    if unknown.any() and len(centerlines):
        spines.loc[unknown, "dendrite_id"] = nearest_dendrite(
            spines.loc[unknown, POSITION].to_numpy(float), centerlines)
    return spines


class ReviewSession:
    """A human review of one result folder; every edit is saved at once (autosave).

    Opens ``spines_reviewed.csv`` where a review was saved before (so a review goes on where it
    stopped), else the automatic ``spines.csv`` with every spine ``detected``. The automatic
    table is never written. The napari plugin is a thin layer over this class.

    Parameters
    ----------
    result_dir : path
        A result folder of ``spinecount detect`` or of one stack of ``spinecount run``.
    reviewer : str, optional
        Name written in the ``reviewer`` column (default: ``$SPINECOUNT_REVIEWER``, else the
        login name).
    autosave : bool
        Write ``spines_reviewed.csv`` after every edit.

    Examples
    --------
    >>> import tempfile
    >>> from spinecount.synthetic import make_stack
    >>> from spinecount.detection import detect
    >>> from spinecount.results import write_result
    >>> det = detect(make_stack(shape_um=(10, 24, 24), n_dendrites=1, seed=2).stack)
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_result(folder, det, {})
    >>> rev = ReviewSession(folder, reviewer="ana")
    >>> new = rev.add([5.0, 12.0, 12.0], type="thin")
    >>> rev.reject(rev.order()[0])
    >>> sorted(set(rev.spines["status"]))
    ['added', 'detected', 'rejected']
    >>> int(ReviewSession(folder).summary()["n_spines"].sum()) == len(det.spines)
    True
    """

    def __init__(self, result_dir, *, reviewer: str | None = None, autosave: bool = True):
        self.folder = Path(result_dir)
        self.reviewer = reviewer_name(reviewer)
        self.autosave = autosave
        self.centerlines = read_centerlines(self.folder / CENTERLINES_FILE)
        self._auto_dendrites = pd.read_csv(self.folder / DENDRITES_FILE)
        self.radius = {int(k): v / 2 for k, v in zip(self._auto_dendrites["dendrite_id"],
                                                      self._auto_dendrites["diameter_um"])}
        spines, _ = _spines(self.folder, self.centerlines)
        for col, default in (("status", "detected"), ("reviewer", ""), ("reviewed_at", "")):
            if col not in spines:
                spines[col] = default
            spines[col] = spines[col].fillna(default).astype(object)
        self.spines = spines
        run = self.folder / RUN_FILE
        self.run_info = json.loads(run.read_text()) if run.exists() else {}

    def counted(self) -> pd.DataFrame:
        """The spines that count (every status but ``rejected``)."""
        return counted(self.spines)

    def candidates(self) -> pd.DataFrame | None:
        """The detector's candidates (``candidates.csv``; None where the folder has none) that
        were not taken as spines: those without an added spine within ``TAKEN_UM``."""
        path = self.folder / CANDIDATES_FILE
        if not path.exists():
            return None
        cands = read_spines(path)
        added = self.spines.loc[self.spines["status"] == "added", POSITION].to_numpy(float)
        if not len(added) or not len(cands):
            return cands
        from scipy.spatial import cKDTree

        near = cKDTree(added).query(cands[POSITION].to_numpy(float))[0]
        return cands[near > TAKEN_UM].reset_index(drop=True)

    def summary(self) -> pd.DataFrame:
        """Per dendrite: length, spines that count, density (the plugin's live table)."""
        return _dendrites(self.centerlines, self.counted(), self._auto_dendrites)

    def order(self) -> list[int]:
        """spine_id of the counted spines from the least to the most certain (score)."""
        c = self.counted()
        return c.sort_values("score", kind="stable", na_position="last")["spine_id"].tolist()

    def get(self, spine_id: int) -> pd.Series:
        """One spine's row."""
        return self.spines.loc[self._index(spine_id)].iloc[0]

    def add(self, position, *, type: str = "unknown") -> int:
        """Add a spine at `position` (z, y, x in um), attached to the nearest dendrite.

        Its base is the nearest centre line point moved out to the shaft surface; its head
        measurements stay empty (nobody measured them). Returns the new ``spine_id``.
        """
        sid = int(self.spines["spine_id"].max()) + 1 if len(self.spines) else 0
        row = {c: np.nan for c in self.spines.columns}
        row.update({"spine_id": sid, "type": self._type(type), "score": 1.0})
        row.update(zip(POSITION, np.asarray(position, float).ravel()))
        self.spines = pd.concat([self.spines, pd.DataFrame([row])], ignore_index=True)
        self.spines = conform_spines(self.spines)
        self._attach([sid])
        self._mark([sid], "added")
        return sid

    def reject(self, spine_ids) -> None:
        """Reject spines: they stay in the table with status ``rejected`` and do not count."""
        self._mark(spine_ids, "rejected")

    def accept(self, spine_ids) -> None:
        """Accept spines (a rejected spine is restored)."""
        self._mark(spine_ids, "accepted")

    def move(self, spine_id: int, position) -> None:
        """Move a spine's head to `position` (um); it is attached to the nearest dendrite again."""
        idx = self._index(spine_id)
        self.spines.loc[idx, POSITION] = np.asarray(position, float).ravel()
        self._attach([spine_id])
        self._mark([spine_id], "moved")

    def retype(self, spine_ids, type: str) -> None:
        """Set the type of spines (stubby, thin, mushroom, filopodium or unknown)."""
        self.spines.loc[self._index(spine_ids), "type"] = self._type(type)
        self._mark(spine_ids, "retyped")

    def save(self) -> Path:
        """Write the reviewed table (atomically) beside the automatic result."""
        return write_reviewed(self.spines, self.folder, reviewer=self.reviewer)

    # -- helpers
    def _index(self, spine_ids) -> np.ndarray:
        ids = np.atleast_1d(np.asarray(spine_ids, int))
        idx = self.spines.index[self.spines["spine_id"].isin(ids)]
        if len(idx) != len(set(ids.tolist())):
            missing = sorted(set(ids.tolist()) - set(self.spines["spine_id"]))
            raise KeyError(f"no spine with spine_id {missing}")
        return idx

    @staticmethod
    def _type(t: str) -> str:
        if t not in (*SPINE_TYPES, "unknown"):
            raise ValueError(f"unknown spine type {t!r}; use one of {SPINE_TYPES} or unknown")
        return t

    def _attach(self, spine_ids) -> None:
        """Nearest dendrite, base point and distance from the shaft surface, from the position."""
        from .evaluate import nearest_centerline_point

        idx = self._index(spine_ids)
        pos = self.spines.loc[idx, POSITION].to_numpy(float)
        ids, closest, dist = nearest_centerline_point(pos, self.centerlines)
        radius = np.array([self.radius.get(int(i), 0.0) for i in ids], float)
        radius = np.nan_to_num(radius)
        direction = (pos - closest) / np.maximum(dist, 1e-9)[:, None]
        surface = np.maximum(dist - radius, 0.0)
        head = self.spines.loc[idx, "head_diameter_um"].to_numpy(float)
        self.spines.loc[idx, "dendrite_id"] = ids
        self.spines.loc[idx, BASE] = closest + np.minimum(radius, dist)[:, None] * direction
        self.spines.loc[idx, "shaft_distance_um"] = surface
        self.spines.loc[idx, "length_um"] = surface + head / 2
        self.spines.loc[idx, "neck_length_um"] = np.maximum(surface - head / 2, 0.0)

    def _mark(self, spine_ids, status: str) -> None:
        idx = self._index(spine_ids)
        old = self.spines.loc[idx, "status"].astype(str)
        keep = old.isin(_KEEP.get(status, ()))
        if status == "accepted":
            keep &= old != "rejected"
        self.spines.loc[idx[~keep.to_numpy()], "status"] = status
        self.spines.loc[idx, "reviewer"] = self.reviewer
        self.spines.loc[idx, "reviewed_at"] = _now()
        if self.autosave:
            self.save()


def review_queue(outdir, *, blind: bool = False, seed: int | None = None) -> pd.DataFrame:
    """The stacks of an experiment run to review, optionally blind.

    Parameters
    ----------
    outdir : path
        Output folder of ``spinecount run``.
    blind : bool
        Shuffle the stacks and leave out everything that tells the condition: the table then
        holds only ``code`` (``S01``, ``S02``, ...) and ``folder``, and the plugin names the
        layers by the code.
    seed : int, optional
        Seed of the blind order (default: one fixed per experiment folder, so the codes stay
        the same from one review session to the next).

    Returns
    -------
    DataFrame
        ``code``, ``folder``, ``reviewed`` (a reviewed table exists) and, unless blind, ``stack``,
        the manifest columns and ``image`` (the stack's file).
    """
    rows = []
    for run in sorted(Path(outdir, "stacks").glob(f"*/{RUN_FILE}")):
        info = json.loads(run.read_text())
        rows.append({"folder": str(run.parent), "stack": info.get("stack", run.parent.name),
                     **info.get("manifest_row", {}),
                     "image": info.get("input", {}).get("path"),
                     "reviewed": (run.parent / REVIEWED_SPINES_FILE).exists()})
    if not rows:
        raise FileNotFoundError(f"{outdir}: no stack results (stacks/*/run.json); "
                                "run `spinecount run` first")
    df = pd.DataFrame(rows)
    if blind:
        if seed is None:
            import hashlib

            seed = int(hashlib.sha256(str(Path(outdir).resolve()).encode()).hexdigest()[:8], 16)
        df = df.sample(frac=1, random_state=seed)[["folder", "reviewed"]]
    df.insert(0, "code", [f"S{i + 1:02d}" for i in range(len(df))])
    return df.reset_index(drop=True)
