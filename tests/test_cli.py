"""The command line end to end: synth -> detect -> evaluate, provenance, and clean failures."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from spinecount.cli import main
from spinecount.io import file_sha256, write_imagej
from spinecount.tables import SPINE_COLUMNS, DENDRITE_COLUMNS


def run_cli(*args):
    """Run the installed entry point as a user would; return (exit status, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "spinecount.cli", *map(str, args)],
                       capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def test_help_lists_commands():
    code, out, _ = run_cli("--help")
    assert code == 0
    for cmd in ("detect", "synth", "evaluate", "demo"):
        assert cmd in out


def test_synth_detect_evaluate(tmp_path, capsys):
    tif = tmp_path / "syn.tif"
    assert main(["synth", str(tif), "--seed", "4", "--shape-um", "10", "30", "30"]) == 0
    out = tmp_path / "res"
    assert main(["detect", str(tif), "-o", str(out), "-q"]) == 0
    assert f"results: {out}" in capsys.readouterr().out
    spines = pd.read_csv(out / "spines.csv")
    dendrites = pd.read_csv(out / "dendrites.csv")
    assert list(spines.columns[: len(SPINE_COLUMNS)]) == list(SPINE_COLUMNS)
    assert list(dendrites.columns[: len(DENDRITE_COLUMNS)]) == list(DENDRITE_COLUMNS)
    assert len(spines) > 0 and len(dendrites) > 0
    assert spines["score"].between(0, 1).all()
    np.testing.assert_allclose(dendrites["density_per_um"],
                               dendrites["n_spines"] / dendrites["length_um"])
    run = json.loads((out / "run.json").read_text())
    assert run["input"]["sha256"] == file_sha256(tif)
    assert run["voxel_size_um"] == [1.0, 0.12, 0.12]
    assert run["parameters"]["max_spine_length_um"] > 0
    assert run["spinecount_version"] and run["wall_time_s"] > 0
    ev = tmp_path / "ev"
    assert main(["evaluate", str(out / "spines.csv"), str(tmp_path / "syn_spines.csv"),
                 "-o", str(ev), "--json"]) == 0
    summary = json.loads((ev / "evaluation.json").read_text())
    assert 0 < summary["f1"] <= 1 and summary["pred_point"] == "head"
    assert (ev / "matched.csv").exists()
    assert main(["evaluate", str(out / "spines.csv"), str(tmp_path / "syn_spines.csv"),
                 "-o", str(tmp_path / "ev2"), "--pred-point", "distal-edge"]) == 0
    edge = json.loads((tmp_path / "ev2" / "evaluation.json").read_text())
    assert edge["pred_point"] == "distal_edge" and edge["n_pred"] == summary["n_pred"]
    # along the true centre lines: the detected dendrites' length (centerlines.csv of the
    # result folder) against the true length, and their spines' density
    assert main(["evaluate", str(out / "spines.csv"), str(tmp_path / "syn_spines.csv"),
                 "--centerlines", str(tmp_path / "syn_centerlines.csv"),
                 "-o", str(tmp_path / "ev3")]) == 0
    seg = pd.read_csv(tmp_path / "ev3" / "per_dendrite.csv")
    assert len(seg) == pd.read_csv(tmp_path / "syn_centerlines.csv")["dendrite_id"].nunique()
    assert seg["length_error"].abs().max() < 0.1
    assert seg["n_along"].sum() > 0.8 * len(spines)
    # in chunks the same spines come out
    chunked = tmp_path / "chunked"
    assert main(["detect", str(tif), "-o", str(chunked), "-q", "--chunk-um", "12"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(chunked / "spines.csv"), spines)


def test_stacks_coarser_than_measured_get_a_one_line_warning(tmp_path):
    tif = tmp_path / "s.tif"
    main(["synth", str(tif), "--seed", "1", "--shape-um", "8", "20", "20"])
    code, _, err = run_cli("detect", tif, "-o", tmp_path / "out", "-q",
                           "--voxel-size", "3", "0.12", "0.12")
    assert code == 0
    assert ("spinecount: warning: s.tif: voxel size 3 x 0.12 x 0.12 um (z, y, x) is coarser "
            "than the detector is measured at") in err
    assert "UserWarning" not in err
    # and the result keeps it: a batch's warnings are not lost in a worker's output
    said = json.loads((tmp_path / "out" / "run.json").read_text())["warnings"]
    assert len(said) == 1 and "is coarser than the detector is measured at" in said[0]
    code, _, err = run_cli("detect", tif, "-o", tmp_path / "out2", "-q")
    assert code == 0 and "warning" not in err
    assert json.loads((tmp_path / "out2" / "run.json").read_text())["warnings"] == []


def test_a_stack_without_dendrites_says_so_and_gives_no_density(tmp_path):
    """A channel that shows no dendrites (here: noise only) is no error, but the user is told
    what to check, and the density is not given as 0."""
    tif = tmp_path / "noise.tif"
    write_imagej(tif, np.random.default_rng(0).poisson(5, (12, 160, 160)).astype(np.uint8),
                 (1.0, 0.12, 0.12))
    code, out, err = run_cli("detect", tif, "-o", tmp_path / "out", "-q")
    assert code == 0
    assert "spinecount: warning: noise.tif: no dendrite found" in err
    assert "0 spines on 0 dendrites (0.0 um, no density)" in out
    said = json.loads((tmp_path / "out" / "run.json").read_text())["warnings"]
    assert len(said) == 1 and "this channel" in said[0]


def test_params_file_and_voxel_size_override(tmp_path):
    tif = tmp_path / "syn.tif"
    main(["synth", str(tif), "--seed", "1", "--shape-um", "8", "20", "20"])
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"spine_threshold": 6.5}))
    out = tmp_path / "res"
    assert main(["detect", str(tif), "-o", str(out), "-q", "--params", str(params),
                 "--voxel-size", "2", "0.1", "0.1"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["parameters"]["spine_threshold"] == 6.5
    assert run["voxel_size_um"] == [2.0, 0.1, 0.1] and run["voxel_size_source"] == "given"
    # a run.json is a valid parameter file too
    assert main(["detect", str(tif), "-o", str(tmp_path / "again"), "-q",
                 "--params", str(out / "run.json")]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"spine_treshold": 3}))
    code, _, err = run_cli("detect", tif, "-o", tmp_path / "x", "--params", bad)
    assert code == 2 and "unknown parameter(s) spine_treshold" in err


