"""Time-lapse within an experiment: the sessions of each field tracked together.

A *field* is one ``animal`` and ``cell`` of the manifest imaged in several ``session`` rows
(ordered numerically where every session is a number, else as text, so ISO dates work).
``track_fields`` registers every session of a field onto its first (``register_field``; the
registrations are kept by the stacks' hashes, and an experiment run computes them on its
workers beside the detections), links the spines that count (reviewed ones where a review
exists) with :func:`spinecount.timelapse.link`, and writes per field::

    timelapse/<field>/tracks.csv     session, row, track_id, fate, ... (see timelapse.link)
    timelapse/<field>/turnover.csv   per dendrite and interval
    timelapse/<field>/survival.csv   surviving fractions per session
    timelapse/<field>/run.json       stacks, their hashes and the registrations
    timelapse/<field>/registration.json  the registrations, keyed by the stacks' hashes

The gathered turnover and survival tables say per field where its spines came from
(``spines_source``: ``reviewed``, ``automatic`` or ``mixed`` over its sessions) and its links
(``links_source``: ``reviewed`` or ``automatic``). A ``tracks_reviewed.csv`` in a field's
folder (the napari plugin's link review) is used instead of the automatic links, as long as it
covers the same spines.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

TIMELAPSE_DIR = "timelapse"
#: A field's registrations, keyed by its stacks' hashes (written before its tracks, so that
#: the registrations of all fields can run on the workers with the detections).
REGISTRATION_FILE = "registration.json"
#: Dendrites with fewer spines at the earlier session are left out of the turnover statistics.
MIN_SPINES = 5


def field_name(row: dict) -> str:
    cell = row.get("cell")
    return str(row["animal"]) if cell is None or pd.isna(cell) or cell == "" else (
        f"{row['animal']}_{cell}")


def _session_key(values):
    vals = list(values)
    try:
        return [float(v) for v in vals]
    except (TypeError, ValueError):
        return [str(v) for v in vals]


def fields(tasks: list[dict]) -> dict[str, list[dict]]:
    """Tasks grouped by field, in session order; only fields imaged in 2 or more sessions."""
    groups: dict[str, list[dict]] = {}
    for t in tasks:
        if "session" in t["row"] and not pd.isna(t["row"]["session"]):
            groups.setdefault(field_name(t["row"]), []).append(t)
    out = {}
    for name, ts in groups.items():
        if len(ts) >= 2:
            keys = _session_key(t["row"]["session"] for t in ts)
            out[name] = [t for _, t in sorted(zip(keys, ts), key=lambda kv: kv[0])]
    return out


def track_fields(tasks: list[dict], outdir, *, progress: bool = False
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Track every field; returns the turnover and survival tables of all fields, with the
    manifest columns of each field's first session (``session`` dropped)."""
    from tqdm.auto import tqdm

    from .timelapse import survival, turnover

    turn, surv = [], []
    groups = fields(tasks)
    if not groups:
        return pd.DataFrame(), pd.DataFrame()
    for name, ts in tqdm(groups.items(), desc="time-lapse fields", disable=not progress):
        tracks, sources = _field_tracks(name, ts, Path(outdir) / TIMELAPSE_DIR / name)
        meta = {k: v for k, v in ts[0]["row"].items() if k != "session"}
        labels = [t["row"]["session"] for t in ts]
        t = turnover(tracks)
        s = survival(tracks)
        for df in (t, s):
            for k, v in reversed(list(meta.items())):
                df.insert(0, k, v)
            df.insert(0, "field", name)
            for k, v in sources.items():
                df[k] = v
        t["interval"] = [f"{labels[a]} -> {labels[b]}"
                         for a, b in zip(t["session_from"], t["session_to"])]
        s["session_label"] = [labels[i] for i in s["session"]]
        turn.append(t)
        surv.append(s)
    cat = (lambda parts: pd.concat(parts, ignore_index=True) if parts else pd.DataFrame())
    return cat(turn), cat(surv)


def registration_done(ts: list[dict], folder) -> bool:
    """Whether the registrations of a field's sessions (`ts`, in order) are saved in `folder`."""
    return _saved_registrations(ts, Path(folder)) is not None


