"""Read two-photon stacks, with their voxel size in micrometres.

:func:`read_stack` reads ImageJ TIFF (ZYX and hyperstacks), OME-TIFF, ScanImage TIFF, plain
multi-page TIFF and single 2D images into a :class:`Stack`. Every density that spinecount
reports depends on the voxel size, so it is never guessed: it comes from the file's metadata or
from the caller, and the caller wins.
"""

from __future__ import annotations

import hashlib
import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["Stack", "read_stack", "write_imagej", "file_sha256", "check_voxel_size"]

VOXEL_HINT = "give it with --voxel-size Z Y X (micrometres) or voxel_size=(z, y, x)"
#: Voxel sizes (um) outside these ranges are refused as a mistake (most often nanometres or
#: millimetres taken for micrometres): no spine can be seen at coarser pixels, and none of
#: today's microscopes samples finer. Within them, the detector warns where it is not measured.
ACCEPTED_Z_STEP_UM, ACCEPTED_PIXEL_UM = (0.01, 20.0), (0.005, 2.0)

# Length units to micrometres. Keys are lower case.
_UNIT_UM = {
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "micrometre": 1.0, "\\u00b5m": 1.0, "u": 1.0,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
    "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6, "metre": 1e6,
}  # fmt: skip

# A resolution tag bigger or smaller than this is not a microscope pixel but a default (72 dpi
# etc) and counts as missing. Wider than ACCEPTED_PIXEL_UM: a real calibration of a coarse
# image is read as it is, and then refused with its own message.
_PLAUSIBLE_PIXEL_UM = (0.005, 50.0)


@dataclass
class Stack:
    """A single-channel 3D image with its physical voxel size.

    Attributes
    ----------
    data : ndarray, shape (z, y, x)
        The pixel values, in the file's dtype (uint8, uint16 or float).
    voxel_size : tuple of float
        Size of one voxel in micrometres, (z, y, x).
    channel : int or None
        Index of the channel read from a multi-channel file, None for single-channel files.
    path : str or None
        The file the stack came from.
    metadata : dict
        How the stack was read: ``format``, ``voxel_size_source`` and anything else worth keeping.

    Examples
    --------
    >>> import numpy as np
    >>> s = Stack(np.zeros((2, 3, 4), np.uint8), (1.0, 0.1, 0.1))
    >>> s.shape_um
    (2.0, 0.30000000000000004, 0.4)
    """

    data: np.ndarray
    voxel_size: tuple[float, float, float]
    channel: int | None = None
    path: str | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):  # every stack, read or made, gets the same check
        self.voxel_size = check_voxel_size(self.voxel_size, path=self.path)

    @property
    def shape_um(self) -> tuple[float, float, float]:
        """Extent of the stack in micrometres, (z, y, x)."""
        return tuple(n * v for n, v in zip(self.data.shape, self.voxel_size))

    @property
    def name(self) -> str:
        return Path(self.path).name if self.path else "<array>"


def file_sha256(path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, for provenance."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_voxel_size(voxel_size, *, path=None) -> tuple[float, float, float]:
    """Validate a (z, y, x) voxel size in micrometres and return it as floats."""
    try:
        vs = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError):
        raise InputError(f"voxel size {voxel_size!r} is not three numbers", path=path,
                         hint=VOXEL_HINT) from None
    if len(vs) != 3:
        raise InputError(f"voxel size needs three numbers (z, y, x), got {len(vs)}", path=path,
                         hint=VOXEL_HINT)
    if not all(np.isfinite(v) and v > 0 for v in vs):
        raise InputError(f"voxel size {vs} must be positive and finite (micrometres)", path=path,
                         hint=VOXEL_HINT)
    (lo_z, hi_z), (lo_xy, hi_xy) = ACCEPTED_Z_STEP_UM, ACCEPTED_PIXEL_UM
    if not (lo_z <= vs[0] <= hi_z and lo_xy <= min(vs[1:]) and max(vs[1:]) <= hi_xy):
        raise InputError(
            f"voxel size {vs[0]:g} x {vs[1]:g} x {vs[2]:g} um (z, y, x) is not that of a stack "
            f"in which spines can be seen (z steps {lo_z:g}-{hi_z:g} um, pixels {lo_xy:g}-"
            f"{hi_xy:g} um): is it in nanometres or millimetres?", path=path, hint=VOXEL_HINT)
    return vs


