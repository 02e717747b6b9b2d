"""The learned choice among peaks: features, training, saving, detection and the command line."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from spinecount.classifier import (CANDIDATE_FRACTION, MEASURES, PATCH_ACROSS_UM,
                                   PATCH_ALONG_UM, SpineClassifier, _mirrored, fit_classifier,
                                   label_peaks, patch_columns, peak_features, peak_pool,
                                   pool_params, train_classifier)
from spinecount.cli import main
from spinecount.detection import detect
from spinecount.errors import InputError
from spinecount.evaluate import evaluate
from spinecount.io import Stack
from spinecount.params import DetectionParams
from spinecount.synthetic import make_stack, write_synthetic


def _peaks(heads, bases):
    t = pd.DataFrame(np.asarray(heads, float), columns=["z_um", "y_um", "x_um"])
    t[["base_z_um", "base_y_um", "base_x_um"]] = np.asarray(bases, float)
    for c in MEASURES:
        t[c] = 1.0
    return t


def _patch(features, i):
    return features[patch_columns()].to_numpy()[i].reshape(len(PATCH_ALONG_UM), -1)


def test_patch_is_read_in_the_spines_own_frame():
    # a bright shaft along y at x = 5 um, a head 1.5 um beside it on either side, 5 um apart
    data = np.zeros((5, 100, 100), np.float32)
    data[:, :, 48:53] = 100.0
    for y, x in ((25, 65), (75, 35)):
        data[2, y - 1:y + 2, x - 1:x + 2] = 300.0
    stack = Stack(data, (1.0, 0.1, 0.1))
    heads = [(2, 2.5, 6.5), (2, 7.5, 3.5)]
    bases = [(2, 2.5, 5.0), (2, 7.5, 5.0)]
    f = peak_features(stack, _peaks(heads, bases))
    right, left = _patch(f, 0), _patch(f, 1)
    centre = (np.flatnonzero(PATCH_ALONG_UM == 0)[0], np.flatnonzero(PATCH_ACROSS_UM == 0)[0])
    assert np.unravel_index(np.argmax(right), right.shape) == centre  # the head at the middle
    shaft = np.flatnonzero(PATCH_ALONG_UM == -1.5)[0]
    assert right[shaft, centre[1]] == pytest.approx(1.0, abs=0.05)  # relative to the base
    # the same spine mirrored to the shaft's other side reads the same
    np.testing.assert_allclose(left, right, atol=1e-4)
    # the measurements come first and the log of the contrast after them
    assert list(f.columns[:len(MEASURES) + 1]) == [*MEASURES, "log_contrast"]


def test_classifier_is_symmetric_and_saved_unchanged(tmp_path):
    rng = np.random.default_rng(0)
    cols = [*MEASURES, "log_contrast", *patch_columns()]
    x = pd.DataFrame(rng.normal(size=(200, len(cols))), columns=cols)
    y = np.array(x["contrast"] + x["patch_5"] > 0, float)
    y[:10] = np.nan  # not known: left out
    model = fit_classifier(x, y)
    prob = model.predict_proba(x)
    assert np.all((prob >= 0) & (prob <= 1))
    assert np.mean((prob >= 0.5) == (y == 1)) > 0.85  # it learnt the rule
    mirrored = pd.DataFrame(_mirrored(x.to_numpy()), columns=cols)
    np.testing.assert_allclose(model.predict_proba(mirrored), prob)
    again = SpineClassifier.load(model.save(tmp_path / "m.json"))
    np.testing.assert_allclose(again.predict_proba(x), prob)
    assert again.digest() == model.digest()
    with pytest.raises(InputError, match="spines and peaks that are not"):
        fit_classifier(x, np.ones(len(x)))
    with pytest.raises(InputError, match="lack"):
        model.predict_proba(x.drop(columns="patch_3"))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InputError, match="not a spinecount classifier"):
        SpineClassifier.load(tmp_path / "bad.json")


def test_label_peaks_matched_unmatched_and_outside_the_tube():
    annotated = pd.DataFrame({"z_um": [2.0, 2.0], "y_um": [5.0, 15.0], "x_um": [7.0, 7.0]})
    peaks = pd.DataFrame({"z_um": [2.0, 2.0, 2.0], "y_um": [5.2, 10.0, 5.0],
                          "x_um": [7.0, 7.0, 30.0]})
    lines = pd.DataFrame({"dendrite_id": 0, "z_um": 2.0, "y_um": np.arange(0, 20.0, 0.5),
                          "x_um": 5.0})
    labels = label_peaks(peaks, annotated, centerlines=lines)
    np.testing.assert_array_equal(labels[:2], [1, 0])
    assert np.isnan(labels[2])  # 25 um from the dendrite: nobody annotated there


def test_trained_classifier_chooses_spines_on_a_stack_it_has_not_seen():
    shape = (12, 50, 50)
    train = [make_stack(shape_um=shape, n_dendrites=1, seed=s) for s in (11, 12, 13, 14)]
    model = train_classifier([(t.stack, t.spines, None) for t in train])
    assert model.trained_on["spines"] >= 0.8 * sum(len(t.spines) for t in train)
    test = make_stack(shape_um=shape, n_dendrites=1, seed=15)
    det = detect(test.stack, classifier=model)
    assert evaluate(det.spines, test.spines).summary["f1"] >= 0.8
    assert (det.spines["score"] >= model.threshold).all()
    assert ((det.candidates["score"] < model.threshold)
            & (det.candidates["score"] >= model.threshold * CANDIDATE_FRACTION)).all()


def test_command_line_trains_and_detects_with_the_classifier(tmp_path, capsys):
    paths = [write_synthetic(make_stack(shape_um=(10, 40, 40), n_dendrites=1, seed=s),
                             tmp_path / f"s{s}.tif") for s in (21, 22, 23)]
    model = tmp_path / "model.json"
    assert main(["train", "-q", "-o", str(model),
                 "--stack", str(paths[0]["stack"]), "--spines", str(paths[0]["spines"]),
                 "--stack", str(paths[1]["stack"]), "--spines", str(paths[1]["spines"])]) == 0
    assert "classifier trained on" in capsys.readouterr().out
    out = tmp_path / "det"
    assert main(["detect", str(paths[2]["stack"]), "-o", str(out), "-q",
                 "--classifier", str(model)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["classifier"] == {"source": str(model.resolve()),
                                 "sha256": SpineClassifier.load(model).digest()}
    spines = pd.read_csv(out / "spines.csv")
    assert len(spines) and spines["score"].between(0.5, 1).all()
    # a --spines missing for a --stack: one line, nothing written
    assert main(["train", "-q", "-o", str(tmp_path / "no.json"),
                 "--stack", str(paths[0]["stack"]), "--stack", str(paths[1]["stack"]),
                 "--spines", str(paths[0]["spines"])]) != 0
    assert "one --spines" in capsys.readouterr().err
    assert not (tmp_path / "no.json").exists()


@pytest.fixture(scope="module")
def built_in_pool():
    """A dim synthetic stack, the built-in model, the stack's pool of peaks and the model's
    probability for each."""
    syn = make_stack(shape_um=(12, 40, 40), n_dendrites=2, peak_photons=20, seed=6)
    model = SpineClassifier.load("rr30a")
    pool = peak_pool(detect(syn.stack, params=pool_params(), classifier="rules"))
    return syn, model, pool, model.predict_proba(peak_features(syn.stack, pool))


def _spots(table):
    return sorted(map(tuple, table[["z_um", "y_um", "x_um"]].round(6).to_numpy()))


def test_the_built_in_classifier_chooses_by_default_and_the_rules_on_request(tmp_path,
                                                                             built_in_pool):
    """detect's spines are the built-in model's choice among the pool of peaks, its
    probability their score; ``rules`` counts the peaks that pass the rules; the command line
    records which chose."""
    syn, model, pool, prob = built_in_pool
    default, rules = detect(syn.stack), detect(syn.stack, classifier="rules")
    chosen = pool[prob >= model.threshold]
    assert _spots(default.spines) == _spots(chosen) != _spots(rules.spines)
    np.testing.assert_allclose(np.sort(default.spines["score"]),
                               np.sort(prob[prob >= model.threshold]))
    assert _spots(rules.spines) == _spots(pool[pool["passes_rules"] == 1])
    paths = write_synthetic(syn, tmp_path / "s.tif")
    for args, recorded in (([], {"source": "rr30a", "sha256": model.digest()}),
                           (["--classifier", "rules"], {"source": "rules", "sha256": None})):
        out = tmp_path / f"det{len(args)}"
        assert main(["detect", str(paths["stack"]), "-o", str(out), "-q", *args]) == 0
        assert json.loads((out / "run.json").read_text())["classifier"] == recorded
        assert len(pd.read_csv(out / "spines.csv")) == len(rules.spines if args else
                                                           default.spines)


def test_min_score_sets_how_sure_the_classifier_must_be(built_in_pool):
    """With a classifier, ``min_score`` is its cut: 0.5 at the model's threshold, lower counts
    more peaks as spines, higher fewer; the candidates down to a quarter of it."""
    syn, model, pool, prob = built_in_pool
    counts = []
    for min_score in (0.3, 0.5, 0.9):
        det = detect(syn.stack, params=DetectionParams(min_score=min_score))
        assert _spots(det.spines) == _spots(pool[prob >= min_score])
        assert _spots(det.candidates) == _spots(
            pool[(prob < min_score) & (prob >= min_score * CANDIDATE_FRACTION)])
        counts.append(len(det.spines))
    assert counts[0] > counts[1] > counts[2] > 0
    # a model whose threshold is 0.7: at the default min_score it counts from 0.7, scored 0.5
    strict = replace(model, threshold=0.7)
    det = detect(syn.stack, classifier=strict)
    assert _spots(det.spines) == _spots(pool[prob >= 0.7])
    np.testing.assert_allclose(np.sort(det.spines["score"]),
                               np.sort(0.5 + 0.5 * (prob[prob >= 0.7] - 0.7) / 0.3))
