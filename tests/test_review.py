"""The review core (what the napari plugin calls): edits, statuses, autosave, reopening, blind."""

import numpy as np
import pandas as pd
import pytest

from spinecount.detection import detect
from spinecount.results import REVIEWED_SPINES_FILE, SPINES_FILE, write_result
from spinecount.review import ReviewSession, load_result, review_queue
from spinecount.synthetic import make_stack


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    syn = make_stack(shape_um=(10, 30, 30), n_dendrites=2, branch_probability=0, seed=4)
    folder = tmp_path_factory.mktemp("res") / "stack"
    det = detect(syn.stack, classifier="rules")  # the rules leave more candidates to review
    write_result(folder, det, {"voxel_size_um": list(syn.stack.voxel_size)})
    return folder, det


def _fresh(result, tmp_path):
    import shutil

    folder = tmp_path / "r"
    shutil.copytree(result[0], folder)
    return folder


def test_edits_set_status_and_are_saved_at_once(result, tmp_path):
    folder, det = _fresh(result, tmp_path), result[1]
    auto = pd.read_csv(folder / SPINES_FILE)
    s = ReviewSession(folder, reviewer="ana")
    assert not (folder / REVIEWED_SPINES_FILE).exists()  # opening writes nothing
    assert set(s.spines["status"]) == {"detected"}

    # add a spine 1.5 um beside the middle of dendrite 0: attached there, base on the surface
    cl = det.centerlines[det.centerlines.dendrite_id == 0][["z_um", "y_um", "x_um"]].to_numpy()
    mid = cl[len(cl) // 2]
    new = s.add(mid + [0, 1.5, 0], type="thin")
    saved = pd.read_csv(folder / REVIEWED_SPINES_FILE).set_index("spine_id")
    row = saved.loc[new]
    assert row["status"] == "added" and row["dendrite_id"] == 0 and row["type"] == "thin"
    assert row["reviewer"] == "ana" and row["reviewed_at"]
    radius = det.dendrites.set_index("dendrite_id").loc[0, "diameter_um"] / 2
    assert row["shaft_distance_um"] == pytest.approx(1.5 - radius, abs=0.15)
    assert np.isnan(row["head_diameter_um"])  # nobody measured it: no made-up number

    first, second, third = auto["spine_id"].iloc[:3]
    s.reject(first)
    s.move(second, auto.loc[1, ["z_um", "y_um", "x_um"]].to_numpy(float) + [0, 0, 0.4])
    s.retype(third, "mushroom")
    s.accept([second, third])  # accepting keeps the more telling status
    saved = pd.read_csv(folder / REVIEWED_SPINES_FILE).set_index("spine_id")
    assert saved.loc[first, "status"] == "rejected"
    assert saved.loc[second, "status"] == "moved"
    assert saved.loc[second, "x_um"] == pytest.approx(auto.loc[1, "x_um"] + 0.4)
    assert saved.loc[third, ["status", "type"]].tolist() == ["retyped", "mushroom"]
    assert len(saved) == len(auto) + 1  # rejected spines stay, for the audit
    pd.testing.assert_frame_equal(pd.read_csv(folder / SPINES_FILE), auto)

    # the counts: one rejected, one added
    assert s.summary()["n_spines"].sum() == len(auto)
    assert first not in s.order()
    s.accept(first)  # a rejected spine can be restored
    assert s.get(first)["status"] == "accepted"

    with pytest.raises(ValueError, match="unknown spine type"):
        s.retype(second, "huge")
    with pytest.raises(KeyError, match="no spine"):
        s.reject(10_000)


def test_reopening_restores_the_review_and_runs_count_it(result, tmp_path):
    folder = _fresh(result, tmp_path)
    s = ReviewSession(folder, reviewer="ana")
    ids = s.order()
    s.reject(ids[:3])
    s.add([2.0, 5.0, 5.0])
    again = ReviewSession(folder)
    assert (again.spines["status"] == "rejected").sum() == 3
    assert (again.spines["status"] == "added").sum() == 1
    spines, dendrites, _, source = load_result(folder)
    assert source == "reviewed" and len(spines) == len(ids) - 3 + 1
    assert dendrites["n_spines"].sum() == len(spines)


def test_candidates_taken_as_spines_are_not_offered_again(result, tmp_path):
    folder = _fresh(result, tmp_path)
    s = ReviewSession(folder, reviewer="ana")
    cands = s.candidates()
    assert len(cands) >= 2
    pos = cands[["z_um", "y_um", "x_um"]].to_numpy()
    s.add(pos[0], type=cands["type"].iloc[0])
    s.add(pos[1] + [0.0, 2.0, 0.0])  # a spine added elsewhere leaves its candidate
    left = ReviewSession(folder).candidates()
    assert len(left) == len(cands) - 1
    np.testing.assert_allclose(left[["z_um", "y_um", "x_um"]].to_numpy(), pos[1:])


def test_review_order_is_least_certain_first(result, tmp_path):
    s = ReviewSession(_fresh(result, tmp_path), autosave=False)
    scores = s.spines.set_index("spine_id").loc[s.order(), "score"].to_numpy()
    assert np.all(np.diff(scores) >= 0)


def test_blind_queue_hides_condition_and_file(tmp_path):
    from spinecount.experiment import run_experiment
    from spinecount.synthetic import make_experiment

    manifest = make_experiment(tmp_path / "d", animals_per_condition=2, stacks_per_animal=1,
                               shape_um=(8, 20, 20))
    run_experiment(manifest, tmp_path / "o", workers=0, progress=False)
    open_ = review_queue(tmp_path / "o")
    assert {"stack", "condition", "animal", "image"} <= set(open_.columns) and len(open_) == 6
    blind = review_queue(tmp_path / "o", blind=True)
    assert list(blind.columns) == ["code", "folder", "reviewed"]
    assert sorted(blind["folder"]) == sorted(open_["folder"])
    assert blind["folder"].tolist() != open_["folder"].tolist()  # shuffled
    # the same codes next time (a blind reviewer can stop and go on)
    assert review_queue(tmp_path / "o", blind=True).equals(blind)
