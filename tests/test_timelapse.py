"""Time-lapse: registration, linking, fates, turnover, survival and ``spinecount track`` on
synthetic time-lapses with planted formation and elimination."""

import json

import numpy as np
import pandas as pd
import pytest

from spinecount.io import Stack
from spinecount.registration import IDENTITY, Registration, register
from spinecount.synthetic import make_timelapse
from spinecount.timelapse import link, survival, turnover


@pytest.fixture(scope="module")
def timelapse():
    return make_timelapse(n_sessions=3, formation=0.15, elimination=0.2,
                          shape_um=(14, 60, 60), n_dendrites=3, seed=3)


@pytest.fixture(scope="module")
def regs(timelapse):
    ref = timelapse.sessions[0].stack
    return [IDENTITY] + [register(ref, s.stack) for s in timelapse.sessions[1:]]


def test_registration_recovers_the_shift_and_lands_spines_on_themselves(timelapse, regs):
    for reg, shift, later in zip(regs[1:], timelapse.shifts_um[1:], timelapse.sessions[1:]):
        assert np.abs(reg.shift_um + shift).max() < 0.4
        first = timelapse.sessions[0].spines.set_index("track_id")
        same = later.spines[later.spines["track_id"].isin(first.index)]
        moved = reg.transform(same[["z_um", "y_um", "x_um"]].to_numpy())
        err = moved - first.loc[same["track_id"], ["z_um", "y_um", "x_um"]].to_numpy()
        assert np.percentile(np.hypot(err[:, 1], err[:, 2]), 90) < 1.0
    # round trip through JSON
    again = Registration.from_dict(regs[1].to_dict())
    np.testing.assert_allclose(again.transform([[3, 10, 12]]), regs[1].transform([[3, 10, 12]]))


def test_local_deformation_is_corrected(timelapse):
    """A stack warped by a smooth lateral deformation lands on itself after the local step."""
    from scipy import ndimage as ndi

    ref = timelapse.sessions[0].stack
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in ref.data.shape], indexing="ij")
    amp = 0.8 / ref.voxel_size[1]  # +-0.8 um, one wave across the field
    warped = ndi.map_coordinates(ref.data.astype(np.float32),
                                 [z, y + amp * np.sin(2 * np.pi * x / x.max()), x], order=1)
    mov = Stack(warped, ref.voxel_size)
    pts = timelapse.sessions[0].spines[["z_um", "y_um", "x_um"]].to_numpy()
    # a spine at p in the reference is at p - displacement in the warped stack
    disp = 0.8 * np.sin(2 * np.pi * (pts[:, 2] / ref.voxel_size[2]) / x.max())
    in_mov = pts - np.c_[np.zeros(len(pts)), disp, np.zeros(len(pts))]
    err_global = register(ref, mov, local=False).transform(in_mov) - pts
    err_local = register(ref, mov).transform(in_mov) - pts
    lat_g = np.median(np.hypot(err_global[:, 1], err_global[:, 2]))
    lat_l = np.median(np.hypot(err_local[:, 1], err_local[:, 2]))
    assert lat_l < 0.2 and lat_g > 0.6


