"""Dock widgets: "Detect spines" and "Review spines".

Both are thin: detection is :func:`spinecount.detection.detect_steps`, every edit is a call on
:class:`spinecount.review.ReviewSession` (which saves at once), and the layers come from
:mod:`._layers`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label,
                              LineEdit, ProgressBar, PushButton, SpinBox, Table)

from spinecount.classifier import BUILTIN
from spinecount.params import DEFAULT_CLASSIFIER, RULES, DetectionParams
from spinecount.results import REVIEWED_SPINES_FILE
from spinecount.tables import POSITION, SPINE_TYPES

from ._layers import CANDIDATES_KEY, FEATURE_DEFAULTS, RESULT_KEY, result_layers, spine_points

#: Review keys on a spines layer: key -> (action, what it does).
REVIEW_KEYS = {"a": ("accept", "accept and go to the next spine"),
               "r": ("reject", "reject and go to the next spine"),
               "n": ("next", "next spine"), "b": ("previous", "previous spine"),
               "s": ("stubby", "type stubby"), "t": ("thin", "type thin"),
               "m": ("mushroom", "type mushroom"), "f": ("filopodium", "type filopodium")}

#: Parameters always shown in "Detect spines" (the others behind "all parameters").
#: min_score first: with a classifier (the default) it is the cut (0.5: its threshold).
MAIN_PARAMS = ("min_score", "spine_threshold", "max_spine_length_um")
TABLE_COLUMNS = ["length (um)", "spines", "density (/um)"]


def add_layers(viewer, layers: list[tuple]) -> list:
    """Add LayerDataTuples to a viewer; returns the layers."""
    return [getattr(viewer, f"add_{kind}")(data, **kw) for data, kw, kind in layers]


def review_widget(viewer):
    """The viewer's "Review spines" widget, docked if it is not yet (edits of the spines layers
    are saved only while it is there)."""
    _, widget = viewer.window.add_plugin_dock_widget("spinecount", "Review spines")
    return widget


class DetectWidget(Container):
    """Detect spines in an image layer, in a worker thread, with progress and cancel."""

    def __init__(self, napari_viewer):
        super().__init__(scrollable=True)
        self.viewer = napari_viewer
        self.worker = None
        self._image = ComboBox(label="image", choices=self._image_layers)
        self._channel = SpinBox(label="channel", min=0, max=0, visible=False,
                                tooltip="channel of a multi-channel (C, Z, Y, X) layer")
        self._voxel = [FloatSpinBox(label=f"voxel {a} (um)", min=0.001, max=50, step=0.01,
                                    value=v) for a, v in zip("zyx", (1.0, 0.1, 0.1))]
        self._params = {
            name: FloatSpinBox(label=name.replace("_", " "), value=default, min=0, max=1e4,
                               step=0.05, tooltip=doc)
            for name, (default, doc) in DetectionParams.describe().items()}
        self._chooser = ComboBox(
            label="spines chosen by", choices=[*BUILTIN, RULES, "classifier file"],
            value=DEFAULT_CLASSIFIER,
            tooltip=f"a built-in classifier (default: {DEFAULT_CLASSIFIER}), the detector's "
                    f"rules alone, or a classifier trained with spinecount train")
        self._model = FileEdit(label="classifier file", mode="r", filter="*.json",
                               visible=False)
        self._more = CheckBox(label="all parameters", value=False)
        self._output = FileEdit(label="result folder", mode="d")
        self._run = PushButton(text="Detect spines")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(min=0, max=5, value=0, label="progress")
        self._status = Label(value="")
        self.extend([self._image, self._channel, *self._voxel, self._chooser, self._model,
                     self._more,
                     *self._params.values(), self._output, self._run, self._cancel,
                     self._progress, self._status])
        self._image.changed.connect(self._on_image)
        self._more.changed.connect(self._show_params)
        self._chooser.changed.connect(
            lambda how: setattr(self._model, "visible", how == "classifier file"))
        self._show_params(False)
        self._run.changed.connect(self.start)
        self._cancel.changed.connect(self.cancel)
        self.viewer.layers.events.inserted.connect(lambda e: self._image.reset_choices())
        self.viewer.layers.events.removed.connect(lambda e: self._image.reset_choices())
        self._on_image(self._image.value)

    def _show_params(self, everything: bool):
        for name, w in self._params.items():
            w.visible = everything or name in MAIN_PARAMS

    def _image_layers(self, _widget=None):
        import napari

        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, napari.layers.Image)]

    def _on_image(self, layer):
        if layer is None:
            return
        for w, v in zip(self._voxel, layer.scale[-3:]):
            w.value = float(v)
        self._channel.visible = layer.data.ndim == 4
        self._channel.max = layer.data.shape[0] - 1 if layer.data.ndim == 4 else 0
        src = layer.metadata.get("spinecount_path")
        self._output.value = (Path(src).with_name(f"{Path(src).stem}_spinecount") if src
                              else Path.cwd() / f"{layer.name}_spinecount")
        self._status.value = ("" if layer.metadata.get("spinecount_voxel_size_known", True)
                              else "the file has no voxel size: enter it above")

    def params(self) -> DetectionParams:
        return DetectionParams(**{k: w.value for k, w in self._params.items()})

    def classifier(self):
        """The chosen classifier's name or file, or ``"rules"``."""
        how = self._chooser.value
        return self._model.value if how == "classifier file" else how

    def start(self):
        """Detect spines in the chosen layer (in a worker thread); returns the worker."""
        from napari.qt.threading import thread_worker

        from spinecount.classifier import load_classifier
        from spinecount.detection import STAGES, detect_steps
        from spinecount.errors import InputError
        from spinecount.io import Stack
        from spinecount.results import detection_info, warning_messages, write_result

        layer = self._image.value
        if layer is None:
            self._status.value = "open an image first"
            return None
        folder = Path(self._output.value)
        if (folder / REVIEWED_SPINES_FILE).exists():
            self._status.value = (f"{folder} holds a review: choose another result folder "
                                  "(a new detection would not match it)")
            return None
        data = np.asarray(layer.data)
        if data.ndim == 4:
            data = data[self._channel.value]
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            self._status.value = f"{layer.name}: expected a 3D stack, got {data.ndim} dimensions"
            return None
        try:
            stack = Stack(data, tuple(w.value for w in self._voxel),
                          channel=layer.metadata.get("spinecount_channel"),
                          path=layer.metadata.get("spinecount_path"))
        except InputError as exc:
            self._status.value = str(exc)
            return None
        params, name = self.params(), layer.name
        try:
            model, chosen = load_classifier(self.classifier())
        except InputError as exc:
            self._status.value = str(exc)
            return None

        def work():
            import time
            import warnings

            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                det = yield from detect_steps(stack, params=params, classifier=model)
            said = warning_messages(caught)
            yield "saving"
            write_result(folder, det, detection_info(
                stack, det, params, wall_time_s=time.perf_counter() - t0, command="napari",
                extra={"stack": name, "warnings": said, "classifier": chosen}))
            return folder, said

        self._progress.max = len(STAGES) + 1
        self._progress.value = 0
        self._status.value = "detecting..."
        self.worker = thread_worker(work)()
        self.worker.yielded.connect(self._on_stage)
        self.worker.returned.connect(lambda done: self._on_done(*done, name))
        self.worker.errored.connect(lambda exc: setattr(self._status, "value", f"error: {exc}"))
        self.worker.finished.connect(self._on_finished)
        self._run.enabled, self._cancel.enabled = False, True
        self.worker.start()
        return self.worker

    def cancel(self):
        if self.worker is not None:
            self.worker.quit()
            self._status.value = "cancelled"

    def _on_stage(self, stage):
        if self.worker is None or self.worker.abort_requested:
            return  # a stage that finished as the run was cancelled: "cancelled" stays
        self._progress.value += 1
        self._status.value = f"{stage} done"

    def _on_finished(self):
        self._run.enabled, self._cancel.enabled = True, False
        self.worker = None

    def _on_done(self, folder, said, name):
        from napari.utils.notifications import show_warning

        from spinecount.review import ReviewSession

        session = ReviewSession(folder, autosave=False)
        for layer in [lay for lay in self.viewer.layers
                      if lay.name in (f"{name} spines", f"{name} dendrites")]:
            self.viewer.layers.remove(layer)
        add_layers(self.viewer, result_layers(session, name=name))
        n, length = len(session.spines), session.summary()["length_um"].sum()
        self._status.value = f"{n} spines on {length:.0f} um of dendrite; saved in {folder}"
        if said:  # in full where napari shows its messages, and in run.json
            self._status.value += f"; {len(said)} warning(s), see the notifications"
        for message in said:
            show_warning(message)
        review_widget(self.viewer)


