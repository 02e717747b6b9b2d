"""Scoring: hand-made cases whose answer is known exactly."""

import numpy as np
import pandas as pd
import pytest

from spinecount.evaluate import (evaluate, f1_interval, in_tube, match_dendrites,
                                 match_points)
from spinecount.tables import read_spines


def pts(rows):
    return pd.DataFrame(rows, columns=["z_um", "y_um", "x_um"])


def test_tolerances_are_a_cylinder():
    gt = np.array([[0.0, 0.0, 0.0]])
    assert len(match_points(np.array([[0, 0, 0.99]]), gt)) == 1
    assert len(match_points(np.array([[0, 0, 1.01]]), gt)) == 0  # lateral 1.0 um
    assert len(match_points(np.array([[1.99, 0.6, 0.6]]), gt)) == 1
    assert len(match_points(np.array([[2.01, 0, 0]]), gt)) == 0  # axial 2.0 um
    assert len(match_points(np.array([[0, 0, 1.4]]), gt, lateral_tol=1.5)) == 1


def test_one_to_one_and_optimal_not_greedy():
    # Greedy nearest-first would pair p0-g1 (0.1 um) and leave g0 unmatched; the optimal
    # assignment matches both.
    pred = np.array([[0, 0, 0.9], [0, 0, 1.8]])
    gt = np.array([[0, 0, 0.0], [0, 0, 1.0]])
    assert match_points(pred, gt).tolist() == [[0, 0], [1, 1]]
    # two predictions on one annotated spine: only one counts
    ev = evaluate(pts([[0, 0, 0], [0, 0, 0.2]]), pts([[0, 0, 0.1]]))
    assert ev.summary["true_positives"] == 1 and ev.summary["false_positives"] == 1


def test_f1_interval_is_the_bootstrap_over_the_scored_spines():
    # the same as drawing the scored spines (pairs, unmatched detections, unmatched
    # annotations) again with replacement, done directly
    units = np.repeat(["tp", "fp", "fn"], [100, 25, 35])
    rng = np.random.default_rng(1)
    f1s = []
    for _ in range(4000):
        u = units[rng.integers(0, len(units), len(units))]
        tp = (u == "tp").sum()
        f1s.append(2 * tp / (len(u) + tp))
    lo, hi = f1_interval(100, 25, 35)
    assert lo == pytest.approx(np.percentile(f1s, 2.5), abs=0.01)
    assert hi == pytest.approx(np.percentile(f1s, 97.5), abs=0.01)
    assert lo < 200 / 260 < hi
    # ten times the spines: about sqrt(10) times narrower; nothing missed: no doubt
    lo10, hi10 = f1_interval(1000, 250, 350)
    assert 2.8 < (hi - lo) / (hi10 - lo10) < 3.6
    assert f1_interval(7, 0, 0) == (1.0, 1.0)
    assert np.isnan(f1_interval(0, 0, 0)).all()
    # in the summary of every evaluation
    s = evaluate(pts([[0, 0, 0], [0, 9, 0]]), pts([[0, 0, 0.2], [0, 20, 0]])).summary
    assert s["f1_ci95"][0] < s["f1"] < s["f1_ci95"][1]


def test_counts_precision_recall_f1():
    gt = pts([[0, 0, 0], [0, 10, 0], [0, 20, 0], [0, 30, 0]])
    pred = pts([[0, 0.5, 0], [0, 10, 0.5], [0, 20, 3], [5, 40, 0], [0, 50, 0]])
    s = evaluate(pred, gt).summary
    assert (s["true_positives"], s["false_positives"], s["false_negatives"]) == (2, 3, 2)
    assert s["precision"] == pytest.approx(2 / 5)
    assert s["recall"] == pytest.approx(2 / 4)
    assert s["f1"] == pytest.approx(2 * 2 / 9)


def test_tube_restricts_scoring_and_density_per_dendrite():
    # one straight dendrite along x, 20 um long; spines 1.5 um beside it every 2 um
    cl = pd.DataFrame({"dendrite_id": 0, "z_um": 0.0, "y_um": 0.0,
                       "x_um": np.linspace(0, 20, 81)})
    gt = pts([[0, 1.5, x] for x in range(1, 20, 2)])  # 10 spines
    pred = pts([[0, 1.5, x + 0.3] for x in range(1, 17, 2)]  # 8 found
               + [[0, 12.0, 5.0]])  # far from the dendrite: outside the tube
    ev = evaluate(pred, gt, centerlines=cl)
    s = ev.summary
    assert (s["n_pred"], s["n_gt"], s["true_positives"]) == (8, 10, 8)
    row = ev.per_dendrite.iloc[0]
    assert row["length_um"] == pytest.approx(20.0, abs=1e-6)
    assert row["density_gt_per_um"] == pytest.approx(0.5)
    assert row["density_pred_per_um"] == pytest.approx(0.4)
    assert row["density_error"] == pytest.approx(-0.2)
    inside = in_tube(pred[["z_um", "y_um", "x_um"]].to_numpy(), cl, lateral_radius=4,
                     axial_radius=5)
    assert inside.tolist() == [True] * 8 + [False]


