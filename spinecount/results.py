"""Write a detection's tables and provenance to a result folder, all or nothing."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from ._version import __version__
from .params import DEFAULT_CLASSIFIER

SPINES_FILE = "spines.csv"
DENDRITES_FILE = "dendrites.csv"
CENTERLINES_FILE = "centerlines.csv"
#: Peaks below the detection threshold (``Detection.candidates``): not counted; time-lapse
#: linking looks among them for spines missed in one session.
CANDIDATES_FILE = "candidates.csv"
RUN_FILE = "run.json"
#: The reviewed (corrected) spine table written by the napari plugin, beside the automatic one.
REVIEWED_SPINES_FILE = "spines_reviewed.csv"


def replace_atomically(path, write) -> Path:
    """Call ``write(tmp)`` on a temporary file beside `path`, then move it onto `path`: a
    reader never sees a half-written file, and an error leaves the old one. Returns `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)
    return path


def input_info(stack, sha256: str | None = None) -> dict:
    """The input file of a stack: path, SHA-256 (`sha256` where the caller already has it,
    else computed), shape, dtype and channel."""
    from .io import file_sha256

    if sha256 is None and stack.path and Path(stack.path).exists():
        sha256 = file_sha256(stack.path)
    return {
        "path": None if stack.path is None else str(Path(stack.path).resolve()),
        "sha256": sha256,
        "shape_zyx": list(stack.data.shape),
        "dtype": str(stack.data.dtype),
        "channel": stack.channel,
    }


def provenance(stack, params, *, wall_time_s: float | None = None, extra: dict | None = None,
               sha256: str | None = None) -> dict:
    """What a result needs to be reproduced: version, parameters, input file and its hash.

    `sha256` is the input file's hash where the caller already has it (else it is computed).
    """
    info = {
        "spinecount_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "input": input_info(stack, sha256),
        "voxel_size_um": list(stack.voxel_size),
        "voxel_size_source": stack.metadata.get("voxel_size_source"),
        "parameters": params.to_dict(),
        "wall_time_s": wall_time_s,
        "python": platform.python_version(),
    }
    info.update(extra or {})
    return info


def warning_messages(caught) -> list[str]:
    """The messages of spinecount's own warnings (plain ``UserWarning``) among `caught` (from
    ``warnings.catch_warnings(record=True)``), as ``run.json`` keeps them."""
    return [str(w.message) for w in caught if w.category is UserWarning]


def detection_info(stack, det, params, *, wall_time_s: float, command: str,
                   sha256: str | None = None, extra: dict | None = None) -> dict:
    """``run.json`` of a detection: its provenance, the command, time per stage and counts."""
    return provenance(stack, params, wall_time_s=round(wall_time_s, 3), sha256=sha256, extra={
        "command": command, "timings_s": det.timings, "n_spines": len(det.spines),
        "n_candidates": len(det.candidates),
        "n_dendrites": len(det.dendrites), **(extra or {})})


def write_result(outdir, detection, run_info: dict) -> dict[str, Path]:
    """Write spines.csv, dendrites.csv, centerlines.csv, candidates.csv and run.json into
    `outdir`.

    The files are first written to a temporary folder beside `outdir` and only then moved into
    place, so an error part-way leaves an earlier result untouched.
    """
    outdir = Path(outdir)
    outdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", dir=outdir.parent))
    try:
        detection.spines.to_csv(tmp / SPINES_FILE, index=False)
        detection.dendrites.to_csv(tmp / DENDRITES_FILE, index=False)
        detection.centerlines.to_csv(tmp / CENTERLINES_FILE, index=False)
        detection.candidates.to_csv(tmp / CANDIDATES_FILE, index=False)
        (tmp / RUN_FILE).write_text(json.dumps(run_info, indent=2, default=str))
        outdir.mkdir(exist_ok=True)
        paths = {}
        for name in (SPINES_FILE, DENDRITES_FILE, CENTERLINES_FILE, CANDIDATES_FILE, RUN_FILE):
            os.replace(tmp / name, outdir / name)
            paths[name] = outdir / name
        return paths
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def detect_to_folder(path, outdir, params, *, command: str, channel=None, voxel_size=None,
                     timepoint=None, traces=None, progress: bool = False,
                     extra: dict | None = None, sha256: str | None = None,
                     chunk_um: float | None = None, threads: int | None = None,
                     classifier=DEFAULT_CLASSIFIER):
    """Read one stack, detect its spines, and write its result folder with provenance.

    `chunk_um` and `threads` go to :func:`spinecount.detection.detect` (they do not change
    the result), and so does `classifier` (a built-in name, a path or ``"rules"``; what it is
    and its digest are recorded). Returns ``(stack, detection, wall_time_s)``.
    """
    from .classifier import load_classifier
    from .detection import detect
    from .io import read_stack
    from .traces import read_traces

    t0 = time.perf_counter()
    caught = []
    model, chosen = load_classifier(classifier)
    extra = {**(extra or {}), "classifier": chosen}
    try:
        with warnings.catch_warnings(record=True) as caught:
            stack = read_stack(path, channel=channel, voxel_size=voxel_size,
                               timepoint=timepoint)
            det = detect(stack, params=params, traces=read_traces(traces) if traces else None,
                         progress=progress, chunk_um=chunk_um, threads=threads,
                         classifier=model)
    finally:  # shown as they would have been, also when the detection failed
        for w in caught:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    wall = time.perf_counter() - t0
    info = detection_info(stack, det, params, wall_time_s=wall, command=command, sha256=sha256,
                          extra={"traces": str(Path(traces).resolve()) if traces else "automatic",
                                 "warnings": warning_messages(caught), **(extra or {})})
    write_result(outdir, det, info)
    return stack, det, wall