def test_planted_turnover_is_recovered_from_true_positions(timelapse, regs):
    tables = [s.spines.drop(columns=["track_id", "spine_id"]) for s in timelapse.sessions]
    tracks = link(tables, registrations=regs,
                  centerlines=[s.centerlines for s in timelapse.sessions])
    # every persistent spine keeps its identity
    for a in range(2):
        ta, tb = (tracks[tracks.session == k].reset_index(drop=True) for k in (a, a + 1))
        ga, gb = (timelapse.sessions[k].spines["track_id"].to_numpy() for k in (a, a + 1))
        mine = dict(zip(ga, ta["track_id"]))
        for g, t in zip(gb, tb["track_id"]):
            assert mine[g] == t if g in mine else t not in set(ta["track_id"])
    got = turnover(tracks).query("dendrite == 'all'").reset_index(drop=True)
    for k in ("formation", "elimination"):
        np.testing.assert_allclose(got[k], timelapse.planted[k], atol=0.03)
    # fates: spines present in all three sessions are stable, and so on
    n = {f: tracks.drop_duplicates("track_id")["fate"].eq(f).sum()
         for f in ("stable", "formed", "eliminated", "transient")}
    ids = [set(s.spines["track_id"]) for s in timelapse.sessions]
    assert n["stable"] == len(ids[0] & ids[2])
    assert n["eliminated"] == len(ids[0] - ids[2])
    assert n["formed"] == len((ids[1] | ids[2]) - ids[0]) - len((ids[1] - ids[0]) - ids[2])
    assert n["transient"] == len((ids[1] - ids[0]) - ids[2])
    surv = survival(tracks)
    assert surv["survival_first"].iloc[-1] == pytest.approx(len(ids[0] & ids[2]) / len(ids[0]))
    new1 = ids[1] - ids[0]
    assert surv["survival_new"].iloc[-1] == pytest.approx(len(new1 & ids[2]) / len(new1))


def test_fates_and_turnover_on_a_known_case():
    def table(ys):
        return pd.DataFrame({"z_um": 2.0, "y_um": ys, "x_um": 5.0})

    # spine at y=5 stays, y=10 is lost after session 0, y=20 appears at 1 and is gone at 2,
    # y=30 appears at 2
    tr = link([table([5.0, 10.0]), table([5.2, 20.0]), table([4.9, 30.0])], gate_um=1.0)
    fate = tr.groupby("track_id")["fate"].first()
    first_y = tr.groupby("track_id")["y_um"].first().round().astype(int)
    assert dict(zip(first_y, fate)) == {5: "stable", 10: "eliminated", 20: "transient",
                                        30: "formed"}
    tv = turnover(tr).query("dendrite == 'all'")
    assert tv["formation"].tolist() == [0.5, 0.5] and tv["elimination"].tolist() == [0.5, 0.5]


def test_bases_keep_spines_whose_heads_crossed():
    # two spines 1.6 um apart along a shaft; between the days their necks bend towards each
    # other so that each head lands nearer the other's old head: heads alone would swap them
    def table(heads_y):
        return pd.DataFrame({"z_um": 2.0, "y_um": heads_y, "x_um": 6.5, "base_z_um": 2.0,
                             "base_y_um": [10.0, 11.6], "base_x_um": 5.0, "spine_id": [0, 1]})

    day0, day1 = table([10.0, 11.6]), table([11.0, 10.4])
    tr = link([day0, day1])
    t0, t1 = (tr[tr.session == k].set_index("spine_id")["track_id"] for k in (0, 1))
    assert (t0 == t1).all()
    heads_only = link([d.drop(columns=["base_z_um", "base_y_um", "base_x_um"])
                       for d in (day0, day1)])
    h0, h1 = (heads_only[heads_only.session == k].set_index("spine_id")["track_id"]
              for k in (0, 1))
    assert h0[0] == h1[1] and h0[1] == h1[0]  # the swap the bases prevent


def _missed_by_a_margin():
    """Two days of spines (12 linked on both, 0.1-0.2 um apart) and candidates: the spine at
    y = 40 is missed on day 1, the one at 50 on day 0 (a candidate lies at each); the one at
    60 is lost (a candidate lies 1 um away, further than the linked spines lie apart). The
    tables are automatic (a score on every spine), as only those take candidates."""
    def table(ys):
        return pd.DataFrame({"z_um": 2.0, "y_um": ys, "x_um": 5.0, "score": 0.9})

    steady = 3.0 * np.arange(12)
    day0 = table([*steady, 40.0, 60.0])
    day1 = table([*(steady + 0.1 + 0.1 * (np.arange(12) % 2)), 50.0])
    return day0, day1, table([50.1, 70.0]), table([40.15, 61.0])


