"""napari layer data for spinecount's tables (LayerDataTuples: data, keyword arguments, kind).

Every layer is drawn in voxel coordinates with the voxel size as its ``scale``, so the image,
the spines and the dendrites line up and the 3D view is isotropic in micrometres.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from spinecount.tables import POSITION, SPINE_TYPES

#: Colour of each spine type (Okabe-Ito, readable by colour-blind reviewers).
TYPE_COLORS = {"stubby": "#E69F00", "thin": "#56B4E9", "mushroom": "#CC79A7",
               "filopodium": "#009E73", "unknown": "#FFFFFF"}
#: Border colour by review status: grey until a human has looked at the spine.
STATUS_COLORS = {"detected": "#7F7F7F", "accepted": "#FFFFFF", "added": "#F0E442",
                 "moved": "#F0E442", "retyped": "#F0E442", "rejected": "#D55E00"}
FEATURES = ["spine_id", "dendrite_id", "type", "score", "status"]
#: Features of a point added by hand (spine_id -1 until the review session numbers it).
FEATURE_DEFAULTS = {"spine_id": -1, "dendrite_id": -1, "type": "unknown", "score": 1.0,
                    "status": "added"}
#: Drawn size (um) of a spine without a measured head (added by hand; time-lapse markers).
DEFAULT_SIZE_UM = 0.8
RESULT_KEY = "spinecount_result"
#: Metadata key of a candidates layer: the result folder whose candidates it shows.
CANDIDATES_KEY = "spinecount_candidates"


def spine_points(spines: pd.DataFrame, voxel_size) -> dict:
    """Points layer data and styles of a spine table: ``data``, ``features``, ``size``,
    ``face_color``, ``border_color`` (for ``layer.data = ...`` and friends, or ``add_points``).

    Examples
    --------
    >>> df = pd.DataFrame({"spine_id": [3], "dendrite_id": [0], "z_um": [2.0], "y_um": [1.2],
    ...                    "x_um": [0.6], "type": ["thin"], "score": [0.9],
    ...                    "head_diameter_um": [0.6], "status": ["detected"]})
    >>> d = spine_points(df, (1.0, 0.12, 0.12))
    >>> d["data"].round(2).tolist(), d["size"].round(2).tolist()
    ([[2.0, 10.0, 5.0]], [5.0])
    """
    vs = np.asarray(voxel_size, float)
    data = spines[POSITION].to_numpy(float).reshape(-1, 3) / vs
    feats = pd.DataFrame({c: spines[c].to_numpy() if c in spines else "detected"
                          for c in FEATURES}, index=range(len(spines)))
    feats["type"] = pd.Categorical(feats["type"].astype(str),
                                   categories=[*SPINE_TYPES, "unknown"])
    head = (spines["head_diameter_um"].to_numpy(float) if "head_diameter_um" in spines
            else np.full(len(spines), np.nan))
    size = np.where(np.isfinite(head), np.maximum(head, 0.3), DEFAULT_SIZE_UM) / vs[1]
    return {
        "data": data, "features": feats, "size": size,
        "face_color": [TYPE_COLORS.get(t, "#FFFFFF") for t in feats["type"].astype(str)],
        "border_color": [STATUS_COLORS.get(s, "#7F7F7F") for s in feats["status"]],
    }


def spines_layer(spines: pd.DataFrame, voxel_size, *, name: str, folder=None) -> tuple:
    """LayerDataTuple of the spines (a Points layer)."""
    d = spine_points(spines, voxel_size)
    kw = {"name": name, "scale": tuple(voxel_size), "features": d["features"], "size": d["size"],
          "face_color": d["face_color"], "border_color": d["border_color"],
          "border_width": 0.15, "opacity": 0.8,
          "feature_defaults": FEATURE_DEFAULTS,
          "metadata": {RESULT_KEY: str(folder) if folder else None}}
    return d["data"], kw, "points"


def candidates_layer(candidates: pd.DataFrame, voxel_size, *, name: str, folder) -> tuple:
    """LayerDataTuple of the detector's candidates (peaks that fell short of a spine's tests):
    small grey crosses, hidden until the reviewer looks for missed spines among them."""
    vs = np.asarray(voxel_size, float)
    data = candidates[POSITION].to_numpy(float).reshape(-1, 3) / vs
    feats = pd.DataFrame({"type": candidates["type"].astype(str).to_numpy(),
                          "score": candidates["score"].to_numpy(float)},
                         index=range(len(candidates)))
    return data, {"name": name, "scale": tuple(vs), "features": feats, "symbol": "cross",
                  "size": DEFAULT_SIZE_UM / vs[1], "face_color": "#BFBFBF", "visible": False,
                  "metadata": {CANDIDATES_KEY: str(folder)}}, "points"


def dendrites_layer(centerlines: pd.DataFrame, voxel_size, *, name: str) -> tuple:
    """LayerDataTuple of the dendrite centre lines: a Shapes layer of paths with their ids.

    napari draws a shape in a 2D slice only where all its vertices lie in that slice, so each
    centre line is cut into one flat path per z slice it crosses (joined end to end in 3D);
    every piece carries its ``dendrite_id`` and the longest piece shows it as text.
    """
    vs = np.asarray(voxel_size, float)
    ids, paths, labels = [], [], []
    for did, g in centerlines.groupby("dendrite_id", sort=True):
        pieces = _flat_pieces(g[POSITION].to_numpy(float) / vs)
        longest = int(np.argmax([len(q) for q in pieces])) if pieces else -1
        for i, q in enumerate(pieces):
            ids.append(int(did))
            paths.append(q)
            labels.append(str(int(did)) if i == longest else "")
    kw = {"name": name, "scale": tuple(voxel_size), "shape_type": "path",
          "edge_color": "#00FFFF", "edge_width": 0.3 / vs[1], "opacity": 0.7,
          "features": pd.DataFrame({"dendrite_id": ids, "label": labels}),
          "text": {"string": "{label}", "color": "#00FFFF", "size": 10}}
    return paths, kw, "shapes"


def _flat_pieces(path: np.ndarray) -> list[np.ndarray]:
    """Cut a (n, 3) voxel-coordinate path into runs of one z slice, each flat at that slice
    and reaching to the next run's first point."""
    if len(path) < 2:
        return []
    z = np.round(path[:, 0])
    cuts = np.flatnonzero(np.diff(z)) + 1
    pieces = []
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(path)]):
        q = path[a:min(b + 1, len(path))].copy()
        q[:, 0] = z[a]
        q = q[np.r_[True, np.any(np.diff(q[:, 1:], axis=0) != 0, axis=1)]]  # no 0-length step
        if len(q) >= 2:
            pieces.append(q)
    return pieces