def _saved_registrations(ts: list[dict], folder: Path):
    from .registration import Registration

    path = folder / REGISTRATION_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("sha256") == [t["sha256"] for t in ts]:
            return [Registration.from_dict(r) for r in saved["registrations"]]
    return None


def register_field(ts: list[dict], folder) -> list:
    """The registrations of a field's sessions onto the first: saved ones where the stacks
    are the same, else computed from the stacks and saved (``registration.json``)."""
    from .io import read_stack
    from .registration import register_sessions
    from .results import replace_atomically

    folder = Path(folder)
    regs = _saved_registrations(ts, folder)
    if regs is None:
        stacks = [read_stack(t["file"], channel=t["channel"], voxel_size=t["voxel_size"])
                  for t in ts]
        regs = register_sessions(stacks)
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"sha256": [t["sha256"] for t in ts],
                           "registrations": [r.to_dict() for r in regs]}, indent=2)
        replace_atomically(folder / REGISTRATION_FILE, lambda tmp: tmp.write_text(text))
    return regs


def _field_tracks(name: str, ts: list[dict], folder: Path) -> tuple[pd.DataFrame, dict]:
    """The tracks of a field that count (reviewed links where they exist) and where its spines
    and links came from (``spines_source``, ``links_source``)."""
    from .aggregate import combined_source
    from .review import load_candidates, load_result
    from .timelapse import link, prefer_reviewed, write_tracks

    results = [load_result(t["folder"]) for t in ts]
    hashes = [t["sha256"] for t in ts]
    regs = register_field(ts, folder)
    tables = [r[0] for r in results]
    auto = link(tables, registrations=regs, centerlines=[r[2] for r in results],
                candidates=[load_candidates(t["folder"]) for t in ts])
    tracks, source = prefer_reviewed(auto, folder)
    write_tracks(folder, auto, regs, {
        "field": name, "stacks": [t["stack"] for t in ts], "sha256": hashes,
        "inputs": [{"path": t["file"], "channel": t["channel"], "voxel_size_um": t["voxel_size"]}
                   for t in ts],
        "sessions": [t["row"]["session"] for t in ts],
        "spines": [r[3] for r in results], "links": source,
        "rescued": int(auto["rescued"].sum())}, used=tracks)
    return tracks, {"spines_source": combined_source(r[3] for r in results),
                    "links_source": source}


def turnover_stats(turnover: pd.DataFrame, *, reference: str | None) -> pd.DataFrame:
    """Formation and elimination per dendrite compared between conditions, per interval
    (mixed model with the animal as random effect, as for density)."""
    from .stats import STATS_COLUMNS, compare_conditions

    d = turnover[(turnover["dendrite"].astype(str) != "all")
                 & (turnover["n_from"] >= MIN_SPINES)] if len(turnover) else turnover
    parts = []
    for interval, g in (d.groupby("interval", sort=False) if len(d) else []):
        if g["condition"].nunique() < 2:
            continue
        for m in ("formation", "elimination"):
            parts.append(compare_conditions(g, m, reference=reference,
                                            measure=f"{m} {interval}"))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=STATS_COLUMNS)


def condition_turnover(turnover: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per condition and interval: mean and SEM over animals of the field-level formation and
    elimination (animal = mean of its fields)."""
    if not len(turnover):
        return pd.DataFrame()
    f = turnover[turnover["dendrite"].astype(str) == "all"]
    an = f.groupby(["condition", "animal", "interval"], sort=False)[
        ["formation", "elimination", "turnover_ratio"]].mean().reset_index()
    out = an.groupby(["condition", "interval"], sort=False).agg(
        n_animals=("animal", "nunique"),
        **{f"{m}_{s}": (m, s) for m in ("formation", "elimination", "turnover_ratio")
           for s in ("mean", "sem")}).reset_index()
    out["condition"] = pd.Categorical(out["condition"], categories=order, ordered=True)
    return out.sort_values(["condition", "interval"]).reset_index(drop=True)