def test_a_spine_missed_by_a_narrow_margin_is_found_among_the_candidates():
    """A spine found on one day and only a candidate at its place on the other is the same
    spine; a candidate further away than the linked spines lie apart is not taken."""
    from spinecount.timelapse import RESCUE_MIN_LINKS, track

    day0, day1, cand0, cand1 = _missed_by_a_margin()
    tr = link([day0, day1], candidates=[cand0, cand1])
    fate = {(s, r): f for s, r, f in zip(tr["session"], tr["row"], tr["fate"])}
    assert fate[(0, 12)] == fate[(1, len(day1) + 0)] == "stable"  # rescued on day 1
    assert fate[(1, 12)] == fate[(0, len(day0) + 0)] == "stable"  # rescued on day 0
    assert fate[(0, 13)] == "eliminated"
    assert tr.loc[tr["rescued"], ["session", "row"]].values.tolist() == [
        [0, len(day0)], [1, len(day1)]]
    tv = turnover(tr).query("dendrite == 'all'").iloc[0]
    assert (tv["n_from"], tv["n_formed"], tv["n_eliminated"]) == (15, 0, 1)
    # without candidates: one lost and one formed more
    tv = turnover(link([day0, day1])).query("dendrite == 'all'").iloc[0]
    assert (tv["n_from"], tv["n_formed"], tv["n_eliminated"]) == (14, 1, 2)
    # too few links to know how far the same spine lies on the other day: nothing is taken
    few = RESCUE_MIN_LINKS - 1
    tr = link([day0.iloc[12 - few:], day1.iloc[12 - few:]], candidates=[cand0, cand1])
    assert not tr["rescued"].any()
    # a reviewed table takes no candidates (the reviewer decided what is there); the
    # automatic one of the other day still does
    tracks, _ = track([day0.assign(score=0.9), day1.assign(status="accepted")],
                      candidates=[cand0, cand1])
    assert tracks.loc[tracks["rescued"], ["session", "row"]].values.tolist() == [
        [0, len(day0)]]


def test_track_command_takes_the_candidates_beside_automatic_tables(tmp_path, capsys):
    from spinecount.cli import main
    from spinecount.results import CANDIDATES_FILE, SPINES_FILE

    tables = _missed_by_a_margin()
    spines = []
    for day, (sp, cand) in enumerate(zip(tables[:2], tables[2:])):
        folder = tmp_path / f"day{day}"
        folder.mkdir()
        sp.assign(score=0.9).to_csv(folder / SPINES_FILE, index=False)
        cand.assign(score=0.4).to_csv(folder / CANDIDATES_FILE, index=False)
        spines.append(str(folder / SPINES_FILE))
    for extra, rescued in (([], 2), (["--no-rescue"], 0)):
        out = tmp_path / f"tracks{len(extra)}"
        assert main(["track", "--spines", *spines, "-o", str(out), *extra]) == 0
        assert pd.read_csv(out / "tracks.csv")["rescued"].sum() == rescued
        assert json.loads((out / "run.json").read_text())["rescued"] == rescued
    # a result folder from before candidates were kept: said, and linked without them
    (tmp_path / "day1" / CANDIDATES_FILE).unlink()
    capsys.readouterr()
    assert main(["track", "--spines", *spines, "-o", str(tmp_path / "old")]) == 0
    assert "no candidates.csv beside the automatic spines of session(s) 1" in (
        capsys.readouterr().out)
    assert pd.read_csv(tmp_path / "old" / "tracks.csv")["rescued"].tolist().count(True) == 1