class _Binding:
    """Keeps one spines layer and its ReviewSession in step: layer edits become session edits
    (a new point is ``added``, a deleted one ``rejected``, a dragged one ``moved``) and the
    layer is redrawn from the session after each."""

    def __init__(self, layer, session, on_change):
        self.layer, self.session, self.on_change = layer, session, on_change
        self.scale = np.asarray(layer.scale[-3:], float)
        self._busy = False
        layer.events.data.connect(self._on_data)
        self.refresh()

    def _on_data(self, event):
        if not self._busy and str(getattr(event, "action", "changed")) in (
                "added", "removed", "changed"):
            self.pull()

    def pull(self):
        """Apply the layer's points to the session."""
        s = self.session
        ids = self.layer.features["spine_id"].to_numpy(int)
        pos = np.asarray(self.layer.data, float)[:, -3:] * self.scale
        gone = sorted(set(s.counted()["spine_id"]) - set(ids[ids >= 0].tolist()))
        if gone:
            s.reject(gone)
        for p in pos[ids < 0]:
            s.add(p)
        known = s.spines.set_index("spine_id")[POSITION]
        for sid, p in zip(ids, pos):
            if sid >= 0 and np.abs(known.loc[sid].to_numpy(float) - p).max() > 1e-3:
                s.move(int(sid), p)
        self.refresh()

    def refresh(self):
        """Redraw the layer from the session."""
        d = spine_points(self.session.counted(), self.scale)
        self._busy = True
        try:
            self.layer.selected_data = set()
            self.layer.data = d["data"]
            self.layer.features = d["features"]
            self.layer.feature_defaults = FEATURE_DEFAULTS  # setting features resets them
            self.layer.size = d["size"]
            self.layer.face_color = d["face_color"] if len(d["data"]) else []
            self.layer.border_color = d["border_color"] if len(d["data"]) else []
        finally:
            self._busy = False
        self.on_change(self)

    def selected_ids(self) -> list[int]:
        rows = sorted(self.layer.selected_data)
        return self.layer.features["spine_id"].iloc[rows].astype(int).tolist()

    def select(self, spine_id: int) -> bool:
        rows = np.flatnonzero(self.layer.features["spine_id"].to_numpy(int) == spine_id)
        self.layer.selected_data = set(rows.tolist())
        return len(rows) > 0


