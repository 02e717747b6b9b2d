"""napari reader: TIFF stacks through spinecount.io, and spinecount result folders."""

from __future__ import annotations

import warnings
from pathlib import Path

from spinecount.results import CENTERLINES_FILE, RUN_FILE, SPINES_FILE


def is_result_folder(path) -> bool:
    p = Path(path)
    return p.is_dir() and all((p / f).exists() for f in (RUN_FILE, SPINES_FILE,
                                                          CENTERLINES_FILE))


def get_reader(path):
    """A reader for a TIFF stack or a spinecount result folder, else None."""
    if isinstance(path, list):
        return None if len(path) != 1 else get_reader(path[0])
    p = Path(path)
    if is_result_folder(p):
        return read_result
    if p.suffix.lower() in (".tif", ".tiff") and p.is_file():
        return read_tiff
    return None


def read_tiff(path) -> list[tuple]:
    """Every channel of a TIFF as an image layer scaled by the voxel size.

    A file without a voxel size opens with voxel size 1 and a warning: enter the true voxel
    size in the "Detect spines" panel before detecting.
    """
    from spinecount.errors import InputError
    from spinecount.io import read_channels

    from ._layers import image_layer

    path = Path(path[0] if isinstance(path, list) else path)
    try:
        stacks = read_channels(path)
        known = True
    except InputError as exc:
        if "voxel size" not in str(exc):
            raise
        warnings.warn(f"{exc}; opened with voxel size 1 x 1 x 1: enter the true voxel size "
                      "in the 'Detect spines' panel", stacklevel=2)
        stacks, known = read_channels(path, voxel_size=(1.0, 1.0, 1.0)), False
    layers = []
    for s in stacks:
        name = path.stem if s.channel is None else f"{path.stem} [ch{s.channel}]"
        data, kw, kind = image_layer(s, name=name)
        kw["metadata"]["spinecount_voxel_size_known"] = known
        layers.append((data, kw, kind))
    return layers


def read_result(path) -> list[tuple]:
    """A result folder as its image (when the stack is found), dendrites and spines layers.

    The spines are the reviewed ones where a review was saved, so reopening restores it.
    """
    from spinecount.review import ReviewSession

    from ._layers import result_layers

    path = Path(path[0] if isinstance(path, list) else path)
    session = ReviewSession(path, autosave=False)
    _dock_review()
    return result_layers(session, name=_result_name(session), stack=result_stack(session))


def _result_name(session) -> str:
    src = session.run_info.get("input", {}).get("path")
    return session.run_info.get("stack") or (Path(src).stem if src else session.folder.name)


def result_stack(session):
    """The stack a result was made from, read as it was then, or None when it is not found."""
    from spinecount.errors import InputError
    from spinecount.io import read_stack

    inp = session.run_info.get("input", {})
    if not inp.get("path") or not Path(inp["path"]).exists():
        return None
    try:
        return read_stack(inp["path"], channel=inp.get("channel"),
                          voxel_size=session.run_info.get("voxel_size_um"))
    except InputError as exc:
        warnings.warn(f"the result's stack could not be read: {exc}", stacklevel=2)
        return None


def _dock_review() -> None:
    """Dock "Review spines" in the current viewer, so that edits of the layers are saved."""
    try:
        import napari

        from ._widgets import review_widget

        viewer = napari.current_viewer()
        if viewer is not None:
            review_widget(viewer)
    except Exception:  # no window (headless scripts): reading still works
        pass