def test_track_command_writes_tracks(tmp_path, timelapse, capsys):
    from spinecount.cli import main
    from spinecount.synthetic import write_synthetic

    spines, stacks, truth = [], [], []
    for i, s in enumerate(timelapse.sessions):
        paths = write_synthetic(s, tmp_path / f"s{i}.tif")
        # an annotation-like table: positions only, in a shuffled row order
        perm = np.random.default_rng(i).permutation(len(s.spines))
        s.spines.iloc[perm][["z_um", "y_um", "x_um"]].to_csv(tmp_path / f"s{i}_clicks.csv",
                                                             index=False)
        spines.append(str(tmp_path / f"s{i}_clicks.csv"))
        stacks.append(str(paths["stack"]))
        truth.append(s.spines["track_id"].to_numpy()[perm])
    out = tmp_path / "tracks"
    assert main(["track", "--spines", *spines, "--stacks", *stacks, "-o", str(out)]) == 0
    tracks = pd.read_csv(out / "tracks.csv")
    assert {"session", "row", "track_id", "fate"} <= set(tracks.columns)
    # `row` points into the input table: the same spine of session 0 and 1 shares a track
    a = tracks[tracks.session == 0].set_index("row")["track_id"]
    b = tracks[tracks.session == 1].set_index("row")["track_id"]
    pairs_true = {(i, j) for i, g in enumerate(truth[0]) for j, h in enumerate(truth[1])
                  if g == h}
    pairs_got = {(i, j) for i in a.index for j in b.index if a[i] == b[j]}
    assert pairs_got == pairs_true
    for name in ("turnover.csv", "survival.csv", "run.json"):
        assert (out / name).exists()
    assert json.loads((out / "run.json").read_text())["spines_sources"] == ["given"] * len(spines)
    assert "note:" not in capsys.readouterr().out  # clicks are not automatic detections
    # the detector's tables (a score on every spine) bring the caveat about turnover
    for path in spines[1:]:
        pd.read_csv(path).assign(score=0.8).to_csv(path, index=False)
    assert main(["track", "--spines", *spines, "--stacks", *stacks, "-o", str(out)]) == 0
    later = ", ".join(map(str, range(1, len(spines))))
    assert (f"note: the spines of session(s) {later} are automatic detections; formation and "
            "elimination from automatic detections are not reliable") in capsys.readouterr().out


