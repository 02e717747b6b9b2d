"""The column contract of spinecount's tables, and readers that bring any spine table to it.

Every coordinate is in micrometres, physical = voxel index x voxel size, with the origin at
voxel (0, 0, 0). The detector, the synthetic truth, the evaluation and the napari plugin all
read and write these columns, so this module is the one place that defines them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError

#: Spine table columns: name -> (unit, description). Order is the order written to CSV.
SPINE_COLUMNS: dict[str, tuple[str, str]] = {
    "spine_id": ("", "identifier of the spine, unique within the table"),
    "dendrite_id": ("", "identifier of the dendrite the spine belongs to"),
    "z_um": ("um", "z of the spine head centre"),
    "y_um": ("um", "y of the spine head centre"),
    "x_um": ("um", "x of the spine head centre"),
    "base_z_um": ("um", "z of the point where the spine joins the shaft"),
    "base_y_um": ("um", "y of the point where the spine joins the shaft"),
    "base_x_um": ("um", "x of the point where the spine joins the shaft"),
    "head_diameter_um": ("um", "diameter of the spine head"),
    "neck_length_um": ("um", "length of the neck, from the shaft surface to the head"),
    "length_um": ("um", "total length, from the shaft surface to the far edge of the head"),
    "shaft_distance_um": ("um", "distance of the head centre from the shaft surface"),
    "relative_intensity": (
        "um of shaft",
        "integrated spine fluorescence divided by the shaft fluorescence per um of length",
    ),
    "type": ("", "stubby, thin, mushroom or filopodium (see spinecount.morphology)"),
    "score": ("0..1", "confidence that this is a real spine"),
}

#: Dendrite table columns: name -> (unit, description).
DENDRITE_COLUMNS: dict[str, tuple[str, str]] = {
    "dendrite_id": ("", "identifier of the dendrite (one branch between junctions and tips)"),
    "length_um": ("um", "length along the smoothed 3D centre line"),
    "n_spines": ("", "number of spines attached to the dendrite"),
    "density_per_um": ("1/um", "n_spines / length_um"),
    "diameter_um": ("um", "mean diameter of the shaft"),
}

#: Centre line table columns (one row per point, in order along each dendrite).
CENTERLINE_COLUMNS: dict[str, tuple[str, str]] = {
    "dendrite_id": ("", "identifier of the dendrite"),
    "z_um": ("um", "z of the centre line point"),
    "y_um": ("um", "y of the centre line point"),
    "x_um": ("um", "x of the centre line point"),
}

SPINE_TYPES = ("stubby", "thin", "mushroom", "filopodium")
POSITION = ["z_um", "y_um", "x_um"]
BASE = ["base_z_um", "base_y_um", "base_x_um"]


def empty_spines() -> pd.DataFrame:
    """An empty spine table with every contract column."""
    return conform_spines(pd.DataFrame({c: [] for c in SPINE_COLUMNS}))


def conform_spines(df: pd.DataFrame) -> pd.DataFrame:
    """Return `df` with the contract columns first, in order, with their types.

    Missing optional columns are added as NaN (or ``"unknown"`` for ``type``);
    extra columns are kept after the contract columns.
    """
    df = df.copy()
    for col in SPINE_COLUMNS:
        if col not in df:
            df[col] = "unknown" if col == "type" else np.nan
    df["type"] = df["type"].fillna("unknown").astype(str)
    for col in ("spine_id", "dendrite_id"):
        df[col] = pd.to_numeric(df[col], errors="coerce").fillna(-1).astype(int)
    extra = [c for c in df.columns if c not in SPINE_COLUMNS]
    return df[list(SPINE_COLUMNS) + extra].reset_index(drop=True)


def _numbered(spines: pd.DataFrame) -> pd.DataFrame:
    """The spines (or candidates) table in the column contract, its rows numbered in order
    (``spine_id``)."""
    return conform_spines(spines.reset_index(drop=True).assign(spine_id=np.arange(len(spines))))


def conform_dendrites(df: pd.DataFrame) -> pd.DataFrame:
    """Return `df` with the dendrite contract columns first, in order."""
    df = df.copy()
    for col in DENDRITE_COLUMNS:
        if col not in df:
            df[col] = np.nan
    df["dendrite_id"] = df["dendrite_id"].astype(int)
    df["n_spines"] = df["n_spines"].fillna(0).astype(int)
    extra = [c for c in df.columns if c not in DENDRITE_COLUMNS]
    return df[list(DENDRITE_COLUMNS) + extra].reset_index(drop=True)


def _read_csv(path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path=path, hint="check the path")
    try:
        return pd.read_csv(path)
    except Exception as exc:  # pandas raises many kinds
        raise InputError(f"cannot read as CSV ({exc})", path=path) from None


def _renamed(df: pd.DataFrame) -> pd.DataFrame:
    # Annotation tables (MapManager export, rr30a) call dendrites "segments".
    if "dendrite_id" not in df and "segment_id" in df:
        df = df.rename(columns={"segment_id": "dendrite_id"})
    return df


def read_spines(path) -> pd.DataFrame:
    """Read a spine table: the detector's, a synthetic truth or an annotation CSV.

    Needs at least ``z_um, y_um, x_um``; ``segment_id`` is read as ``dendrite_id``.

    Examples
    --------
    >>> import io, pandas as pd
    >>> df = read_spines(io.StringIO("segment_id,z_um,y_um,x_um\\n3,1,2,3\\n"))
    >>> int(df.loc[0, "dendrite_id"]), int(df.loc[0, "spine_id"])
    (3, 0)
    """
    df = pd.read_csv(path) if hasattr(path, "read") else _read_csv(path)
    df = _renamed(df)
    missing = [c for c in POSITION if c not in df]
    if missing:
        raise InputError(
            f"spine table lacks the column(s) {', '.join(missing)}",
            path=getattr(path, "name", path),
            hint="a spine table needs z_um, y_um, x_um in micrometres",
        )
    if "spine_id" not in df:
        df["spine_id"] = np.arange(len(df))
    return conform_spines(df)


def read_centerlines(path) -> pd.DataFrame:
    """Read dendrite centre lines: CSV with ``dendrite_id`` (or ``segment_id``), z_um, y_um, x_um.

    Points are in order along each dendrite. SWC files are read by
    :func:`spinecount.traces.read_traces`.
    """
    df = _renamed(_read_csv(path))
    missing = [c for c in CENTERLINE_COLUMNS if c not in df]
    if missing:
        raise InputError(
            f"centre line table lacks the column(s) {', '.join(missing)}",
            path=path,
            hint="a centre line CSV needs dendrite_id (or segment_id), z_um, y_um, x_um",
        )
    df["dendrite_id"] = df["dendrite_id"].astype(int)
    return df[list(CENTERLINE_COLUMNS)].reset_index(drop=True)


def polyline_length(points: np.ndarray) -> float:
    """Length of a polyline given as (n, 3) points in micrometres.

    >>> polyline_length(np.array([[0, 0, 0], [0, 3, 4], [0, 3, 5.0]]))
    6.0
    """
    points = np.asarray(points, dtype=float)
    if len(points) < 2:
        return 0.0
    return float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum())


def resample_polyline(points: np.ndarray, step: float) -> np.ndarray:
    """Points spaced `step` micrometres apart along a polyline (ends included)."""
    points = np.asarray(points, dtype=float)
    if len(points) < 2:
        return points.copy()
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(int(np.ceil(s[-1] / step)), 1) + 1
    t = np.linspace(0.0, s[-1], n)
    return np.column_stack([np.interp(t, s, points[:, i]) for i in range(points.shape[1])])


#: Spacing (um) of the points of a smoothed centre line (:func:`smooth_polyline`).
CENTERLINE_STEP_UM = 0.25


def smooth_polyline(points: np.ndarray, sigma_um: float,
                    step: float = CENTERLINE_STEP_UM) -> np.ndarray:
    """Resample a polyline every `step` um and smooth it with a Gaussian of `sigma_um` along it.

    Traced and skeleton centre lines step by whole voxels (a z step is often 1 um), which
    inflates their length; smoothing over about 2 um removes that staircase while keeping the
    dendrite's real course. The end points stay where they were.
    """
    from scipy.ndimage import gaussian_filter1d

    if sigma_um <= 0:
        return np.asarray(points, dtype=float)
    pts = resample_polyline(points, step)
    if len(pts) < 3:
        return pts
    out = gaussian_filter1d(pts, sigma_um / step, axis=0, mode="nearest")
    out[0], out[-1] = pts[0], pts[-1]
    return out


#: Smoothing (um) applied to centre lines before their length is measured.
LENGTH_SMOOTHING_UM = 2.0


def centerline_length(points: np.ndarray, smooth_um: float = LENGTH_SMOOTHING_UM) -> float:
    """Length (um) of a centre line measured along its smoothed 3D course.

    >>> zigzag = np.array([[z % 2, 0.0, x] for z, x in enumerate(np.arange(0, 50, 0.5))])
    >>> round(polyline_length(zigzag), 1), round(centerline_length(zigzag), 1)
    (110.7, 49.7)
    """
    return polyline_length(smooth_polyline(points, smooth_um))


def dendrite_table(
    centerlines: pd.DataFrame, spines: pd.DataFrame, diameters: dict | None = None, *,
    smooth_um: float = LENGTH_SMOOTHING_UM,
) -> pd.DataFrame:
    """Per-dendrite length, spine count and density from centre lines and spines.

    Lengths are measured along the centre lines smoothed over `smooth_um`
    (see :func:`centerline_length`); pass 0 for centre lines that are already smooth.
    """
    rows = []
    counts = spines["dendrite_id"].value_counts() if len(spines) else {}
    for did, pts in centerlines.groupby("dendrite_id", sort=True):
        length = centerline_length(pts[POSITION].to_numpy(), smooth_um)
        n = int(counts.get(did, 0))
        rows.append(
            {
                "dendrite_id": int(did),
                "length_um": length,
                "n_spines": n,
                "density_per_um": n / length if length > 0 else np.nan,
                "diameter_um": (diameters or {}).get(did, np.nan),
            }
        )
    if not rows:
        return conform_dendrites(pd.DataFrame({c: [] for c in DENDRITE_COLUMNS}))
    return conform_dendrites(pd.DataFrame(rows))
