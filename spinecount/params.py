"""Detection parameters: one documented object, in micrometres, saved in ``run.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import InputError


#: Shortest dendrite (um) that enters an experiment's animal, condition and statistics tables:
#: the density of a short piece of dendrite is mostly noise (``spinecount run --min-length``).
MIN_LENGTH_UM = 10.0
#: What chooses the spines unless told otherwise: the built-in classifier of that name
#: (:mod:`spinecount.classifier`); :data:`RULES` for the detector's rules alone. Here, not in
#: :mod:`spinecount.classifier`, so that the command line starts without numpy and pandas.
DEFAULT_CLASSIFIER = "rr30a"
RULES = "rules"


def _p(default, doc):
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class DetectionParams:
    """Parameters of :func:`spinecount.detect`. Lengths are micrometres.

    The defaults suit ordinary two-photon stacks (lateral pixels 0.05 to 0.3 um, z steps 0.3 to
    2 um). Load your own with :func:`load_params` (``--params FILE`` on the command line).

    Examples
    --------
    >>> p = DetectionParams(spine_threshold=4.0)
    >>> DetectionParams.from_dict(p.to_dict()) == p
    True
    """

    working_pixel_um: float = _p(0.24, "lateral pixel size at which dendrites are traced")
    working_z_step_um: float = _p(
        1.0, "coarser z steps are interpolated (cubic spline) to this step or finer before "
             "detection, the stack's own slices kept (0 turns it off)")
    dendrite_threshold: float = _p(
        5.0, "dendrite mask: smoothed intensity above background, in noise standard deviations "
             "(at least; see otsu_fraction)")
    otsu_fraction: float = _p(
        0.75, "the dendrite mask threshold is at least this fraction of Otsu's threshold of the "
             "smoothed stack, which separates dendrites from dim neuropil (0 turns it off)")
    local_threshold_fraction: float = _p(
        0.5, "where the brightest smoothed value within 3 um is lower, the dendrite mask "
             "threshold is this fraction of it (never under dendrite_threshold): a dendrite much "
             "dimmer than the brightest in the field is still traced, if it is a long, narrow "
             "line (0 turns it off)")
    dendrite_smoothing_um: float = _p(0.4, "Gaussian smoothing before the dendrite mask")
    min_dendrite_length_um: float = _p(6.0, "shorter isolated skeletons are not dendrites")
    max_gap_um: float = _p(
        10.0, "two dendrite ends that face each other across a gap up to this long are joined "
              "where a path at least half as bright as the dendrite mask's threshold runs "
              "between them (a dendrite dimmer for a stretch; 0 turns it off)")
    max_spine_length_um: float = _p(
        3.5, "longest spine, shaft surface to head tip; also prunes skeleton side branches "
             "and breaks skeleton cycles up to 4 times as long round (holes in the mask)")
    max_dendrite_radius_um: float = _p(
        2.5, "structures thicker than this (soma, blobs) are not dendrites")
    max_dendrite_tilt_deg: float = _p(
        60.0, "stretches of dendrite running more steeply than this (degrees) out of the image "
              "plane are left out, with their spines and heads within 2 um of them: along them "
              "the axial blur hides spines and most peaks are not spines (traced dendrites "
              "only; 90 turns it off)")
    max_axial_offset_um: float = _p(
        3.0, "spine heads further than this above or below their dendrite's centre line are not "
             "counted (the two-photon PSF is about 2 um long in z)")
    head_sigma_um: float = _p(0.25, "spatial scale of spine heads for the blob filter")
    spine_threshold: float = _p(
        4.0, "spines by the rules: blob filter peak above local background, in noise SDs "
             "(with a classifier, the default, whether a peak passes the rules is one of what "
             "it sees)")
    far_spine_um: float = _p(
        2.0, "spine heads further than this from the shaft surface need more contrast (see "
             "far_contrast_per_um): most spines are shorter, and most peaks further out are "
             "other structures")
    far_contrast_per_um: float = _p(
        4.0, "extra contrast (noise SDs) a spine head needs per um beyond far_spine_um (0: "
             "long spines and filopodia count as readily as short ones)")
    min_protrusion_fraction: float = _p(
        0.4, "at a spine head at least this fraction of the brightness must be in excess of the "
             "shaft (rejects bulges of the shaft itself)")
    min_spine_separation_um: float = _p(0.7, "two spine heads closer than this are one")
    stacked_depth_um: float = _p(
        4.0, "two spines whose heads lie within min_spine_separation_um of each other in the "
             "image plane and within this of each other in depth are one head seen at two "
             "depths (the axial blur spreads a head over several um): the one with the lower "
             "score is left out, and so are candidates there (0 turns it off)")
    candidate_threshold: float = _p(
        2.5, "by the rules, peaks down to this contrast (noise SDs) are kept as candidates, not "
             "counted: time-lapse linking looks among them for a spine seen in the session "
             "before or after (a classifier chooses among peaks from 1.5 SDs)")
    candidate_protrusion_fraction: float = _p(
        0.2, "likewise, candidates need only this protrusion fraction")
    min_score: float = _p(
        0.5, "spines with a lower confidence score are not counted (kept as candidates): 0.5 "
             "is the classifier's threshold (or, by the rules, spine_threshold); lower it to "
             "count more peaks as spines, raise it to count fewer")
    psf_fwhm_um: float = _p(
        0.45, "lateral resolution (FWHM): the blur through which head and neck diameters are "
              "measured")
    psf_axial_fwhm_um: float = _p(2.0, "axial resolution (FWHM), likewise")
    length_smoothing_um: float = _p(2.0, "centre lines are smoothed this much before lengths")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, *, source=None) -> "DetectionParams":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown parameter(s) {', '.join(unknown)}", path=source,
                             hint=f"known parameters: {', '.join(sorted(known))}")
        try:
            vals = {k: float(v) for k, v in d.items()}
        except (TypeError, ValueError) as exc:
            raise InputError(f"parameter values must be numbers ({exc})", path=source) from None
        bad = [k for k, v in vals.items() if v < 0]
        if bad:
            raise InputError(f"parameter(s) {', '.join(bad)} must not be negative", path=source)
        return cls(**vals)

    @classmethod
    def describe(cls) -> dict[str, tuple[float, str]]:
        """name -> (default, description), for documentation and GUIs."""
        return {f.name: (f.default, f.metadata["doc"]) for f in fields(cls)}


def load_params(path) -> DetectionParams:
    """Read parameters from a JSON file (a ``run.json`` works: its ``parameters`` are used)."""
    path = Path(path)
    if not path.exists():
        raise InputError("parameter file not found", path=path)
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc})", path=path) from None
    if isinstance(d, dict) and isinstance(d.get("parameters"), dict):
        d = d["parameters"]
    if not isinstance(d, dict):
        raise InputError("expected a JSON object of parameter names and values", path=path)
    return DetectionParams.from_dict(d, source=path)
