"""The napari plugin, for real under Xvfb: discovery, reader, samples, detection in a worker
thread, editing (add, delete, move, retype), review mode, autosave, reload, blind experiment
review feeding ``spinecount run``, and a screenshot that is not blank."""

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


def _detect(viewer, qtbot, layer_name, folder):
    _, det = viewer.window.add_plugin_dock_widget("spinecount", "Detect spines")
    det._image.value = viewer.layers[layer_name]
    det._output.value = folder
    worker = det.start()
    assert worker is not None, det._status.value
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: f"{layer_name} spines" in viewer.layers, timeout=10_000)
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