@pytest.mark.parametrize("case", ["missing", "not_tiff", "blank", "no_voxel", "bad_channel",
                                  "bad_voxel"])
def test_bad_input_one_line_no_traceback_nothing_written(tmp_path, case):
    good = tmp_path / "good.tif"
    data = (np.random.default_rng(0).random((3, 20, 20)) * 100 + 1).astype(np.uint8)
    write_imagej(good, data, (1, 0.1, 0.1))
    args = {
        "missing": [tmp_path / "missing.tif"],
        "not_tiff": [tmp_path / "notes.tif"],
        "blank": [tmp_path / "blank.tif"],
        "no_voxel": [tmp_path / "plain.tif"],
        "bad_channel": [good, "--channel", "3"],
        "bad_voxel": [good, "--voxel-size", "1", "0", "0.1"],
    }[case]
    (tmp_path / "notes.tif").write_text("not an image")
    write_imagej(tmp_path / "blank.tif", np.zeros((3, 8, 8), np.uint8), (1, 0.1, 0.1))
    import tifffile

    tifffile.imwrite(tmp_path / "plain.tif", data, photometric="minisblack", metadata=None)
    out = tmp_path / "out"
    code, stdout, err = run_cli("detect", *args, "-o", out)
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert str(args[0].name) in err
    assert not out.exists()


def test_failed_run_does_not_overwrite_earlier_result(tmp_path):
    tif = tmp_path / "syn.tif"
    main(["synth", str(tif), "--seed", "2", "--shape-um", "8", "20", "20"])
    out = tmp_path / "res"
    assert main(["detect", str(tif), "-o", str(out), "-q"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    tif.write_bytes(tif.read_bytes()[:2000])  # the stack gets corrupted
    code, _, err = run_cli("detect", tif, "-o", out)
    assert code == 2 and "corrupt" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_debug_shows_traceback(tmp_path):
    code, _, err = run_cli("--debug", "detect", tmp_path / "missing.tif", "-o", tmp_path / "o")
    assert code != 0 and "Traceback" in err


def test_demo_runs_the_synthetic_experiment_and_the_real_sample(tmp_path, capsys):
    import pandas as pd

    assert main(["demo", str(tmp_path / "demo"), "-q"]) == 0
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 'demo' / 'results' / 'report.html'}" in out
    for cond in ("control", "chronic stress", "ketamine"):
        assert f"  {cond}: " in out
    # the planted densities are recovered (within 10%) and the contrasts are the planted ones
    planted = pd.read_csv(tmp_path / "demo/data/manifest.csv").groupby("condition")[
        "planted_density_per_um"].mean()
    cond = pd.read_csv(tmp_path / "demo/results/conditions.csv").set_index("condition")
    rel = cond["density_per_um_mean"] / planted[cond.index] - 1
    assert (rel.abs() < 0.10).all(), rel
    st = pd.read_csv(tmp_path / "demo/results/stats.csv").set_index("contrast")
    d = st[st["measure"] == "density_per_um"]
    assert d.loc["chronic stress - control", "estimate"] < 0
    assert d.loc["ketamine - chronic stress", "estimate"] > 0
    assert d.loc[["chronic stress - control", "ketamine - chronic stress"], "p_adj"].max() < 0.05
    assert (tmp_path / "demo/real_sample/rr30a_s0_crop/evaluation/evaluation.json").exists()
    assert "real sample rr30a_s0_crop" in out and "F1" in out and "95% CI" in out