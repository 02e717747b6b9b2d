"""The "Time-lapse" dock widget: the sessions of a field on a time axis, with the links.

Opens a tracking folder (``spinecount track -o FOLDER``, or ``OUTDIR/timelapse/<field>`` of an
experiment run): the stacks as one image with a time axis (each session moved by its
registration onto the first), every spine as a point coloured by its fate, and the links as a
Tracks layer. The reviewer breaks a link before the selected spine, or links a marked spine to
the selected one in the next session; the links are saved at once as ``tracks_reviewed.csv``
(:func:`spinecount.timelapse.save_reviewed_tracks`), which wins over the automatic links.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from magicgui.widgets import Container, FileEdit, Label, PushButton

FATE_COLORS = {"stable": "#FFFFFF", "formed": "#009E73", "eliminated": "#D55E00",
               "transient": "#F0E442"}
#: opacity of the fill of a spine taken from the detector's candidates
RESCUED_ALPHA = 0.4


def _rgba(hex_color: str) -> list[float]:
    return [int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5)] + [1.0]


def _placed(data: np.ndarray, shift_vox, shape) -> np.ndarray:
    """`data` moved by whole voxels (`shift_vox`, z y x) into an array of `shape` (0 outside)."""
    out = np.zeros(shape, data.dtype)
    src, dst = [], []
    for n_in, n_out, s in zip(data.shape, shape, np.round(shift_vox).astype(int)):
        lo, hi = max(0, s), min(n_out, n_in + s)
        if hi <= lo:
            return out
        dst.append(slice(lo, hi))
        src.append(slice(lo - s, hi - s))
    out[tuple(dst)] = data[tuple(src)]
    return out


def timelapse_layers(folder, tracks: pd.DataFrame) -> list[tuple]:
    """LayerDataTuples of a tracking folder: sessions (t, z, y, x), spines and links."""
    from spinecount.io import read_stack
    from spinecount.registration import Registration
    from spinecount.results import RUN_FILE
    from spinecount.timelapse import REF_POSITION

    from ._layers import DEFAULT_SIZE_UM, contrast_limits

    info = json.loads((Path(folder) / RUN_FILE).read_text())
    regs = [Registration.from_dict(r) for r in info["registrations"]]
    inputs = info.get("inputs") or []
    name = info.get("field") or Path(folder).name
    vs = np.asarray(inputs[0]["voxel_size_um"], float) if inputs else np.ones(3)
    layers = []
    if inputs and all(Path(i["path"]).exists() for i in inputs):
        stacks = [read_stack(i["path"], channel=i.get("channel"), voxel_size=i["voxel_size_um"])
                  for i in inputs]
        shape = stacks[0].data.shape
        movie = np.stack([_placed(s.data, r.shift_um / vs, shape)
                          for s, r in zip(stacks, regs)])
        layers.append((movie, {"name": f"{name} sessions", "scale": (1, *vs),
                               "colormap": "gray", "contrast_limits": contrast_limits(movie[0])},
                       "image"))
    pts = np.column_stack([tracks["session"].to_numpy(float),
                           tracks[REF_POSITION].to_numpy(float) / vs])
    # rescued: a detector's candidate taken as the spine missed that day (spinecount.timelapse),
    # drawn filled
    feats = tracks[[c for c in ("session", "row", "track_id", "fate", "rescued")
                    if c in tracks]].reset_index(drop=True)
    border = np.array([_rgba(FATE_COLORS.get(f, "#FFFFFF")) for f in feats["fate"]])
    rescued = feats["rescued"].to_numpy(bool) if "rescued" in feats else np.zeros(len(feats), bool)
    face = np.where(rescued[:, None], border * [1, 1, 1, RESCUED_ALPHA], 0.0)
    layers.append((pts, {"name": f"{name} spines over time", "scale": (1, *vs),
                         "features": feats, "size": DEFAULT_SIZE_UM / vs[1],
                         "face_color": face.reshape(-1, 4), "border_color": border.reshape(-1, 4),
                         "border_width": 0.2}, "points"))
    linked = tracks[tracks.groupby("track_id")["track_id"].transform("size") > 1]
    order = linked.sort_values(["track_id", "session"])
    tdata = np.column_stack([order["track_id"], order["session"],
                             order[REF_POSITION].to_numpy(float) / vs])
    if len(tdata):
        layers.append((tdata, {"name": f"{name} links", "scale": (1, *vs), "tail_length": 5,
                               "head_length": 0, "tail_width": 3}, "tracks"))
    return layers


class TimelapseWidget(Container):
    """Show a field's sessions with their links; break and make links."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.folder: Path | None = None
        self.tracks: pd.DataFrame | None = None
        self._marked: tuple[int, int] | None = None
        self._layers: list = []
        self._folder = FileEdit(label="tracking folder", mode="d")
        self._open = PushButton(text="Open")
        self._break = PushButton(text="Break link before selected spine")
        self._mark = PushButton(text="Mark selected as earlier spine")
        self._link = PushButton(text="Link marked spine to selected")
        self._status = Label(value="")
        self._status.native.setWordWrap(True)
        self.extend([self._folder, self._open, self._break, self._mark, self._link,
                     self._status])
        self._open.changed.connect(lambda: self.open(self._folder.value))
        self._break.changed.connect(self.break_selected)
        self._mark.changed.connect(self.mark_selected)
        self._link.changed.connect(self.link_selected)

    @property
    def points(self):
        return next((lay for lay in self._layers if lay.name.endswith("spines over time")),
                    None)

    def open(self, folder):
        """Open a tracking folder (reviewed links where saved)."""
        from spinecount.timelapse import TRACKS_FILE, prefer_reviewed

        self.folder = Path(folder)
        auto = pd.read_csv(self.folder / TRACKS_FILE)
        self.tracks, source = prefer_reviewed(auto, self.folder)
        self._draw()
        self._status.value = f"{source} links of {self.tracks['session'].nunique()} sessions"
        return self._layers

    def _draw(self):
        from ._widgets import add_layers

        step = self.viewer.dims.current_step
        for layer in self._layers:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self._layers = add_layers(self.viewer, timelapse_layers(self.folder, self.tracks))
        if len(step) == self.viewer.dims.ndim:
            self.viewer.dims.current_step = step

    def _selected(self) -> list[tuple[int, int]]:
        pts = self.points
        if pts is None:
            return []
        f = pts.features.iloc[sorted(pts.selected_data)]
        return list(zip(f["session"].astype(int), f["row"].astype(int)))

    def _save(self, tracks: pd.DataFrame, what: str):
        from spinecount.timelapse import save_reviewed_tracks

        self.tracks = tracks
        save_reviewed_tracks(self.folder, tracks)
        self._draw()
        self._status.value = f"{what}; saved to tracks_reviewed.csv"

    def break_selected(self):
        from spinecount.timelapse import break_link

        sel = self._selected()
        if len(sel) != 1:
            self._status.value = "select one spine"
            return
        self._save(break_link(self.tracks, *sel[0]), f"link before {sel[0]} broken")

    def mark_selected(self):
        sel = self._selected()
        if len(sel) != 1:
            self._status.value = "select one spine"
            return
        self._marked = sel[0]
        self._status.value = (f"marked spine {sel[0]}: go to the next session, select its "
                              "partner and press Link")

    def link_selected(self):
        from spinecount.timelapse import make_link

        sel = self._selected()
        if self._marked is None or len(sel) != 1:
            self._status.value = "mark a spine, then select one spine in the next session"
            return
        try:
            tracks = make_link(self.tracks, self._marked, sel[0])
        except ValueError as exc:
            self._status.value = str(exc)
            return
        self._save(tracks, f"{self._marked} linked to {sel[0]}")
        self._marked = None
