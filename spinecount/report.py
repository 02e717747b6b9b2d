"""``report.html``: one self-contained page per experiment (images embedded, no other files)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

from .aggregate import MEASURES
from .results import RUN_FILE

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f3f3f3}
.qc{display:inline-block;margin:4px;font-size:.75em;vertical-align:top;width:250px}
.qc img{width:250px}.warn{color:#a40}.fail{color:#b00}
"""


def _img(path: Path, **attrs) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    mime = "jpeg" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "png"
    extra = " ".join(f'{k}="{html.escape(str(v))}"' for k, v in attrs.items())
    return f'<img src="data:image/{mime};base64,{data}" {extra}>'


def _table(df: pd.DataFrame, digits: int = 3) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.{digits}g}", border=0,
                      na_rep="")


def methods_text(res: dict, info: dict) -> str:
    """The methods paragraph: version, parameters, voxel sizes and n."""
    voxel = set()
    for t in res["tasks"]:
        run = Path(t["folder"]) / RUN_FILE
        if run.exists():
            voxel.add(tuple(json.loads(run.read_text())["voxel_size_um"]))
    vs = "; ".join(f"{z:g} x {y:g} x {x:g}" for z, y, x in sorted(voxel)) or "n/a"
    params = ", ".join(f"{k} = {v:g}" for k, v in info["parameters"].items())
    inc = res["dendrites"][res["dendrites"]["included"]] if len(res["dendrites"]) else None
    ns = []
    for cond in res["order"]:
        d = inc[inc["condition"] == cond]
        ns.append(f"{cond}: {d['animal'].nunique()} animals, {len(d)} dendrites, "
                  f"{d['length_um'].sum():.0f} um")
    src = res["dendrites"].groupby("source")["stack"].nunique().to_dict() if len(
        res["dendrites"]) else {}
    return (
        f"Spines were detected with spinecount {info['spinecount_version']} in "
        f"{info['n_stacks']} two-photon stacks (voxel size z x y x x: {vs} um). Dendrites were "
        "traced automatically (3D skeleton of a thresholded, smoothed stack, with skan) or "
        "taken from user traces; spines are local excesses over a model of the shaft, "
        "classified by the rule of Rodriguez et al. (2008). Parameters: "
        f"{params}. Dendrites shorter than {info['min_length_um']:g} um were left out of the "
        "statistics. Spine counts came from "
        + ", ".join(f"{n} {s} result{'s' if n > 1 else ''}" for s, n in src.items())
        + ". Density (spines per um of dendrite) was compared between conditions with a linear "
        "mixed model (statsmodels MixedLM, REML) with condition as fixed effect and a random "
        "intercept per animal (dendrites nested in animals); every pair of conditions was "
        "compared by a Wald test with Holm's correction. The same was done for the density "
        "of each spine type and for the mean head diameter per dendrite. n: "
        + "; ".join(ns) + "."
    )


def unreviewed_turnover_note(turnover: pd.DataFrame) -> str:
    """A warning when some fields' turnover comes from spines nobody reviewed, else ''."""
    from .timelapse import AUTOMATIC_TURNOVER_CAVEAT

    if not len(turnover) or "spines_source" not in turnover:
        return ""
    src = turnover.drop_duplicates("field").set_index("field")["spines_source"]
    n = int((src != "reviewed").sum())
    if not n:
        return ""
    return (f"the turnover of {n} of {len(src)} field(s) comes from spines that were not "
            f"reviewed in every session; {AUTOMATIC_TURNOVER_CAVEAT}")


def write_report(outdir, res: dict, info: dict) -> Path:
    """Write ``report.html`` into `outdir` and return its path."""
    from .experiment import QC_FILE

    outdir = Path(outdir)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>spinecount report"
             f"</title><style>{_CSS}</style></head><body>",
             "<h1>spinecount experiment report</h1>",
             f"<p>{html.escape(info['created'])} &middot; spinecount "
             f"{html.escape(info['spinecount_version'])} &middot; manifest "
             f"<code>{html.escape(info['manifest'])}</code></p>"]
    fails = res["failures"]
    if len(fails):
        parts.append(f"<p class='fail'><b>{len(fails)} stack(s) failed</b> and are not in the "
                     "results (see Failures below).</p>")
    warned = res.get("warnings", {})
    if warned:
        parts.append(f"<p class='warn'><b>{len(warned)} stack(s) gave warnings</b>:</p><ul>"
                     + "".join(f"<li>{html.escape(m)}</li>" for ms in warned.values()
                               for m in ms) + "</ul>")
    parts += ["<h2>Methods</h2>", f"<p>{html.escape(methods_text(res, info))}</p>"]
    if res["plots"]:
        parts.append("<h2>Figures</h2>")
        for paths in res["plots"].values():
            parts.append(_img(paths[0], style="max-width:100%"))
    parts.append("<h2>Conditions</h2><p>Mean and SEM over animals.</p>")
    parts.append(_table(res["conditions"]))
    parts.append("<h2>Statistics</h2>")
    st = res["stats"]
    warn = sorted(set(st["warning"]) - {""}) if len(st) else []
    for w in warn:
        parts.append(f"<p class='warn'>Warning: {html.escape(w)}; such a comparison has little "
                     "power.</p>")
    if len(st):
        st = st.assign(measure=st["measure"].map(lambda m: MEASURES.get(m, m)))
    parts.append(_table(st.drop(columns=["warning"], errors="ignore")))
    if len(res.get("turnover_conditions", [])):
        parts += ["<h2>Time-lapse</h2><p>Spines followed across sessions "
                  "(<code>timelapse/</code>): formation and elimination per interval as "
                  "fractions of the spines at the earlier session, mean and SEM over animals; "
                  "the statistics above compare them per dendrite.</p>",
                  _table(res["turnover_conditions"])]
        note = unreviewed_turnover_note(res["turnover"])
        if note:
            parts.append(f"<p class='warn'>Warning: {html.escape(note)}.</p>")
    parts += ["<h2>Animals</h2>", _table(res["animals"])]
    parts += ["<details><summary>Dendrites</summary>", _table(res["dendrites"]), "</details>"]
    parts.append("<h2>Failures</h2>")
    parts.append(_table(fails) if len(fails) else "<p>None: every stack was analysed.</p>")
    parts.append("<h2>Quality control</h2><p>Maximum projection of each stack with the "
                 "dendrites (yellow) and spines (blue stubby, green thin, red mushroom, purple "
                 "filopodium).</p>")
    counts = res["spines"].groupby("stack").size() if len(res["spines"]) else {}
    for t in res["tasks"]:
        qc = Path(t["folder"]) / QC_FILE
        if qc.exists():
            r = t["row"]
            cap = (f"{t['stack']} &middot; {html.escape(str(r.get('animal', '')))} &middot; "
                   f"{html.escape(str(r.get('condition', '')))} &middot; "
                   f"{int(counts.get(t['stack'], 0))} spines")
            parts.append(f"<div class='qc'>{_img(qc, alt=t['stack'])}<br>{cap}</div>")
    parts.append("</body></html>")
    path = outdir / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
