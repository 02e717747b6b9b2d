"""The napari plugin, for real under Xvfb: discovery, reader, samples, detection in a worker
thread, editing (add, delete, move, retype), review mode, autosave, reload, blind experiment
review feeding ``spinecount run``, and a screenshot that is not blank."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

napari = pytest.importorskip("napari")
pytestmark = pytest.mark.napari

from spinecount.results import REVIEWED_SPINES_FILE, SPINES_FILE  # noqa: E402
from spinecount.samples import REAL_CROP, sample_path  # noqa: E402


def _detect(viewer, qtbot, layer_name, folder, chooser=None):
    _, det = viewer.window.add_plugin_dock_widget("spinecount", "Detect spines")
    det._image.value = viewer.layers[layer_name]
    det._output.value = folder
    if chooser is not None:
        det._chooser.value = chooser
    assert det.start() is not None, det._status.value
    # the viewer stays responsive: this loop runs Qt events while the worker thread detects
    qtbot.waitUntil(lambda: det.worker is None, timeout=120_000)
    assert f"{layer_name} spines" in viewer.layers, det._status.value
    return det, viewer.layers[f"{layer_name} spines"]


def _reviewed(folder):
    return pd.read_csv(Path(folder) / REVIEWED_SPINES_FILE)


def test_manifest_validates_and_is_discovered():
    r = subprocess.run([sys.executable, "-m", "npe2", "validate", "spinecount"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    assert "spinecount" in pm.iter_manifests.__self__._manifests


def test_reader_opens_tiff_with_voxel_size_as_scale(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open(sample_path(REAL_CROP), plugin="spinecount")
    assert len(layers) == 1
    np.testing.assert_allclose(layers[0].scale, (1.0, 0.12, 0.12))
    assert layers[0].data.shape == (20, 160, 694)


def test_reader_channels_and_missing_voxel_size(make_napari_viewer, tmp_path):
    import tifffile

    from spinecount.io import read_stack, write_imagej

    crop = read_stack(sample_path(REAL_CROP))
    two = np.stack([crop.data, crop.data[:, ::-1]], axis=1)  # ZCYX
    write_imagej(tmp_path / "two.tif", two, crop.voxel_size, axes="ZCYX")
    viewer = make_napari_viewer()
    layers = viewer.open(tmp_path / "two.tif", plugin="spinecount")
    assert [layer.name for layer in layers] == ["two [ch0]", "two [ch1]"]
    np.testing.assert_array_equal(layers[1].data, crop.data[:, ::-1])
    _, det = viewer.window.add_plugin_dock_widget("spinecount", "Detect spines")
    det._image.value = layers[1]
    assert det._voxel[2].value == pytest.approx(0.12)
    assert det._output.value == tmp_path / "two_spinecount"

    tifffile.imwrite(tmp_path / "plain.tif", crop.data)  # no voxel size anywhere
    with pytest.warns(UserWarning, match="voxel size"):
        plain = viewer.open(tmp_path / "plain.tif", plugin="spinecount")[0]
    det._image.value = plain
    assert "no voxel size" in det._status.value


def test_sample_data(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("spinecount", "synthetic")
    truth = pd.read_csv(sample_path("synthetic_small_spines.csv"))
    pts = viewer.layers["synthetic true spines"]
    assert len(pts.data) == len(truth)
    # points are drawn in voxels with the voxel size as scale: world = micrometres
    np.testing.assert_allclose(pts.data * pts.scale, truth[["z_um", "y_um", "x_um"]], atol=1e-6)
    viewer.open_sample("spinecount", "rr30a_crop")
    assert "rr30a crop" in viewer.layers and "rr30a crop annotated spines" in viewer.layers



def test_detect_edit_save_and_reload(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("SPINECOUNT_REVIEWER", "tester")
    viewer = make_napari_viewer()
    viewer.open_sample("spinecount", "synthetic")
    folder = tmp_path / "result"
    det, layer = _detect(viewer, qtbot, "synthetic", folder)
    auto = pd.read_csv(folder / SPINES_FILE)
    assert len(auto) > 10 and len(layer.data) == len(auto)
    assert list(layer.features.columns) == ["spine_id", "dendrite_id", "type", "score", "status"]
    assert "synthetic dendrites" in viewer.layers
    _, review = viewer.window.add_plugin_dock_widget("spinecount", "Review spines")
    assert review.current is not None and review.current.layer is layer
    n0 = len(auto)
    table = review._table.to_dataframe()
    assert table.iloc[-1]["spines"] == n0

    # add: a point near dendrite 0's centre line, in voxel coordinates
    cl = pd.read_csv(folder / "centerlines.csv")
    d0 = cl[cl.dendrite_id == cl.dendrite_id.iloc[0]]
    mid = d0[["z_um", "y_um", "x_um"]].to_numpy()[len(d0) // 2] + [0, 1.0, 0]
    layer.add(mid / np.asarray(layer.scale))
    rev = _reviewed(folder)
    added = rev[rev.status == "added"]
    assert len(added) == 1 and added.dendrite_id.iloc[0] == d0.dendrite_id.iloc[0]
    assert added.reviewer.iloc[0] == "tester"
    assert len(layer.data) == n0 + 1
    assert review._table.to_dataframe().iloc[-1]["spines"] == n0 + 1

    # delete: kept in the table as rejected, gone from the layer and the count
    gone = int(layer.features["spine_id"].iloc[0])
    layer.selected_data = {0}
    layer.remove_selected()
    rev = _reviewed(folder)
    assert rev.set_index("spine_id").loc[gone, "status"] == "rejected"
    assert len(layer.data) == n0 and gone not in set(layer.features["spine_id"])
    assert review._table.to_dataframe().iloc[-1]["spines"] == n0

    # move: drag (set the coordinates of) one point by 0.5 um in x
    sid = int(layer.features["spine_id"].iloc[3])
    data = layer.data.copy()
    data[3, 2] += 0.5 / layer.scale[2]
    layer.data = data
    row = _reviewed(folder).set_index("spine_id").loc[sid]
    assert row["status"] == "moved"
    assert row["x_um"] == pytest.approx(auto.set_index("spine_id").loc[sid, "x_um"] + 0.5)

    # retype: from the menu and from a key
    sid2 = int(layer.features["spine_id"].iloc[5])
    layer.selected_data = {5}
    review.retype("mushroom")
    assert _reviewed(folder).set_index("spine_id").loc[sid2, "type"] == "mushroom"
    row5 = np.flatnonzero(layer.features["spine_id"] == sid2)[0]
    assert layer.features["type"].iloc[row5] == "mushroom"
    layer.selected_data = {row5}
    review.key("thin")  # what the "t" key does
    rev = _reviewed(folder).set_index("spine_id")
    assert rev.loc[sid2, "type"] == "thin" and rev.loc[sid2, "status"] == "retyped"

    # the automatic table is untouched; reopening the folder restores the review
    pd.testing.assert_frame_equal(pd.read_csv(folder / SPINES_FILE), auto)
    viewer.layers.clear()
    viewer.open(folder, plugin="spinecount")
    again = viewer.layers["synthetic spines"]
    assert len(again.data) == n0
    assert gone not in set(again.features["spine_id"])
    assert (again.features["status"] == "added").sum() == 1
    assert "synthetic" in viewer.layers  # the image came back with the result


def test_review_mode_steps_from_least_certain(make_napari_viewer, qtbot, tmp_path):
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer(show=True)
    viewer.open_sample("spinecount", "synthetic")
    folder = tmp_path / "r"
    _, layer = _detect(viewer, qtbot, "synthetic", folder)
    _, review = viewer.window.add_plugin_dock_widget("spinecount", "Review spines")
    review.start_review()
    auto = pd.read_csv(folder / SPINES_FILE).set_index("spine_id")
    first = review._order[0]
    assert auto.loc[first, "score"] == auto["score"].min()
    assert layer.features["spine_id"].iloc[sorted(layer.selected_data)[0]] == first
    z, y, x = auto.loc[first, ["z_um", "y_um", "x_um"]]
    assert viewer.camera.center[-2:] == pytest.approx((y, x), abs=1e-6)
    assert viewer.dims.point[0] == pytest.approx(z, abs=viewer.layers["synthetic"].scale[0])

    # single keys, pressed on the canvas
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key_A)  # accept, go on
    assert review._pos == 1
    second = review._order[1]
    qtbot.keyClick(canvas, Qt.Key_M)  # type mushroom
    qtbot.keyClick(canvas, Qt.Key_R)  # reject, go on
    qtbot.keyClick(canvas, Qt.Key_B)  # back
    assert review._pos == 1
    qtbot.keyClick(canvas, Qt.Key_N)
    assert review._pos == 2
    rev = _reviewed(folder).set_index("spine_id")
    assert rev.loc[first, "status"] == "accepted"
    assert rev.loc[second, ["status", "type"]].tolist() == ["rejected", "mushroom"]
    assert second not in set(layer.features["spine_id"])


def test_missed_spines_are_added_from_the_candidates(make_napari_viewer, qtbot, tmp_path):
    from spinecount.params import RULES
    from spinecount.results import CANDIDATES_FILE

    viewer = make_napari_viewer()
    viewer.open_sample("spinecount", "synthetic")
    folder = tmp_path / "r"
    # the rules keep more candidates on this easy stack than the built-in classifier (1)
    _, layer = _detect(viewer, qtbot, "synthetic", folder, chooser=RULES)
    _, review = viewer.window.add_plugin_dock_widget("spinecount", "Review spines")
    assert review.current.layer is layer  # the spines stay the layer under review
    cands = viewer.layers["synthetic candidates"]
    table = pd.read_csv(folder / CANDIDATES_FILE)
    assert not cands.visible and len(cands.data) == len(table) >= 2
    n0 = len(layer.data)
    cands.selected_data = {0, 1}
    ids = review.take_candidates()
    assert len(ids) == 2 and len(cands.data) == len(table) - 2
    # the candidates left keep their own rows
    assert cands.features["type"].tolist() == table["type"].iloc[2:].tolist()
    np.testing.assert_allclose(np.asarray(cands.data)[:, -3:] * np.asarray(cands.scale[-3:]),
                               table[["z_um", "y_um", "x_um"]].iloc[2:].to_numpy(), atol=1e-6)
    assert len(layer.data) == n0 + 2
    rev = _reviewed(folder).set_index("spine_id").loc[ids]
    assert (rev["status"] == "added").all()
    assert rev["type"].tolist() == table["type"].iloc[:2].tolist()
    np.testing.assert_allclose(rev[["z_um", "y_um", "x_um"]].to_numpy(),
                               table[["z_um", "y_um", "x_um"]].iloc[:2].to_numpy(), atol=1e-6)
    assert review.take_candidates() == []  # nothing selected: nothing added
    # the folder opened again offers only the candidates not taken
    viewer.layers.clear()
    viewer.open(str(folder), plugin="spinecount")
    again = [lay for lay in viewer.layers if "candidates" in lay.name]
    assert len(again) == 1 and len(again[0].data) == len(table) - 2


def test_a_single_plane_is_detected_with_its_warning_kept(make_napari_viewer, qtbot,
                                                          tmp_path):
    """A projection opened as a 2D layer is detected; the warning that it hides spines reaches
    the user (status line, notification) and the result's run.json."""
    from spinecount.synthetic import make_stack

    viewer = make_napari_viewer()
    syn = make_stack(shape_um=(10, 24, 24), n_dendrites=1, branch_probability=0, seed=2)
    viewer.add_image(syn.stack.data.max(axis=0), name="mip", scale=syn.stack.voxel_size[1:])
    _, det = viewer.window.add_plugin_dock_widget("spinecount", "Detect spines")
    det._image.value = viewer.layers["mip"]
    for w, v in zip(det._voxel, syn.stack.voxel_size):
        w.value = v
    det._output.value = tmp_path / "mip"
    assert det.start() is not None, det._status.value
    qtbot.waitUntil(lambda: det.worker is None, timeout=120_000)
    assert "1 warning(s)" in det._status.value, det._status.value
    said = json.loads((tmp_path / "mip" / "run.json").read_text())["warnings"]
    assert len(said) == 1 and "one plane" in said[0]
    det._voxel[0].value = 30  # a z step no stack of spines has: refused as files are
    assert det.start() is None and "nanometres or millimetres" in det._status.value