def _unit_factor(unit) -> float | None:
    if unit is None:
        return None
    u = str(unit).strip().lower()
    return _UNIT_UM.get(u)


def _plausible(v) -> bool:
    return v is not None and _PLAUSIBLE_PIXEL_UM[0] <= v <= _PLAUSIBLE_PIXEL_UM[1]


def _resolution_um(page, unit_factor: float | None) -> tuple[float | None, float | None]:
    """(y, x) pixel size from the TIFF resolution tags, in micrometres, or None each."""
    out = []
    for name in ("YResolution", "XResolution"):
        tag = page.tags.get(name)
        if tag is None or unit_factor is None:
            out.append(None)
            continue
        num, den = tag.value if isinstance(tag.value, tuple) else (tag.value, 1)
        if not num or not den:
            out.append(None)
            continue
        out.append(den / num * unit_factor)
    return tuple(out)


def _tiff_unit_factor(page) -> float | None:
    # Baseline TIFF: ResolutionUnit 3 = centimetre. Inch (2) is what image editors write by
    # default (72 dpi), so it never counts as a microscope calibration.
    tag = page.tags.get("ResolutionUnit")
    return 1e4 if tag is not None and int(tag.value) == 3 else None


def _imagej_voxel(tf, page):
    ij = tf.imagej_metadata or {}
    factor = _unit_factor(ij.get("unit"))
    y, x = _resolution_um(page, factor)
    z = ij.get("spacing")
    z = float(z) * factor if (z is not None and factor is not None) else None
    # ImageJ writes resolution 1 with unit "pixel" or no unit when uncalibrated.
    return (z, y, x)


def _ome_voxel(tf):
    try:
        root = ET.fromstring(tf.ome_metadata)
    except (ET.ParseError, TypeError):
        return (None, None, None)
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return (None, None, None)
    out = []
    for ax in "ZYX":
        v = pixels.get(f"PhysicalSize{ax}")
        factor = _unit_factor(pixels.get(f"PhysicalSize{ax}Unit", "µm"))
        out.append(float(v) * factor if (v is not None and factor is not None) else None)
    return tuple(out)


def _parse_matlab(text: str) -> dict:
    """ScanImage 'SI.x.y = value' lines into a dict of Python values."""
    import tifffile

    out = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\w.]+)\s*=\s*(.*)$", line)
        if m:
            try:
                out[m.group(1)] = tifffile.matlabstr2py(m.group(2))
            except Exception:
                out[m.group(1)] = m.group(2)
    return out


