"""Screenshot of the napari plugin on the bundled real crop, for the README.

Opens the real crop with the human's annotation (sample data), detects spines with the
"Detect spines" panel, opens "Review spines" and starts the review, then saves the window.
Needs a display: ``xvfb-run -a python scripts/plugin_screenshot.py [docs/plugin.png]``.
"""

import sys
import tempfile
import time
from pathlib import Path

import napari
from napari.settings import get_settings
from qtpy.QtWidgets import QApplication


def main(out="docs/plugin.png"):
    get_settings().application.gui_notification_level = "error"  # no warning toasts
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 900)
    viewer.open_sample("spinecount", "rr30a_crop")
    _, det = viewer.window.add_plugin_dock_widget("spinecount", "Detect spines")
    det._image.value = viewer.layers["rr30a crop"]
    det._output.value = Path(tempfile.mkdtemp()) / "rr30a_crop_spinecount"
    det.start()
    while det.worker is not None:
        QApplication.processEvents()
        time.sleep(0.02)
    QApplication.processEvents()
    viewer.window.remove_dock_widget("all")
    _, review = viewer.window.add_plugin_dock_widget("spinecount", "Review spines")
    for name in ("rr30a crop annotated spines", "rr30a crop annotated dendrites"):
        viewer.layers[name].visible = False
    # a thick slice over the whole stack: maximum projection of the image, every spine shown
    viewer.dims.set_point(0, 9.5)
    viewer.dims.thickness = (20.0, *viewer.dims.thickness[1:])
    viewer.layers["rr30a crop"].projection_mode = "max"
    viewer.layers["rr30a crop spines"].projection_mode = "all"
    review.start_review()
    viewer.reset_view()
    viewer.camera.zoom *= 1.6
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.screenshot(out, canvas_only=False, flash=False)
    print(f"wrote {out}")
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
