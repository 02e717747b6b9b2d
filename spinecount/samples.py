"""The bundled sample stacks (``sample_stacks/`` of the repository; see its README)."""

from __future__ import annotations

from pathlib import Path

#: The real crop and its human annotation, and the synthetic stack with its truth.
REAL_CROP = "rr30a_s0_crop.tif"
SYNTHETIC = "synthetic_small.tif"


def sample_dir() -> Path:
    """The sample_stacks folder: beside the package in a checkout (or an editable install),
    else ``./sample_stacks``."""
    here = Path(__file__).resolve().parents[1] / "sample_stacks"
    return here if here.is_dir() else Path("sample_stacks")


def sample_path(name: str) -> Path:
    """Path of a bundled sample file, with a clear error where the folder is missing."""
    from .errors import InputError

    path = sample_dir() / name
    if not path.exists():
        raise InputError("sample file not found", path=path,
                         hint="the samples ship with the repository; run from a checkout")
    return path
