"""User-given dendrite traces: SWC (SNT, Vaa3D, neuTube) or CSV of path points in micrometres."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError
from .tables import read_centerlines


def read_swc(path) -> pd.DataFrame:
    """Read an SWC file into centre lines, one dendrite per unbranched stretch.

    SWC columns are ``id type x y z radius parent``, coordinates in micrometres. Each stretch
    between branch points and tips becomes one ``dendrite_id``; soma points (type 1) are left out.

    Returns
    -------
    DataFrame with ``dendrite_id, z_um, y_um, x_um``.
    """
    path = Path(path)
    try:
        arr = np.loadtxt(path, comments="#", ndmin=2)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read as SWC ({exc})", path=path,
                         hint="SWC needs 7 numbers per line: id type x y z radius parent") from None
    if arr.shape[1] < 7 or not len(arr):
        raise InputError("SWC needs 7 numbers per line: id type x y z radius parent", path=path)
    ids = arr[:, 0].astype(int)
    kind = arr[:, 1].astype(int)
    parent = arr[:, 6].astype(int)
    keep = kind != 1
    xyz = {i: arr[k, 2:5] for k, i in enumerate(ids)}
    children: dict[int, list[int]] = {}
    for i, p, k in zip(ids, parent, keep):
        if k:
            children.setdefault(p, []).append(i)
    kept = set(ids[keep].tolist())
    # A stretch starts at a root, a child of a branch point, or a child of a soma point.
    starts = [i for i, p in zip(ids, parent) if i in kept and (
        p not in kept or len(children.get(p, [])) > 1)]
    rows, did = [], 0
    for s in starts:
        p = parent[np.where(ids == s)[0][0]]
        pts = [xyz[p]] if p in kept else []
        node = s
        while True:
            pts.append(xyz[node])
            ch = children.get(node, [])
            if len(ch) != 1:
                break
            node = ch[0]
        pts = np.array(pts)
        if len(pts) >= 2:
            rows.append(pd.DataFrame({"dendrite_id": did, "z_um": pts[:, 2], "y_um": pts[:, 1],
                                      "x_um": pts[:, 0]}))
            did += 1
    if not rows:
        raise InputError("SWC holds no dendrite path (only soma or single points)", path=path)
    return pd.concat(rows, ignore_index=True)


def read_traces(path) -> pd.DataFrame:
    """Read dendrite traces from ``.swc`` or ``.csv`` (``dendrite_id, z_um, y_um, x_um``)."""
    path = Path(path)
    if not path.exists():
        raise InputError("trace file not found", path=path)
    if path.suffix.lower() == ".swc":
        return read_swc(path)
    return read_centerlines(path)