def test_spines_chosen_by_a_classifier(make_napari_viewer, qtbot, tmp_path):
    """The built-in classifier chooses in the Detect widget by default: the spines' scores
    are its probabilities and run.json names it; a classifier file that is none is refused."""
    from spinecount.classifier import SpineClassifier

    viewer = make_napari_viewer()
    viewer.open_sample("spinecount", "rr30a_crop")
    _, det = viewer.window.add_plugin_dock_widget("spinecount", "Detect spines")
    assert det._chooser.value == "rr30a" and det._model.native.isHidden()
    det._chooser.value = "classifier file"
    assert not det._model.native.isHidden()
    (tmp_path / "bad.json").write_text("{}")
    det._model.value = tmp_path / "bad.json"
    assert det.start() is None and "not a spinecount classifier" in det._status.value
    det._chooser.value = "rr30a"
    det._image.value = viewer.layers["rr30a crop"]
    det._output.value = tmp_path / "learned"
    assert det.start() is not None, det._status.value
    qtbot.waitUntil(lambda: det.worker is None, timeout=120_000)
    run = json.loads((tmp_path / "learned" / "run.json").read_text())
    assert run["classifier"] == {"source": "rr30a",
                                 "sha256": SpineClassifier.load("rr30a").digest()}
    scores = pd.read_csv(tmp_path / "learned" / SPINES_FILE)["score"]
    assert len(scores) and scores.between(SpineClassifier.load("rr30a").threshold, 1).all()