def line(did, start, end, n=161):
    t = np.linspace(0, 1, n)[:, None]
    p = np.asarray(start, float) + t * (np.asarray(end, float) - np.asarray(start, float))
    return pd.DataFrame({"dendrite_id": did, "z_um": p[:, 0], "y_um": p[:, 1], "x_um": p[:, 2]})


def test_matched_dendrites_leave_out_crossing_ones():
    traced = pd.concat([line(0, (5, 10, 0), (5, 10, 30)), line(1, (5, 40, 0), (5, 40, 30))])
    # detected: dendrite 0 found 0.5 um off and 1 um deeper, only from x = 5 to 25; a
    # dendrite crossing it at x = 15; nothing along dendrite 1
    found = pd.concat([line(7, (6, 10.5, 5), (6, 10.5, 25)), line(8, (5, 0, 15), (5, 30, 15))])
    spines = pd.DataFrame({"dendrite_id": [7] * 6 + [8] * 3,
                           "base_z_um": 6.0, "base_y_um": [10.5] * 6 + [5, 9.5, 12],
                           "base_x_um": [6, 9, 12, 15, 18, 21] + [15] * 3})
    m = match_dendrites(found, traced, spines=spines).set_index("dendrite_id")
    assert m.loc[0, "matched_length_um"] == pytest.approx(20, abs=0.5)
    assert m.loc[0, "length_error"] == pytest.approx(-1 / 3, abs=0.02)
    assert m.loc[0, "n_spines"] == 6  # the crossing dendrite's spines belong to it, not here
    assert m.loc[0, "density_per_um"] == pytest.approx(6 / 20, rel=0.03)
    assert m.loc[1, "matched_length_um"] == 0 and m.loc[1, "n_spines"] == 0


def test_matched_length_leaves_out_branches_dives_and_what_goes_past_the_ends():
    traced = line(0, (5, 10, 10), (5, 10, 30))
    found = pd.concat([
        line(1, (5, 10.3, 0), (5, 10.3, 20)),  # along from x = 10 to 20, then past the start
        line(2, (5, 10.3, 20), (5, 10.3, 30)),  # along from x = 20 to 30
        line(3, (5, 10.3, 20), (5, 14, 25)),  # a side branch leaving at a shallow angle
        line(4, (5, 10.3, 20), (5, 3, 22)),  # one leaving at a steep angle
        line(5, (5, 10.3, 25), (15, 10.8, 25.5)),  # a dendrite diving away in z at x = 25
    ])
    m = match_dendrites(found, traced)
    assert m["matched_length_um"].iloc[0] == pytest.approx(20, abs=1)
    whole = match_dendrites(line(1, (5, 10.3, 10), (5, 10.3, 30)), traced)
    assert whole["matched_length_um"].iloc[0] == pytest.approx(20, abs=1)


def test_matched_table_written(tmp_path):
    ev = evaluate(pts([[0, 0, 0]]), pts([[0, 0, 0.5], [0, 9, 9]]))
    paths = ev.write(tmp_path)
    m = pd.read_csv(paths["matched"])
    assert sorted(m["status"]) == ["fn", "tp"]
    assert m.loc[m.status == "tp", "lateral_distance_um"].item() == pytest.approx(0.5)


def test_reads_annotation_csv_format(tmp_path):
    path = tmp_path / "ann.csv"
    path.write_text("spine_id,segment_id,z_um,y_um,x_um,base_z_um,base_y_um,base_x_um,is_bad,"
                    "note\n66,0,31.0,28.69,51.69,31.0,27.35,50.68,0,\n67,2,30,1,2,30,1,1,1,Spine?\n")
    df = read_spines(path)
    assert df["dendrite_id"].tolist() == [0, 2] and df["spine_id"].tolist() == [66, 67]
    assert df["note"].iloc[1] == "Spine?"


def test_compared_at_the_distal_edge_of_the_head():
    # heads 1.3 um short of the clicks, along their spines; the heads are 0.8 um wide, so their
    # distal edges lie 0.9 um from the clicks (inside the 1.0 um tolerance). The second spine
    # rises in z and points along -x: the edge moves in the image plane only. The third has
    # no measured head (a hand-added spine): compared at its centre.
    pred = pd.DataFrame({"z_um": [5.0, 5.0, 5.0], "y_um": [10.0, 20.0, 30.0],
                         "x_um": [10.0, 10.0, 10.0], "base_z_um": [5.0, 3.0, 5.0],
                         "base_y_um": [9.0, 20.0, 29.0], "base_x_um": [10.0, 11.0, 10.0],
                         "head_diameter_um": [0.8, 0.8, np.nan]})
    gt = pts([[5.0, 11.3, 10.0], [5.0, 20.0, 8.7], [5.0, 31.3, 10.0]])
    assert evaluate(pred, gt).summary["true_positives"] == 0
    ev = evaluate(pred, gt, pred_point="distal_edge")
    assert ev.summary["true_positives"] == 2 and ev.summary["pred_point"] == "distal_edge"
    tp = ev.matched.query("status == 'tp'").sort_values("pred_index")
    assert tp["pred_index"].tolist() == [0, 1]
    np.testing.assert_allclose(tp[["pred_z_um", "pred_y_um", "pred_x_um"]].to_numpy(),
                               [[5.0, 10.4, 10.0], [5.0, 20.0, 9.6]])
    with pytest.raises(ValueError, match="pred_point"):
        evaluate(pred, gt, pred_point="tip")
