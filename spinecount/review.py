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
import os
import time
from pathlib import Path

import pandas as pd

from .results import CENTERLINES_FILE, DENDRITES_FILE, REVIEWED_SPINES_FILE, SPINES_FILE
from .tables import POSITION, conform_spines, dendrite_table, read_centerlines, read_spines

STATUSES = ("detected", "accepted", "added", "moved", "retyped", "rejected")
REVIEW_COLUMNS = ("status", "reviewer", "reviewed_at")


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
    who = reviewer or os.environ.get("SPINECOUNT_REVIEWER") or getpass.getuser()
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for col, val in (("reviewer", who), ("reviewed_at", now)):
        if col not in df:
            df[col] = ""
        empty = df[col].isna() | (df[col].astype(str) == "")
        df.loc[empty, col] = val
    path = Path(result_dir) / REVIEWED_SPINES_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def load_result(result_dir) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, str]:
    """The spines that count, the dendrites, the centre lines and the source of a result folder.

    Returns the reviewed spines (without rejected ones) and ``"reviewed"`` when a reviewed table
    exists, else the automatic spines and ``"automatic"``. Dendrite spine counts and densities
    are recomputed from the spines returned; reviewed spines without a known dendrite are
    attached to the nearest centre line.
    """
    from .evaluate import nearest_dendrite

    d = Path(result_dir)
    centerlines = read_centerlines(d / CENTERLINES_FILE)
    auto = pd.read_csv(d / DENDRITES_FILE)
    reviewed = d / REVIEWED_SPINES_FILE
    if reviewed.exists():
        spines = counted(pd.read_csv(reviewed))
        spines = conform_spines(spines)
        source = "reviewed"
        unknown = ~spines["dendrite_id"].isin(centerlines["dendrite_id"])
        if unknown.any() and len(centerlines):
            spines.loc[unknown, "dendrite_id"] = nearest_dendrite(
                spines.loc[unknown, POSITION].to_numpy(float), centerlines)
    else:
        spines, source = read_spines(d / SPINES_FILE), "automatic"
    diam = dict(zip(auto["dendrite_id"], auto["diameter_um"]))
    # the saved centre lines are already smoothed: lengths are those of the automatic table
    return spines, dendrite_table(centerlines, spines, diam, smooth_um=0), centerlines, source