def test_detection_can_be_cancelled(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample("spinecount", "rr30a_crop")
    _, det = viewer.window.add_plugin_dock_widget("spinecount", "Detect spines")
    det._image.value = viewer.layers["rr30a crop"]
    det._output.value = tmp_path / "cancelled"
    assert det.start() is not None
    det.cancel()
    qtbot.waitUntil(lambda: det.worker is None, timeout=60_000)
    assert not (tmp_path / "cancelled" / SPINES_FILE).exists()
    assert det._run.enabled and det._status.value == "cancelled"


def test_screenshot_is_not_blank(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("spinecount", "rr30a_crop")
    _detect(viewer, qtbot, "rr30a crop", tmp_path / "crop")
    viewer.window.remove_dock_widget("all")
    viewer.dims.set_point(0, 9.0)
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    rgb = shot[..., :3].astype(float)
    assert rgb.std() > 5
    assert (rgb.max(axis=-1) > 40).sum() > 500  # the dendrite is drawn, not a black canvas
    # the spine markers are drawn: some pixels carry a type colour (not grey)
    assert (np.ptp(rgb, axis=-1) > 60).sum() > 50


def test_blind_experiment_review_is_used_by_the_run(make_napari_viewer, tmp_path):
    from spinecount.experiment import run_experiment
    from spinecount.synthetic import make_experiment

    manifest = make_experiment(tmp_path / "data", animals_per_condition=1, stacks_per_animal=1,
                               shape_um=(10, 30, 30))
    out = tmp_path / "out"
    before = run_experiment(manifest, out, workers=0, progress=False)
    assert set(before.dendrites["source"]) == {"automatic"}

    viewer = make_napari_viewer()
    _, review = viewer.window.add_plugin_dock_widget("spinecount", "Review spines")
    review._experiment.value = out
    review._blind.value = True
    queue = review.list_stacks()
    # blind: codes only, nothing that tells the condition or the file
    assert list(queue.columns) == ["code", "folder", "reviewed"]
    assert review._stacks.choices == tuple(queue["code"])
    code = queue["code"].iloc[0]
    layers = review.open_stack(code)
    names = [layer.name for layer in layers]
    assert names == [code, f"{code} dendrites", f"{code} candidates", f"{code} spines"]
    conditions = pd.read_csv(manifest)["condition"]
    assert not any(c in n for c in conditions for n in names + [viewer.title])
    stack = Path(queue["folder"].iloc[0]).name
    assert not any(stack in n for n in names)

    spines = viewer.layers[f"{code} spines"]
    n_auto = len(spines.data)
    spines.selected_data = {0, 1}
    spines.remove_selected()
    after = run_experiment(manifest, out, workers=0, progress=False)
    assert after.n_computed == 0  # nothing recomputed, the review is picked up
    mine = after.dendrites[after.dendrites["stack"] == stack]
    assert set(mine["source"]) == {"reviewed"}
    assert mine["n_spines"].sum() == n_auto - 2
    others = after.dendrites[after.dendrites["stack"] != stack]
    assert set(others["source"]) == {"automatic"}


def test_timelapse_sessions_links_and_link_review(make_napari_viewer, tmp_path):
    from spinecount.cli import main
    from spinecount.synthetic import make_timelapse, write_synthetic
    from spinecount.timelapse import REVIEWED_TRACKS_FILE

    tl = make_timelapse(n_sessions=2, shape_um=(10, 30, 30), n_dendrites=1,
                        branch_probability=0, seed=2)
    spines, stacks = [], []
    for i, syn in enumerate(tl.sessions):
        paths = write_synthetic(syn, tmp_path / f"day{i}.tif")
        spines.append(str(paths["spines"]))
        stacks.append(str(paths["stack"]))
    out = tmp_path / "tracks"
    assert main(["track", "--spines", *spines, "--stacks", *stacks, "-o", str(out)]) == 0
    auto = pd.read_csv(out / "tracks.csv")

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("spinecount", "Time-lapse")
    widget._folder.value = out
    widget.open(out)
    movie = viewer.layers["tracks sessions"]
    assert movie.data.shape[0] == 2 and movie.data.ndim == 4  # the time axis
    pts = widget.points
    assert len(pts.data) == len(auto)
    assert "tracks links" in viewer.layers

    # break a persistent link, then make it again
    persistent = auto[auto["fate"] == "stable"]
    later = persistent[persistent["session"] == 1].iloc[0]
    earlier = persistent[(persistent["session"] == 0)
                         & (persistent["track_id"] == later["track_id"])].iloc[0]

    def select(session, row):
        f = widget.points.features
        widget.points.selected_data = {int(np.flatnonzero((f["session"] == session)
                                                          & (f["row"] == row))[0])}

    select(1, later["row"])
    widget.break_selected()
    rev = pd.read_csv(out / REVIEWED_TRACKS_FILE)
    at = rev.set_index(["session", "row"])
    assert at.loc[(1, later["row"]), "fate"] == "formed"
    assert at.loc[(0, earlier["row"]), "fate"] == "eliminated"
    assert pd.read_csv(out / "turnover.csv").query("dendrite == 'all'")["n_formed"].iloc[0] \
        == (auto.query("session == 1")["fate"] == "formed").sum() + 1
    pd.testing.assert_frame_equal(pd.read_csv(out / "tracks.csv"), auto)  # automatic kept

    select(0, earlier["row"])
    widget.mark_selected()
    select(1, later["row"])
    widget.link_selected()
    at = pd.read_csv(out / REVIEWED_TRACKS_FILE).set_index(["session", "row"])
    assert at.loc[(1, later["row"]), "track_id"] == at.loc[(0, earlier["row"]), "track_id"]
    assert at.loc[(1, later["row"]), "fate"] == "stable"

    # reopening shows the reviewed links, and a new tracking run keeps them
    widget.open(out)
    assert "reviewed" in widget._status.value
    assert main(["track", "--spines", *spines, "--stacks", *stacks, "-o", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["links"] == "reviewed"


def test_spines_taken_from_candidates_are_drawn_filled(tmp_path):
    from spinecount.registration import IDENTITY
    from spinecount.timelapse import link, write_tracks
    from spinecount_napari._timelapse import RESCUED_ALPHA, timelapse_layers

    def table(ys):  # automatic: a score on every spine
        return pd.DataFrame({"z_um": 2.0, "y_um": ys, "x_um": 5.0, "score": 0.9})

    steady = 3.0 * np.arange(12)
    tracks = link([table([*steady, 40.0]), table(steady + 0.1)],
                  candidates=[None, table([40.1])])
    write_tracks(tmp_path, tracks, [IDENTITY, IDENTITY], {"inputs": []})
    (pts, meta, kind), *_ = timelapse_layers(tmp_path, tracks)
    assert kind == "points" and len(pts) == 26
    filled = meta["face_color"][:, 3] > 0
    assert filled.tolist() == tracks["rescued"].tolist() and filled.sum() == 1
    assert meta["face_color"][filled, 3] == pytest.approx(RESCUED_ALPHA)