def contrast_limits(data: np.ndarray) -> tuple[float, float]:
    """Display range of an image: 0.5th to 99.8th percentile."""
    lo, hi = np.percentile(data, (0.5, 99.8))
    return float(lo), float(max(hi, lo + 1))


def image_layer(stack, *, name: str) -> tuple:
    """LayerDataTuple of a stack with its voxel size as scale."""
    return stack.data, {"name": name, "scale": tuple(stack.voxel_size), "colormap": "gray",
                        "contrast_limits": contrast_limits(stack.data),
                        "metadata": {"spinecount_path": stack.path,
                                     "spinecount_channel": stack.channel}}, "image"


def result_layers(session, *, name: str, stack=None) -> list[tuple]:
    """Image (when given), dendrites, candidates (hidden; where the folder has them, less those
    already taken as spines) and spines of a :class:`~spinecount.review.ReviewSession`."""
    vs = _voxel_size(session, stack)
    layers = [image_layer(stack, name=name)] if stack is not None else []
    layers.append(dendrites_layer(session.centerlines, vs, name=f"{name} dendrites"))
    candidates = session.candidates()
    if candidates is not None:
        layers.append(candidates_layer(candidates, vs, name=f"{name} candidates",
                                       folder=session.folder))
    layers.append(spines_layer(session.counted(), vs, name=f"{name} spines",
                               folder=session.folder))
    return layers


def _voxel_size(session, stack):
    if stack is not None:
        return stack.voxel_size
    vs = session.run_info.get("voxel_size_um")
    return tuple(vs) if vs else (1.0, 1.0, 1.0)
