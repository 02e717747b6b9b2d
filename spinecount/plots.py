"""Figures of an experiment (matplotlib, no display needed).

:func:`superplot` follows Lord et al. (2020, J Cell Biol 219: e202001064): every dendrite as a
small point coloured by its animal, every animal's mean as a large point of the same colour, and
the condition's mean and SEM over animals, so the reader sees that the animal is the unit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .tables import SPINE_TYPES

TYPE_COLORS = {"stubby": "#1f77b4", "thin": "#2ca02c", "mushroom": "#d62728",
               "filopodium": "#9467bd", "unknown": "#7f7f7f"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def superplot(dendrites: pd.DataFrame, value: str, *, order: list[str], ax=None,
              ylabel: str | None = None, seed: int = 0):
    """SuperPlot of `value`: dendrites (small), animal means (large), condition mean +- SEM.

    Examples
    --------
    >>> import pandas as pd
    >>> d = pd.DataFrame({"condition": ["a", "a", "b", "b"], "animal": ["1", "1", "2", "3"],
    ...                   "density_per_um": [0.5, 0.6, 0.3, 0.4]})
    >>> ax = superplot(d, "density_per_um", order=["a", "b"])
    >>> len(ax.collections) >= 4
    True
    """
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(1.6 + 1.3 * len(order), 4))
    rng = np.random.default_rng(seed)
    cmap = plt.get_cmap("tab20")
    animals = list(dict.fromkeys(dendrites["animal"]))
    colour = {a: cmap(i % 20) for i, a in enumerate(animals)}
    for x, cond in enumerate(order):
        d = dendrites[dendrites["condition"] == cond]
        means = d.groupby("animal", sort=False)[value].mean()
        ax.scatter(x + rng.uniform(-0.25, 0.25, len(d)), d[value], s=10, alpha=0.5,
                   c=[colour[a] for a in d["animal"]], linewidths=0)
        ax.scatter(x + rng.uniform(-0.12, 0.12, len(means)), means, s=70,
                   c=[colour[a] for a in means.index], edgecolors="black", linewidths=0.8,
                   zorder=3)
        if len(means):
            m, sem = means.mean(), means.sem() if len(means) > 1 else 0.0
            ax.errorbar(x + 0.38, m, yerr=sem, fmt="_", color="black", markersize=18, capsize=4,
                        zorder=4)
    ax.set_xticks(range(len(order)), order)
    ax.set_xlim(-0.6, len(order) - 0.3)
    ax.set_ylabel(ylabel or value)
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def type_density_plot(animals: pd.DataFrame, *, order: list[str], ax=None):
    """Density per spine type and condition: bars are means over animals, points are animals."""
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(2 + 1.6 * len(SPINE_TYPES), 4))
    w = 0.8 / max(len(order), 1)
    cmap = plt.get_cmap("tab10")
    for j, cond in enumerate(order):
        a = animals[animals["condition"] == cond]
        for i, t in enumerate(SPINE_TYPES):
            v = a[f"density_{t}_per_um"].dropna()
            x = i + (j - (len(order) - 1) / 2) * w
            ax.bar(x, v.mean() if len(v) else 0, w * 0.9, yerr=v.sem() if len(v) > 1 else 0,
                   color=cmap(j), alpha=0.6, capsize=3, label=cond if i == 0 else None)
            ax.scatter(np.full(len(v), x), v, s=12, color="black", zorder=3)
    ax.set_xticks(range(len(SPINE_TYPES)), SPINE_TYPES)
    ax.set_ylabel("density (spines/um)")
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def head_diameter_plot(spines: pd.DataFrame, *, order: list[str], ax=None):
    """Distribution of spine head diameters per condition (cumulative fraction)."""
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    for cond in order:
        v = np.sort(spines.loc[spines["condition"] == cond, "head_diameter_um"].dropna())
        if len(v):
            ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post",
                    label=f"{cond} (n={len(v)} spines)")
    ax.set_xlabel("head diameter (um)")
    ax.set_ylabel("cumulative fraction of spines")
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def survival_plot(survival: pd.DataFrame, *, order: list[str], ax=None):
    """Surviving fraction of the first session's spines (solid) and of the spines new at the
    second session (dashed) per condition: mean and SEM over animals."""
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    cmap = plt.get_cmap("tab10")
    labels = list(dict.fromkeys(survival.sort_values("session")["session_label"]))
    for j, cond in enumerate(order):
        d = survival[survival["condition"] == cond]
        for col, style, what in (("survival_first", "-", "first session"),
                                 ("survival_new", "--", "new at second")):
            an = d.groupby(["animal", "session"])[col].mean().unstack("session")
            if an.isna().all().all():
                continue
            m, sem = an.mean(), an.sem().fillna(0)
            ax.errorbar(m.index, m.values, yerr=sem.values, fmt=style, marker="o",
                        color=cmap(j), capsize=3, label=f"{cond}, {what} (n={len(an)})")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel("session")
    ax.set_ylabel("surviving fraction")
    ax.set_ylim(0, 1.05)
    ax.legend(frameon=False, fontsize="small")
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def save(fig, folder, name) -> list[Path]:
    """Save a figure as PNG and SVG; return the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.png", folder / f"{name}.svg"]
    fig.tight_layout()
    fig.savefig(paths[0], dpi=120)
    fig.savefig(paths[1])
    _plt().close(fig)
    return paths


def qc_thumbnail(stack, spines: pd.DataFrame, centerlines: pd.DataFrame, path, *,
                 size_px: int = 300) -> Path:
    """Maximum projection of a stack with its dendrites (yellow) and spines (circles coloured by
    type), `size_px` wide, as JPEG. Drawn with Pillow: experiment workers make one per stack and
    need not import matplotlib for it."""
    from PIL import Image, ImageDraw

    mip = stack.data.max(axis=0).astype(np.float32)
    lo, hi = np.percentile(mip, [1, 99.7])
    grey = (np.clip((mip - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    h, w = grey.shape
    scale = size_px / w
    img = Image.fromarray(grey).resize((size_px, max(1, round(h * scale))),
                                       Image.Resampling.BILINEAR).convert("RGB")
    draw = ImageDraw.Draw(img)
    vy, vx = stack.voxel_size[1:]
    for _, g in centerlines.groupby("dendrite_id"):
        xy = (np.column_stack([g["x_um"] / vx, g["y_um"] / vy]) + 0.5) * scale  # corners
        draw.line([tuple(p) for p in xy], fill="yellow", width=1)
    r = 2.5
    for x, y, t in zip((spines["x_um"] / vx + 0.5) * scale, (spines["y_um"] / vy + 0.5) * scale,
                       spines["type"]):
        draw.ellipse((x - r, y - r, x + r, y + r), outline=TYPE_COLORS.get(t, "white"))
    img.save(path, format="JPEG", quality=80)
    return Path(path)