class ReviewWidget(Container):
    """Review the spines of a result: live table, edits, review mode, blind experiment review.

    Every spines layer opened from a result folder (reader, "Detect spines", experiment list) is
    followed: adding, deleting and dragging points, and the type, accept and reject actions,
    are saved at once to ``spines_reviewed.csv`` in the result folder.
    """

    def __init__(self, napari_viewer):
        from spinecount.review import reviewer_name

        super().__init__(scrollable=True)
        self.viewer = napari_viewer
        self.bindings: dict[int, _Binding] = {}
        self.current: _Binding | None = None
        self._order: list[int] = []
        self._pos = -1
        self._queue = None
        self._queue_layers: list = []
        self._layer_label = Label(value="no spines layer")
        self._reviewer = LineEdit(label="reviewer", value=reviewer_name())
        self._type = ComboBox(label="type", choices=[*SPINE_TYPES, "unknown"])
        self._set_type = PushButton(text="Set type of selected")
        self._take = PushButton(text="Add selected candidates as spines")
        self._table = Table(value={c: [] for c in TABLE_COLUMNS})
        self._table.read_only = True
        self._start = PushButton(text="Start review (least certain first)")
        self._prev = PushButton(text="Previous [b]")
        self._accept = PushButton(text="Accept [a]")
        self._reject = PushButton(text="Reject [r]")
        self._next = PushButton(text="Next [n]")
        self._review_label = Label(value="keys: a accept, r reject, n next, b previous, "
                                         "s/t/m/f type")
        self._experiment = FileEdit(label="experiment folder", mode="d")
        self._blind = CheckBox(label="blind (hide condition and file name)", value=True)
        self._list_btn = PushButton(text="List stacks")
        self._stacks = ComboBox(label="stack", choices=[])
        self._open = PushButton(text="Open stack")
        for label in (self._layer_label, self._review_label):
            label.native.setWordWrap(True)
        buttons = Container(layout="horizontal", widgets=[self._prev, self._accept,
                                                          self._reject, self._next])
        self.extend([self._layer_label, self._reviewer, self._type, self._set_type, self._take,
                     self._table,
                     self._start, buttons, self._review_label, self._experiment, self._blind,
                     self._list_btn, self._stacks, self._open])
        self._set_type.changed.connect(lambda: self.retype(self._type.value))
        self._take.changed.connect(self.take_candidates)
        self._start.changed.connect(self.start_review)
        self._prev.changed.connect(self.previous)
        self._next.changed.connect(self.next)
        self._accept.changed.connect(self.accept)
        self._reject.changed.connect(self.reject)
        self._reviewer.changed.connect(self._on_reviewer)
        self._list_btn.changed.connect(self.list_stacks)
        self._open.changed.connect(lambda: self.open_stack(self._stacks.value))
        self.viewer.layers.events.inserted.connect(lambda e: self.attach(e.value))
        self.viewer.layers.events.removed.connect(lambda e: self._detach(e.value))
        self.viewer.layers.selection.events.active.connect(lambda e: self._on_active(e.value))
        for layer in list(self.viewer.layers):
            self.attach(layer)

    # -- layers
    def attach(self, layer) -> _Binding | None:
        """Follow a spines layer of a result folder (others are ignored)."""
        from spinecount.review import ReviewSession

        folder = getattr(layer, "metadata", {}).get(RESULT_KEY)
        if not folder or id(layer) in self.bindings:
            return self.bindings.get(id(layer))
        session = ReviewSession(folder, reviewer=self._reviewer.value)
        b = self.bindings[id(layer)] = _Binding(layer, session, self._on_change)
        for key, (action, _) in REVIEW_KEYS.items():
            layer.bind_key(key, lambda _layer, a=action: self.key(a), overwrite=True)
        self._on_active(layer)
        return b

    def _detach(self, layer):
        b = self.bindings.pop(id(layer), None)
        if b is not None and b is self.current:
            self.current = None
            self._layer_label.value = "no spines layer"

    def _on_active(self, layer):
        b = self.bindings.get(id(layer))
        if b is not None:
            self.current = b
            self._order, self._pos = [], -1
            self._on_change(b)

    def _on_reviewer(self, name):
        for b in self.bindings.values():
            b.session.reviewer = name

    def _on_change(self, binding):
        if binding is not self.current:
            return
        summ = binding.session.summary()
        rows = [[f"{r.length_um:.1f}", int(r.n_spines), f"{r.density_per_um:.3f}"]
                for r in summ.itertuples()]
        total = float(summ["length_um"].sum())
        n = int(summ["n_spines"].sum())
        rows.append([f"{total:.1f}", n, f"{n / total:.3f}" if total else ""])
        self._table.value = {"data": rows, "columns": TABLE_COLUMNS,
                             "index": [f"dendrite {d}" for d in summ["dendrite_id"]] + ["all"]}
        self._layer_label.value = f"{binding.layer.name}: {n} spines"

    # -- edits on the selected spines (or the spine under review)
    def _targets(self) -> list[int]:
        if self.current is None:
            return []
        ids = self.current.selected_ids()
        if not ids and 0 <= self._pos < len(self._order):
            ids = [self._order[self._pos]]
        return ids

    def retype(self, type_: str):
        ids = self._targets()
        if ids:
            self.current.session.retype(ids, type_)
            self._redraw()

    def take_candidates(self) -> list[int]:
        """Add the selected points of the current result's candidates layer (the detector's
        peaks that fell short of a spine's tests; shown with the layer's eye) as spines, each
        with the candidate's type; they leave the candidates layer. Returns the new ids."""
        if self.current is None:
            return []
        folder = str(self.current.session.folder)
        layer = next((lay for lay in self.viewer.layers
                      if getattr(lay, "metadata", {}).get(CANDIDATES_KEY) == folder), None)
        rows = sorted(layer.selected_data) if layer is not None else []
        scale = np.asarray(layer.scale[-3:], float) if rows else None
        ids = [self.current.session.add(np.asarray(layer.data[r], float)[-3:] * scale,
                                        type=str(layer.features["type"].iloc[r]))
               for r in rows]
        if rows:
            # napari cuts the features to a shorter data from the end: keep them apart
            keep = np.setdiff1d(np.arange(len(layer.data)), rows)
            features = layer.features.iloc[keep].reset_index(drop=True)
            layer.selected_data = set()
            layer.data = np.asarray(layer.data)[keep]
            layer.features = features
            self.viewer.layers.selection.active = self.current.layer
            self._redraw()
        return ids

    def accept(self):
        self._judge("accept")

    def reject(self):
        self._judge("reject")

    def _judge(self, verdict: str):
        """Accept or reject the selected spines (or the one under review), then go on."""
        ids = self._targets()
        if ids:
            getattr(self.current.session, verdict)(ids)
            self._redraw()
        self.next()

    def key(self, action: str):
        if action in SPINE_TYPES:
            self.retype(action)
        else:
            getattr(self, action)()

    def _redraw(self):
        self.current.refresh()
        if 0 <= self._pos < len(self._order):
            self._show()

    # -- review mode
    def start_review(self):
        """Step through the spines from the least to the most certain."""
        if self.current is None:
            return
        self.viewer.layers.selection.active = self.current.layer
        self._order = self.current.session.order()
        self._pos = 0
        self._show()

    def next(self):
        self._step(1)

    def previous(self):
        self._step(-1)

    def _step(self, by: int):
        if self._order:
            self._pos = int(np.clip(self._pos + by, 0, len(self._order) - 1))
            self._show()

    def _show(self):
        b = self.current
        sid = self._order[self._pos]
        row = b.session.get(sid)
        shown = b.select(sid)
        z, y, x = row[POSITION].to_numpy(float)
        if self.viewer.dims.ndisplay == 2:
            self.viewer.dims.set_point(0, z)
        self.viewer.camera.center = (z, y, x)
        self.viewer.camera.zoom = max(self.viewer.camera.zoom, 20.0)
        self._review_label.value = (
            f"spine {self._pos + 1}/{len(self._order)} (id {sid}): score {row['score']:.2f}, "
            f"{row['type']}, {row['status']}{'' if shown else ' (not shown)'}")

    # -- experiment (blind) review
    def list_stacks(self):
        """List the stacks of an experiment folder (shuffled and coded when blind)."""
        from spinecount.review import review_queue

        self._queue = review_queue(self._experiment.value, blind=self._blind.value)
        names = (self._queue["code"] if self._blind.value
                 else self._queue["code"] + " " + self._queue["stack"].astype(str))
        marks = np.where(self._queue["reviewed"], " (reviewed)", "")
        self._stacks.choices = [(f"{n}{m}", code) for n, m, code in
                                zip(names, marks, self._queue["code"])]
        return self._queue

    def open_stack(self, code: str):
        """Open one stack of the list (its image, dendrites and spines) in place of the last."""
        from spinecount.review import ReviewSession

        from ._reader import result_stack

        row = self._queue.set_index("code").loc[code]
        session = ReviewSession(row["folder"], autosave=False)
        name = code if self._blind.value else f"{code} {row['stack']}"
        for layer in self._queue_layers:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self._queue_layers = add_layers(self.viewer, result_layers(
            session, name=name, stack=result_stack(session)))
        if self._blind.value:
            self.viewer.title = f"spinecount review: {code}"
        return self._queue_layers