def scanimage_pixel_size(framedata: dict, roigroups: dict | None) -> float | None:
    """Lateral pixel size (um) from ScanImage metadata, or None if it does not say.

    ScanImage gives the scan field in degrees (``RoiGroups``) and the objective's micrometres per
    degree (``SI.objectiveResolution``); pixel size = field size x um/deg / pixels.
    """
    um_per_deg = framedata.get("SI.objectiveResolution")
    try:
        rois = roigroups["imagingRoiGroup"]["rois"]
        rois = rois[0] if isinstance(rois, list) else rois
        sf = rois["scanfields"]
        sf = sf[0] if isinstance(sf, list) else sf
        size_deg = float(np.max(sf["sizeXY"]))
        n_px = float(np.max(sf["pixelResolutionXY"]))
        return size_deg * float(um_per_deg) / n_px
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def _scanimage(tf, series):
    """Return (array with axes 'ZCYX', (z, y, x) sizes) from a ScanImage file."""
    page = tf.pages.first
    meta = tf.scanimage_metadata or {}
    framedata = dict(meta.get("FrameData") or {})
    if not framedata:
        framedata = _parse_matlab(page.software or "")
        framedata.update(_parse_matlab(page.description or ""))
    chans = framedata.get("SI.hChannels.channelSave", 1)
    n_chan = len(chans) if isinstance(chans, (list, tuple)) else 1
    frames = framedata.get("SI.hStackManager.framesPerSlice", 1)
    avg = framedata.get("SI.hScan2D.logAverageFactor", 1) or 1
    try:
        frames = max(int(frames) // int(avg), 1)
    except (OverflowError, ValueError, TypeError):
        frames = 1
    pages = series.asarray()
    pages = pages.reshape(-1, *pages.shape[-2:])
    per_slice = frames * n_chan
    if pages.shape[0] % per_slice:
        raise InputError(
            f"ScanImage file has {pages.shape[0]} frames, not a multiple of "
            f"{frames} frames x {n_chan} channels per slice",
            path=tf.filehandle.path, hint="the acquisition may have been aborted; check the file",
        )
    arr = pages.reshape(-1, frames, n_chan, *pages.shape[-2:])
    arr = arr.mean(axis=1, dtype=np.float32) if frames > 1 else arr[:, 0]
    z = framedata.get("SI.hStackManager.actualStackZStepSize",
                      framedata.get("SI.hStackManager.stackZStepSize"))
    try:
        z = abs(float(z)) or None
    except (TypeError, ValueError):
        z = None
    px = scanimage_pixel_size(framedata, meta)
    if px is None:
        px = _calibrated_pixel_um(page)[1]
    return arr, (z, px, px), {"frames_per_slice": frames, "channels_saved": n_chan}


def _calibrated_pixel_um(page) -> tuple[float | None, float | None]:
    """(y, x) pixel size from centimetre resolution tags if it is a plausible microscope pixel."""
    y, x = _resolution_um(page, _tiff_unit_factor(page))
    return (y, x) if (_plausible(x) and _plausible(y)) else (None, None)


def _plain_voxel(page):
    return (None, *_calibrated_pixel_um(page))


def _to_zcyx(arr: np.ndarray, axes: str, path, timepoint):
    """Bring an array with tifffile axes to (z, c, y, x); refuse what cannot be interpreted."""
    axes = axes.upper()
    # Plain multi-page files: tifffile calls the page axis I (image) or Q (unknown).
    axes = axes.replace("I", "Z").replace("Q", "Z").replace("S", "C")
    if len(set(axes)) != len(axes):
        # e.g. two unknown axes: cannot tell which is z
        raise InputError(f"cannot interpret image dimensions {arr.shape} (axes {axes})",
                         path=path, hint="save it as a ZYX or ZCYX stack (ImageJ hyperstack)")
    if "Y" not in axes or "X" not in axes:
        raise InputError(f"image has no Y and X axes ({axes})", path=path)
    if "T" in axes:
        t = axes.index("T")
        n_t = arr.shape[t]
        if timepoint is None and n_t > 1:
            raise InputError(f"file holds {n_t} time points", path=path,
                             hint="choose one with timepoint=N (--timepoint N) or save one "
                                  "z-stack per file")
        ti = 0 if timepoint is None else int(timepoint)
        if not 0 <= ti < n_t:
            raise InputError(f"time point {ti} does not exist (file has {n_t})", path=path)
        arr = np.take(arr, ti, axis=t)
        axes = axes.replace("T", "")
    extra = [a for a in axes if a not in "ZCYX"]
    for a in extra:
        i = axes.index(a)
        if arr.shape[i] != 1:
            raise InputError(
                f"image has more dimensions than spinecount can interpret "
                f"(shape {arr.shape}, axes {axes})",
                path=path, hint="save one z-stack (ZYX or ZCYX) per file",
            )
        arr = np.take(arr, 0, axis=i)
        axes = axes.replace(a, "")
    for a in "ZC":
        if a not in axes:
            arr = arr[np.newaxis]
            axes = a + axes
    order = [axes.index(a) for a in "ZCYX"]
    return np.transpose(arr, order)


def read_stack(path, *, channel: int | None = None, voxel_size=None, timepoint: int | None = None
               ) -> Stack:
    """Read a two-photon stack from a TIFF file.

    Parameters
    ----------
    path : str or Path
        ImageJ TIFF or hyperstack, OME-TIFF, ScanImage TIFF, plain multi-page TIFF or a 2D image.
    channel : int, optional
        Channel index in a multi-channel file. Required when the file has more than one channel.
    voxel_size : (z, y, x) floats, optional
        Voxel size in micrometres. Overrides the file's metadata. Required when the file does not
        say (plain TIFFs). A 2D image that gives its pixel size needs no z.
    timepoint : int, optional
        Time point to read from a hyperstack with a time axis (TZCYX).

    Returns
    -------
    Stack
        With ``data`` of shape (z, y, x) in the file's dtype (float32 where ScanImage frames were
        averaged).

    Raises
    ------
    InputError
        With one line naming the file and the problem: missing file, not a TIFF, corrupt or
        truncated data, a channel that does not exist, an empty, constant or NaN stack, more
        dimensions than can be interpreted, a missing or non-positive voxel size.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from spinecount.io import write_imagej
    >>> path = os.path.join(tempfile.mkdtemp(), "a.tif")
    >>> write_imagej(path, np.arange(24, dtype=np.uint8).reshape(2, 3, 4), (1.0, 0.12, 0.12))
    >>> s = read_stack(path)
    >>> s.data.shape, s.voxel_size
    ((2, 3, 4), (1.0, 0.12, 0.12))
    """
    path = Path(path)
    zcyx, file_vs, voxel_size, meta = _read_zcyx(path, voxel_size, timepoint)
    n_chan = zcyx.shape[1]
    if n_chan > 1 and channel is None:
        raise InputError(f"file has {n_chan} channels", path=path,
                         hint=f"choose the cell-fill channel with --channel (0 to {n_chan - 1})")
    c = 0 if channel is None else int(channel)
    if not 0 <= c < n_chan:
        raise InputError(f"channel {c} does not exist (file has {n_chan} channel"
                         f"{'s' if n_chan > 1 else ''}: 0 to {n_chan - 1})", path=path,
                         hint="choose an existing channel with --channel")
    return _channel_stack(zcyx, c, file_vs, voxel_size, path, meta)


def read_channels(path, *, voxel_size=None, timepoint: int | None = None) -> list[Stack]:
    """Every channel of a TIFF file as a :class:`Stack` (the file is read once).

    Takes the arguments of :func:`read_stack` except `channel`, and raises its errors.
    """
    path = Path(path)
    zcyx, file_vs, voxel_size, meta = _read_zcyx(path, voxel_size, timepoint)
    return [_channel_stack(zcyx, c, file_vs, voxel_size, path, meta)
            for c in range(zcyx.shape[1])]


def _read_zcyx(path: Path, voxel_size, timepoint):
    """Read a TIFF as a (z, c, y, x) array, with the voxel size in its metadata (None where it
    says nothing), the checked `voxel_size` given by the caller, and how it was read (format,
    pages, ScanImage details); every problem as one InputError."""
    import tifffile

    if voxel_size is not None:
        voxel_size = check_voxel_size(voxel_size, path=path)
    if not path.exists():
        raise InputError("file not found", path=path, hint="check the path and the file name")
    if path.is_dir():
        raise InputError("is a folder, not a TIFF file", path=path)

    problems: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.ERROR:
                problems.append(record.getMessage())

    handler = _Collect()
    tlog = logging.getLogger("tifffile")
    tlog.addHandler(handler)
    try:
        try:
            tf = tifffile.TiffFile(path)
        except Exception as exc:
            raise InputError(f"not a readable TIFF file ({type(exc).__name__}: {exc})", path=path,
                             hint="spinecount reads TIFF stacks; export the stack as TIFF") from None
        with tf:
            if not tf.series:
                raise InputError("TIFF file contains no image", path=path)
            series = tf.series[0]
            fmt = ("scanimage" if tf.is_scanimage else "imagej" if tf.is_imagej
                   else "ome" if tf.is_ome else "tiff")
            extra = {}
            try:
                if fmt == "scanimage":
                    zcyx, file_vs, extra = _scanimage(tf, series)
                else:
                    arr = series.asarray()
                    zcyx = _to_zcyx(arr, series.axes, path, timepoint)
                    file_vs = (_imagej_voxel(tf, tf.pages.first) if fmt == "imagej"
                               else _ome_voxel(tf) if fmt == "ome"
                               else _plain_voxel(tf.pages.first))
            except InputError:
                raise
            except Exception as exc:
                raise InputError(f"truncated or corrupt TIFF ({type(exc).__name__}: {exc})",
                                 path=path, hint="re-export or re-copy the file") from None
            n_pages = len(tf.pages)
    finally:
        tlog.removeHandler(handler)
    if problems:
        raise InputError(f"truncated or corrupt TIFF ({problems[0][:160]})", path=path,
                         hint="re-export or re-copy the file")
    if zcyx.size == 0:
        raise InputError("stack is empty (no pixels)", path=path)

    return zcyx, file_vs, voxel_size, {"format": fmt, "n_pages": n_pages, **extra}


def _channel_stack(zcyx, c, file_vs, voxel_size, path, meta) -> Stack:
    """One channel of a ZCYX array as a checked Stack."""
    n_chan = zcyx.shape[1]
    data = np.ascontiguousarray(zcyx[:, c])
    if data.dtype.kind not in "uif":
        raise InputError(f"unsupported pixel type {data.dtype}", path=path,
                         hint="use uint8, uint16 or float data")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise InputError("stack contains NaN or infinite values", path=path,
                         hint="replace them (e.g. with 0) before analysis")
    lo, hi = data.min(), data.max()
    if lo == hi:
        what = "all zero" if hi == 0 else f"constant (every pixel is {hi})"
        raise InputError(f"stack is {what}: no image to analyse", path=path,
                         hint="check the channel and the acquisition")

    if voxel_size is not None:
        vs, source = voxel_size, "given"
    else:
        z, y, x = file_vs
        if data.shape[0] == 1 and z is None and y is not None and x is not None:
            z = max(y, x)  # a single plane has no z spacing; z then plays no role
        if None in (z, y, x):
            missing = ", ".join(a for a, v in zip("zyx", (z, y, x)) if v is None)
            raise InputError(f"voxel size ({missing}) is not in the file's metadata", path=path,
                             hint=VOXEL_HINT)
        vs, source = (z, y, x), "file"  # checked by Stack
    return Stack(
        data=data,
        voxel_size=vs,
        channel=c if n_chan > 1 else None,
        path=str(path),
        metadata={**meta, "voxel_size_source": source, "n_channels": n_chan,
                  "dtype": str(data.dtype)},
    )


def write_imagej(path, data: np.ndarray, voxel_size, *, axes: str = "ZYX", compression=None):
    """Write an ImageJ TIFF (hyperstack) with its voxel size in micrometres.

    Parameters
    ----------
    path : str or Path
    data : ndarray
        uint8, uint16 or float32, with axes given by `axes` (ZYX, ZCYX, TZCYX).
    voxel_size : (z, y, x) floats, micrometres.
    """
    import tifffile

    z, y, x = check_voxel_size(voxel_size, path=path)
    tifffile.imwrite(
        path, data, imagej=True, resolution=(1.0 / x, 1.0 / y),
        metadata={"spacing": z, "unit": "um", "axes": axes}, compression=compression,
    )
