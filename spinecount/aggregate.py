"""Experiment tables: per spine, per dendrite, per animal and per condition.

Every per-dendrite number is computed once, in :func:`dendrite_measures`; animals average their
dendrites and conditions average their animals (mean and SEM over animals, the unit of the
experiment). Only dendrites at least ``min_length_um`` long enter the animal, condition and
statistics tables (the ``included`` column says which), because the density of a short piece of
dendrite is mostly noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .tables import SPINE_TYPES

#: Per-dendrite measures summarised per animal and condition and compared in the statistics.
MEASURES = {
    "density_per_um": "spine density (spines/um)",
    **{f"density_{t}_per_um": f"{t} spine density (spines/um)" for t in SPINE_TYPES},
    "head_diameter_um": "mean spine head diameter (um)",
}


def dendrite_measures(dendrites: pd.DataFrame, spines: pd.DataFrame, *,
                      min_length_um: float) -> pd.DataFrame:
    """Add density per spine type, mean head diameter and ``included`` to a dendrite table.

    Both tables carry a ``stack`` column; spines are matched to dendrites by stack and
    ``dendrite_id``.
    """
    d = dendrites.copy()
    key = ["stack", "dendrite_id"]
    if len(spines):
        by_type = spines.pivot_table(index=key, columns="type", values="spine_id",
                                     aggfunc="count", fill_value=0)
        heads = spines.groupby(key)["head_diameter_um"].mean().rename("head_diameter_um")
        d = d.join(by_type, on=key).join(heads, on=key)
    for t in SPINE_TYPES:
        n = d[t].fillna(0) if t in d else 0
        d[f"density_{t}_per_um"] = np.where(d["length_um"] > 0, n / d["length_um"], np.nan)
    d = d.drop(columns=[t for t in [*SPINE_TYPES, "unknown"] if t in d])
    if "head_diameter_um" not in d:
        d["head_diameter_um"] = np.nan
    d["included"] = d["length_um"] >= min_length_um
    return d


def combined_source(sources) -> str:
    """One word for several sources (``automatic``, ``reviewed``, ...): the common one, or
    ``mixed``.

    Examples
    --------
    >>> combined_source(["reviewed", "automatic"]), combined_source(["reviewed"] * 2)
    ('mixed', 'reviewed')
    """
    kinds = set(sources)
    return kinds.pop() if len(kinds) == 1 else "mixed"


def animal_table(dendrites: pd.DataFrame) -> pd.DataFrame:
    """Per animal: stacks, dendrites, total length, spines, and the mean of each measure."""
    d = dendrites[dendrites["included"]]
    g = d.groupby(["condition", "animal"], sort=False)
    out = g.agg(n_stacks=("stack", "nunique"), n_dendrites=("dendrite_id", "size"),
                total_length_um=("length_um", "sum"), n_spines=("n_spines", "sum"),
                source=("source", combined_source))
    out = out.join(g[list(MEASURES)].mean())
    return out.reset_index()[["animal", "condition", *out.columns]]


def condition_table(animals: pd.DataFrame, order: list[str] | None = None) -> pd.DataFrame:
    """Per condition: animals, dendrites, and mean and SEM over animals of each measure."""
    g = animals.groupby("condition", sort=False)
    out = g.agg(n_animals=("animal", "nunique"), n_dendrites=("n_dendrites", "sum"),
                total_length_um=("total_length_um", "sum"), n_spines=("n_spines", "sum"))
    for m in MEASURES:
        out[f"{m}_mean"] = g[m].mean()
        out[f"{m}_sem"] = g[m].sem()
    out = out.reset_index()
    if order:
        out = out.set_index("condition").loc[[c for c in order if c in set(out["condition"])]]
        out = out.reset_index()
    return out
