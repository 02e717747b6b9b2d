"""A learned choice among the detector's peaks: features of each peak, gradient-boosted
decision trees over them, and their training from annotated or reviewed spines.

The rules of :func:`spinecount.detect` decide from a peak's measurements alone. A classifier
also sees the image around the peak: a patch of the stack in the peak's own frame (from the
shaft outwards through the head, and across), in micrometres and relative to the shaft's
brightness at the spine's base, so that it reads the same at any pixel size and brightness.
It chooses among a looser pool of peaks (:data:`POOL_THRESHOLD`) than the rules count.

By default :func:`spinecount.detect` chooses with the built-in model, ``"rr30a"``
(:data:`spinecount.params.DEFAULT_CLASSIFIER`; :data:`BUILTIN`), trained on both annotated
rr30a sessions and synthetic stacks: on dendrites and synthetic stacks it was not trained on
it chose better than the rules (``benchmarks/classifier_rr30a.py``,
``benchmarks/detect_synthetic.py``; README, Measured accuracy). ``classifier="rules"``
(``--classifier rules``) counts by the rules alone. Train a model on your own annotated or
reviewed stacks with :func:`train_classifier` (``spinecount train``) and detect with it
(``detect(..., classifier=...)``, ``spinecount detect --classifier FILE``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError
from .grid import _lattice_step
from .params import DEFAULT_CLASSIFIER, RULES, DetectionParams
from .tables import BASE, POSITION

#: Models shipped with spinecount, by name (``benchmarks/classifier_rr30a.py --write-model``).
BUILTIN = {"rr30a": "rr30a_classifier.json"}
#: Peaks down to this contrast (noise SDs) and with any protrusion fraction form the pool a
#: classifier chooses from (the rules count peaks from ``spine_threshold``).
POOL_THRESHOLD = 1.5
#: The candidates (``Detection.candidates``: what time-lapse linking may take for a spine that
#: one session missed, and what review offers) are the peaks the model gives at least this
#: fraction of its threshold (rr30a sessions 0 -> 1 with session 42's model: formation +11.1 /
#: +18.7 percentage points against the annotation at 0.25 / 0.5, elimination -2.7 / +0.5;
#: synthetic time-lapses' largest error 3.3 / 3.9 pp; with the model built in since session
#: 43 at 0.25: +11.2 / +0.5 pp, 4.2 pp; benchmarks/timelapse.py --classifier rr30a).
CANDIDATE_FRACTION = 0.25
#: The patch: along the line from the spine's base through its head (0 at the head, negative
#: towards the shaft) and across it, um.
PATCH_ALONG_UM = np.arange(-3.5, 2.51, 0.25)
PATCH_ACROSS_UM = np.arange(-2.0, 2.01, 0.25)
#: Lateral smoothing (um) of the stack, and the depth (um either side of the head) over which
#: its maximum is taken, before the patch is read.
PATCH_SMOOTHING_UM = 0.12
PATCH_DEPTH_UM = 1.0
#: The peak's measurements a classifier sees besides the patch (``passes_rules``: 1 where
#: the rules alone count the peak as a spine).
MEASURES = ("head_diameter_um", "neck_length_um", "length_um", "shaft_distance_um",
            "relative_intensity", "score", "contrast", "neck_diameter_um", "passes_rules")


def patch_columns() -> list[str]:
    return [f"patch_{i}" for i in range(len(PATCH_ALONG_UM) * len(PATCH_ACROSS_UM))]


def peak_features(stack, peaks: pd.DataFrame) -> pd.DataFrame:
    """Features of each peak for a classifier: its measurements (:data:`MEASURES`; the log of
    its contrast added) and a patch of the stack around it.

    Parameters
    ----------
    stack : Stack
        The stack the peaks were detected in.
    peaks : DataFrame
        Spines and candidates of :func:`spinecount.detect` (the spines table's columns) with
        a ``passes_rules`` column.

    Returns
    -------
    DataFrame
        One row per peak, in its order: the measurements, ``log_contrast`` and the patch
        (``patch_0`` ...; along the spine in rows of :data:`PATCH_ACROSS_UM`), the patch
        divided by the stack's brightness at the spine's base (background subtracted).

    Examples
    --------
    >>> from spinecount.synthetic import make_stack
    >>> from spinecount.detection import detect
    >>> syn = make_stack(shape_um=(10, 24, 24), n_dendrites=1, branch_probability=0, seed=2)
    >>> sp = detect(syn.stack).spines.assign(passes_rules=1)
    >>> f = peak_features(syn.stack, sp)
    >>> len(f) == len(sp), f.shape[1] == len(MEASURES) + 1 + len(patch_columns())
    (True, True)
    """
    from scipy import ndimage as ndi

    missing = [c for c in (*MEASURES, *POSITION, *BASE) if c not in peaks]
    if missing:
        raise InputError(f"peaks lack column(s) {', '.join(missing)}",
                         hint="pass spines and candidates of spinecount.detect")
    data = np.asarray(stack.data)
    vs = np.asarray(stack.voxel_size, float)
    step = _lattice_step(*data.shape[1:])
    sample = data[:, ::step, ::step].astype(np.float32)
    bg = float(np.median(sample))
    floor = max(0.01 * float(np.percentile(sample, 99.9) - bg), 1e-6)

    head = peaks[list(POSITION)].to_numpy(float)
    base = peaks[list(BASE)].to_numpy(float)
    along = head[:, 1:] - base[:, 1:]
    along /= np.maximum(np.linalg.norm(along, axis=1, keepdims=True), 1e-9)
    across = np.column_stack([-along[:, 1], along[:, 0]])
    a, c = PATCH_ALONG_UM[None, :, None], PATCH_ACROSS_UM[None, None, :]
    yx = [head[:, k, None, None] + a * along[:, k - 1, None, None]
          + c * across[:, k - 1, None, None] for k in (1, 2)]
    reach = np.hypot(np.abs(PATCH_ALONG_UM).max(), PATCH_ACROSS_UM.max())
    sigma = (0.0, PATCH_SMOOTHING_UM / vs[1], PATCH_SMOOTHING_UM / vs[2])
    margin = np.array([np.ceil(PATCH_DEPTH_UM / vs[0]),
                       *np.ceil((reach + 4 * PATCH_SMOOTHING_UM) / vs[1:]) + 2]).astype(int)
    patches, base_value = np.zeros(yx[0].shape, np.float32), np.zeros(len(peaks))
    for i in range(len(peaks)):
        centre = np.round(head[i] / vs).astype(int)
        lo = np.maximum(centre - margin, 0)
        hi = np.minimum(centre + margin + 1, data.shape)
        box = ndi.gaussian_filter(data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
                                  .astype(np.float32), sigma).max(axis=0) - bg
        at = [yx[0][i] / vs[1] - lo[1], yx[1][i] / vs[2] - lo[2]]
        patches[i] = ndi.map_coordinates(box, at, order=1, mode="nearest")
        base_value[i] = ndi.map_coordinates(
            box, [[base[i, 1] / vs[1] - lo[1]], [base[i, 2] / vs[2] - lo[2]]], order=1,
            mode="nearest")[0]
    patches /= np.maximum(base_value, floor)[:, None, None]
    out = peaks[list(MEASURES)].astype(float).reset_index(drop=True)
    out["log_contrast"] = np.log(np.clip(out["contrast"].to_numpy(), 0.1, None))
    return pd.concat([out, pd.DataFrame(patches.reshape(len(peaks), -1),
                                        columns=patch_columns())], axis=1)


def _mirrored(features: np.ndarray) -> np.ndarray:
    """The features of each peak with its patch mirrored across the spine's axis."""
    n = len(MEASURES) + 1
    patch = features[:, n:].reshape(len(features), len(PATCH_ALONG_UM), -1)[:, :, ::-1]
    return np.hstack([features[:, :n], patch.reshape(len(features), -1)])


#: The model file's format (1: a logistic regression, as spinecount made until 2026-11-24).
FORMAT = 2
#: How the trees are grown (scikit-learn's ``HistGradientBoostingClassifier``): fixed, so that
#: a model trained twice on the same peaks is the same.
BOOSTING = {"max_iter": 200, "learning_rate": 0.05, "early_stopping": False, "random_state": 0}
#: What each tree holds per node, in the model file.
TREE_FIELDS = ("feature", "threshold", "missing_left", "left", "right", "leaf", "value")


@dataclass
class SpineClassifier:
    """Gradient-boosted decision trees over :func:`peak_features`, their probability averaged
    over each patch and its mirror image. Applying a model needs only numpy.

    Attributes
    ----------
    columns : list of str
        The features, in the order the trees index them.
    baseline : float
        The trees' starting log-odds.
    trees : list of dict
        Per tree, per node (:data:`TREE_FIELDS`): the feature it splits on, the threshold
        (values at or under it go left), where a missing value goes, the child nodes, whether
        it is a leaf and the leaf's value (added to the log-odds).
    threshold : float
        Peaks with a probability at least this are spines (at the detector's default
        ``min_score``, 0.5: :meth:`score`).
    trained_on : dict
        What the model was trained on (stacks, peaks, annotated spines).
    """

    columns: list
    baseline: float
    trees: list
    threshold: float = 0.5
    trained_on: dict = field(default_factory=dict)

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        """Probability that each peak is a spine."""
        missing = [c for c in self.columns if c not in features]
        if missing:
            raise InputError(f"features lack {len(missing)} column(s) the classifier needs "
                             f"({', '.join(missing[:3])} ...)",
                             hint="the model was made for another version of spinecount's "
                                  "features: train it again (spinecount train)")
        x = features[self.columns].to_numpy(float)
        prob = 1 / (1 + np.exp(-self._log_odds(np.vstack([x, _mirrored(x)]))))
        return (prob[:len(x)] + prob[len(x):]) / 2

    @cached_property
    def _nodes(self) -> dict:
        """The trees as arrays, one row of nodes per tree (padded to the largest)."""
        width = max(len(t["leaf"]) for t in self.trees)
        return {k: np.array([np.pad(t[k], (0, width - len(t[k]))) for t in self.trees])
                for k in TREE_FIELDS}

    def _log_odds(self, x: np.ndarray) -> np.ndarray:
        """The sum of the trees, all walked down at once."""
        node = self._nodes
        rows = np.arange(len(self.trees))[:, None]
        at = np.zeros((len(self.trees), len(x)), int)
        inner = ~node["leaf"][rows, at].astype(bool)
        while inner.any():
            value = x[np.arange(len(x))[None, :], node["feature"][rows, at]]
            left = np.where(np.isnan(value), node["missing_left"][rows, at] == 1,
                            value <= node["threshold"][rows, at])
            at = np.where(inner, np.where(left, node["left"][rows, at],
                                          node["right"][rows, at]), at)
            inner = ~node["leaf"][rows, at].astype(bool)
        return self.baseline + node["value"][rows, at].sum(axis=0)

    def score(self, features: pd.DataFrame) -> np.ndarray:
        """Each peak's confidence score: its probability mapped piecewise linearly so that the
        model's threshold is 0.5 (as the rules' score is 0.5 at ``spine_threshold``), so that
        ``min_score`` means the same with any model. The probability itself where the
        threshold is 0.5.

        Examples
        --------
        >>> m = SpineClassifier(columns=[], baseline=0.0, trees=[], threshold=0.8)
        >>> m.score_of(np.array([0.0, 0.4, 0.8, 0.9, 1.0])).tolist()
        [0.0, 0.25, 0.5, 0.75, 1.0]
        """
        return self.score_of(self.predict_proba(features))

    def score_of(self, prob: np.ndarray) -> np.ndarray:
        """The score (:meth:`score`) of probabilities `prob`."""
        t = self.threshold
        return np.where(prob < t, 0.5 * prob / t, 0.5 + 0.5 * (prob - t) / (1 - t))

    def save(self, path) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"spinecount_classifier": FORMAT, **asdict(self)},
                                   separators=(",", ":")))
        return path

    @classmethod
    def load(cls, path) -> "SpineClassifier":
        """Read a model saved with :meth:`save`, or a built-in one by name (:data:`BUILTIN`).

        Examples
        --------
        >>> SpineClassifier.load("rr30a").trained_on["compare_at"]
        'distal_edge'
        """
        if str(path) in BUILTIN:
            from importlib.resources import files

            path = files("spinecount") / "models" / BUILTIN[str(path)]
        path = Path(path)
        if not path.exists():
            raise InputError("classifier file not found", path=path,
                             hint="make one with spinecount train")
        try:
            d = json.loads(path.read_text())
            made = d.pop("spinecount_classifier")
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"not a spinecount classifier ({exc})", path=path,
                             hint="make one with spinecount train") from None
        if made != FORMAT:
            raise InputError(f"a classifier of an earlier spinecount (format {made}; this "
                             f"version reads {FORMAT})", path=path,
                             hint="train it again with spinecount train")
        try:
            return cls(**d)
        except TypeError as exc:
            raise InputError(f"not a spinecount classifier ({exc})", path=path,
                             hint="make one with spinecount train") from None

    def digest(self) -> str:
        """SHA-256 of the model, for provenance."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def provenance(self, source) -> dict:
        """What ``run.json`` records of the model loaded from `source` (a built-in name or a
        file): where it came from and its digest."""
        where = str(source) if str(source) in BUILTIN else str(Path(source).resolve())
        return {"source": where, "sha256": self.digest()}


def load_classifier(classifier=DEFAULT_CLASSIFIER) -> tuple:
    """The model that `classifier` names and what ``run.json`` records of it.

    Parameters
    ----------
    classifier : str, path, SpineClassifier or None
        A built-in model's name (:data:`BUILTIN`), a file of ``spinecount train``, a model,
        or ``"rules"`` (or None) for the rules alone.

    Returns
    -------
    model : SpineClassifier or None
        None for the rules.
    provenance : dict
        ``source`` (the name, the file's absolute path, ``"rules"`` or ``"in memory"``) and
        ``sha256`` (the model's digest; None for the rules).

    Examples
    --------
    >>> load_classifier("rules")
    (None, {'source': 'rules', 'sha256': None})
    >>> model, prov = load_classifier()
    >>> prov["source"], len(prov["sha256"])
    ('rr30a', 64)
    """
    model = classifier_model(classifier)
    if model is None:
        return None, {"source": RULES, "sha256": None}
    if model is classifier:
        return model, {"source": "in memory", "sha256": model.digest()}
    return model, model.provenance(classifier)


def classifier_model(classifier) -> SpineClassifier | None:
    """The model that `classifier` names (as :func:`load_classifier`; None for the rules),
    without what ``run.json`` records of it (its digest takes a tenth of a second)."""
    if isinstance(classifier, SpineClassifier):
        return classifier
    if classifier is None or str(classifier) == RULES:
        return None
    return SpineClassifier.load(classifier)


def label_peaks(peaks: pd.DataFrame, annotated: pd.DataFrame, *, centerlines=None,
                compare_at: str = "head") -> np.ndarray:
    """1 for each peak matched one to one to an annotated spine (:func:`spinecount.evaluate`),
    0 for one not matched, NaN outside the annotated tube around `centerlines` (not known)."""
    from .evaluate import evaluate

    m = evaluate(peaks, annotated, centerlines=centerlines, pred_point=compare_at).matched
    labels = np.full(len(peaks), np.nan)
    scored = m[m["status"] != "fn"]
    labels[scored["pred_index"].to_numpy(int)] = (scored["status"] == "tp").to_numpy(float)
    return labels


def fit_classifier(features: pd.DataFrame, labels, *, weights=None, threshold: float = 0.5,
                   trained_on: dict | None = None) -> SpineClassifier:
    """Fit a :class:`SpineClassifier` to features (:func:`peak_features`) and labels (1 a
    spine, 0 not; NaN rows are left out); each patch counts also mirrored. `weights`: how
    much each peak counts (default 1), for example to weigh annotated stacks against many
    synthetic ones."""
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ImportError:  # pragma: no cover - a declared dependency
        raise InputError("training a classifier needs scikit-learn",
                         hint="pip install scikit-learn") from None
    if not 0 < threshold < 1:
        raise InputError(f"threshold must lie between 0 and 1, not {threshold}")
    labels = np.asarray(labels, float)
    keep = ~np.isnan(labels)
    x = features.to_numpy(float)[keep]
    y = labels[keep].astype(int)
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, float)
    if len(np.unique(y)) < 2:
        raise InputError("training needs peaks that are spines and peaks that are not",
                         hint="annotate the spines of a stack in full (or review a detection)")
    gb = HistGradientBoostingClassifier(**BOOSTING).fit(
        np.vstack([x, _mirrored(x)]), np.r_[y, y], sample_weight=np.r_[w[keep], w[keep]])
    trees = [{"feature": n["feature_idx"].tolist(), "threshold": n["num_threshold"].tolist(),
              "missing_left": n["missing_go_to_left"].astype(int).tolist(),
              "left": n["left"].tolist(), "right": n["right"].tolist(),
              "leaf": n["is_leaf"].astype(int).tolist(), "value": n["value"].tolist()}
             for n in (p.nodes for (p,) in gb._predictors)]
    model = SpineClassifier(columns=list(features.columns),
                            baseline=float(np.ravel(gb._baseline_prediction)[0]), trees=trees,
                            threshold=float(threshold), trained_on=trained_on or {})
    # the trees are read from scikit-learn's internals: make sure they were read right
    if not np.allclose(model._log_odds(x[:2000]), gb.decision_function(x[:2000])):
        raise RuntimeError("the trees of this scikit-learn version were not read right: "
                           "report it to spinecount, with the scikit-learn version")
    return model


def pool_params(params=None):
    """`params` loosened to the pool a classifier chooses from (:data:`POOL_THRESHOLD`, any
    protrusion fraction, heads stacked in depth not yet thinned out: that follows the
    choice); the spines the rules count stay the same."""
    p = params or DetectionParams()
    return replace(p, candidate_threshold=min(POOL_THRESHOLD, p.candidate_threshold),
                   candidate_protrusion_fraction=0.0, stacked_depth_um=0.0)


def peak_pool(detection) -> pd.DataFrame:
    """The pool of a detection with :func:`pool_params`: its spines and candidates in one
    table, with ``passes_rules`` (1 for the spines the rules count)."""
    return pd.concat([detection.spines.assign(passes_rules=1),
                      detection.candidates.assign(passes_rules=0)], ignore_index=True)


def train_classifier(examples, *, params=None, compare_at: str = "head",
                     threshold: float = 0.5, progress: bool = False) -> SpineClassifier:
    """Train a :class:`SpineClassifier` on annotated (or reviewed) stacks.

    Parameters
    ----------
    examples : iterable of (Stack, DataFrame, DataFrame or None)
        Read one at a time (a generator holds one stack in memory at once). Each stack with
        its spines (``z_um, y_um, x_um``: every spine of the field, or of the dendrites in the
        third item, centre lines in um, around which alone peaks are labelled: 4 um
        laterally, 5 um axially). A reviewed table (``spines_reviewed.csv``)
        works, its rejected rows left out, with the result's ``centerlines.csv``.
    params : DetectionParams, optional
        Detection parameters (loosened to the pool, :func:`pool_params`).
    compare_at : {"head", "distal_edge"}
        Where a peak is compared with the annotated point: the head's centre (reviewed tables)
        or the distal edge of the head (annotations clicked there).
    threshold : float
        See :func:`fit_classifier`.
    progress : bool
        Show a progress bar over the stacks.

    Returns
    -------
    SpineClassifier

    Examples
    --------
    >>> from spinecount.synthetic import make_stack
    >>> syns = [make_stack(shape_um=(12, 40, 40), n_dendrites=1, seed=s) for s in (1, 2)]
    >>> clf = train_classifier([(s.stack, s.spines, None) for s in syns])
    >>> clf.trained_on["spines"] > 0 and 0 < clf.threshold < 1
    True
    """
    from tqdm.auto import tqdm

    from .detection import detect
    from .review import counted

    feats, labels, stacks = [], [], []
    loose = pool_params(params)
    total = len(examples) if hasattr(examples, "__len__") else None
    for stack, annotated, centerlines in tqdm(examples, total=total, desc="train",
                                              unit="stack", disable=not progress):
        annotated = counted(annotated)  # a reviewed table's rejected rows are not spines
        pool = peak_pool(detect(stack, params=loose, classifier=RULES))
        lab = label_peaks(pool, annotated, centerlines=centerlines, compare_at=compare_at)
        feats.append(peak_features(stack, pool))
        labels.append(lab)
        stacks.append({"stack": stack.name, "peaks": int(np.isfinite(lab).sum()),
                       "spines": int(np.nansum(lab)), "annotated": len(annotated)})
    trained_on = {"stacks": stacks, "compare_at": compare_at,
                  "peaks": sum(s["peaks"] for s in stacks),
                  "spines": sum(s["spines"] for s in stacks)}
    return fit_classifier(pd.concat(feats, ignore_index=True), np.concatenate(labels),
                          threshold=threshold, trained_on=trained_on)
