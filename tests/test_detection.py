"""The detector on synthetic truth (first version; the accuracy goals are benchmarked)."""

import numpy as np
import pandas as pd
import pytest

import spinecount
from spinecount.evaluate import evaluate
from spinecount.synthetic import make_stack
from spinecount.tables import read_centerlines


@pytest.fixture(scope="module")
def syn():
    return make_stack(shape_um=(12, 36, 36), n_dendrites=1, branch_probability=0, seed=2)


def test_finds_the_dendrite_and_most_spines(syn):
    det = spinecount.detect(syn.stack)
    ev = evaluate(det.spines, syn.spines)
    assert ev.summary["f1"] > 0.55 and ev.summary["recall"] >= 0.5
    true_len = syn.dendrites["length_um"].sum()
    longest = det.dendrites["length_um"].max()
    assert longest == pytest.approx(true_len, rel=0.15)
    # every spine is attached to a dendrite that exists, with its base near a centre line
    assert set(det.spines["dendrite_id"]) <= set(det.dendrites["dendrite_id"])


def test_user_traces_are_used(syn):
    det = spinecount.detect(syn.stack, traces=syn.centerlines)
    assert det.dendrites["dendrite_id"].tolist() == syn.dendrites["dendrite_id"].tolist()
    np.testing.assert_allclose(det.dendrites["length_um"], syn.dendrites["length_um"], rtol=0.03)
    assert evaluate(det.spines, syn.spines).summary["recall"] > 0.6


def test_swc_traces(tmp_path, syn):
    cl = syn.centerlines
    rows = [f"{i + 1} 3 {r.x_um} {r.y_um} {r.z_um} 0.5 {i if i else -1}"
            for i, r in enumerate(cl.itertuples())]
    path = tmp_path / "t.swc"
    path.write_text("# SNT export\n" + "\n".join(rows) + "\n")
    traces = spinecount.read_traces(path)
    assert traces["dendrite_id"].nunique() == 1
    np.testing.assert_allclose(traces[["z_um", "y_um", "x_um"]], cl[["z_um", "y_um", "x_um"]])


def test_empty_of_dendrites_gives_empty_tables():
    quiet = make_stack(shape_um=(6, 15, 15), n_dendrites=0, puncta_per_1000um3=0, seed=1)
    det = spinecount.detect(quiet.stack)
    assert len(det.spines) == 0 and len(det.dendrites) == 0
    assert "spine_id" in det.spines.columns