def test_experiment_reports_turnover_per_condition(tmp_path, monkeypatch):
    from spinecount.experiment import run_experiment
    from spinecount.timelapse import REVIEWED_TRACKS_FILE
    from spinecount.synthetic import write_synthetic

    rows = []
    planted = {"control": (0.1, 0.1), "chronic stress": (0.1, 0.4)}
    for ci, (cond, (form, elim)) in enumerate(planted.items()):
        for a in range(3):
            animal = f"m{ci}{a}"
            tl = make_timelapse(n_sessions=2, formation=form, elimination=elim,
                                shape_um=(12, 40, 40), n_dendrites=2, branch_probability=0,
                                seed=10 * ci + a)
            for s, syn in enumerate(tl.sessions):
                rel = f"stacks/{animal}_day{s}.tif"
                write_synthetic(syn, tmp_path / "data" / rel)
                rows.append({"path": rel, "animal": animal, "condition": cond, "cell": 1,
                             "session": s})
    manifest = tmp_path / "data" / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    out = tmp_path / "out"
    res = run_experiment(manifest, out, workers=0, progress=False)
    assert res.ok
    conds = pd.read_csv(out / "turnover_conditions.csv").set_index("condition")
    assert conds.loc["chronic stress", "elimination_mean"] > conds.loc["control",
                                                                        "elimination_mean"] + 0.1
    assert (conds["n_animals"] == 3).all()
    stats = pd.read_csv(out / "stats.csv")
    assert "elimination 0 -> 1" in set(stats["measure"])
    assert (out / "plots" / "survival.png").exists()
    report = (out / "report.html").read_text()
    assert "Time-lapse" in report
    # nobody reviewed these spines: every table and the report say so
    turn = pd.read_csv(out / "turnover.csv")
    assert set(turn["spines_source"]) == {"automatic"} and set(turn["links_source"]) == {
        "automatic"}
    assert "turnover of 6 of 6 field(s) comes from spines that were not reviewed" in report
    field = out / "timelapse" / "m00_1"
    tracks = pd.read_csv(field / "tracks.csv")
    assert set(tracks["session"]) == {0, 1}
    # the detector's candidates took part: spines missed on one day were taken from them
    assert json.loads((field / "run.json").read_text())["rescued"] == tracks["rescued"].sum()
    assert sum(json.loads((f / "run.json").read_text())["rescued"]
               for f in (out / "timelapse").iterdir()) > 0

    # reviewed links win: make every link of the field a break (all spines new at day 1)
    rev = tracks.copy()
    day1 = rev["session"] == 1
    rev.loc[day1, "track_id"] = rev["track_id"].max() + 1 + np.arange(day1.sum())
    rev.to_csv(field / REVIEWED_TRACKS_FILE, index=False)
    run_experiment(manifest, out, workers=0, progress=False)
    pd.testing.assert_frame_equal(pd.read_csv(field / "tracks.csv"), tracks)  # kept
    turn = pd.read_csv(out / "turnover.csv")
    mine = turn[(turn["field"] == "m00_1") & (turn["dendrite"] == "all")].iloc[0]
    assert mine["elimination"] == 1.0 and mine["formation"] == pytest.approx(
        day1.sum() / (~day1).sum())
    assert mine["links_source"] == "reviewed" and mine["spines_source"] == "automatic"

    # a field whose spines were reviewed in both sessions no longer counts as unreviewed
    from spinecount.review import write_reviewed
    from spinecount.tables import read_spines

    for folder in out.glob("stacks/stacks__m01_day*"):
        write_reviewed(read_spines(folder / "spines.csv"), folder, reviewer="tester")
    res = run_experiment(manifest, out, workers=0, progress=False)
    src = res.turnover.drop_duplicates("field").set_index("field")["spines_source"]
    assert src["m01_1"] == "reviewed" and (src.drop("m01_1") == "automatic").all()
    assert "turnover of 5 of 6 field(s)" in (out / "report.html").read_text()

    # the fields are registered on the workers, beside the detections: with the saved
    # registrations gone, a run on one worker process registers them there, and this process
    # (where registering would now fail) never does
    import spinecount.registration
    from spinecount.fields import REGISTRATION_FILE

    before = pd.read_csv(out / "turnover.csv")
    saved = sorted((out / "timelapse").glob(f"*/{REGISTRATION_FILE}"))
    assert len(saved) == 6
    for path in saved:
        path.unlink()

    def not_here(stacks):
        raise AssertionError("registered in the main process")

    monkeypatch.setattr(spinecount.registration, "register_sessions", not_here)
    run_experiment(manifest, out, workers=1, progress=False)
    assert all(path.exists() for path in saved)
    pd.testing.assert_frame_equal(pd.read_csv(out / "turnover.csv"), before)


def test_a_tilted_field_is_corrected_in_z(timelapse):
    """The second day's field tilted by 3 um in z across x: block-wise z offsets follow it."""
    from scipy import ndimage as ndi

    ref = timelapse.sessions[0].stack
    vz = ref.voxel_size[0]
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in ref.data.shape], indexing="ij")
    tilt = 3.0 / vz * (x / x.max() - 0.5)  # -1.5 to +1.5 um
    tilted = ndi.map_coordinates(ref.data.astype(np.float32), [z + tilt, y, x], order=1)
    mov = Stack(tilted, ref.voxel_size)
    pts = timelapse.sessions[0].spines[["z_um", "y_um", "x_um"]].to_numpy()
    shift_z = 3.0 * (pts[:, 2] / ref.voxel_size[2] / x.max() - 0.5)
    in_mov = pts - np.c_[shift_z, np.zeros((len(pts), 2))]
    err_global = np.abs(register(ref, mov, local=False).transform(in_mov) - pts)[:, 0]
    err_local = np.abs(register(ref, mov).transform(in_mov) - pts)[:, 0]
    assert np.median(err_local) < 0.5 < np.median(err_global)
