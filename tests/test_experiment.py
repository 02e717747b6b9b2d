"""The experiment layer: manifest checks, the batch run, its cache, failures, reviews, statistics."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spinecount.cli import main
from spinecount.errors import InputError
from spinecount.experiment import run_experiment
from spinecount.manifest import ManifestError, check_manifest
from spinecount.params import DetectionParams
from spinecount.review import write_reviewed
from spinecount.stats import compare_conditions
from spinecount.synthetic import make_experiment

SMALL = {"shape_um": (8.0, 24.0, 24.0), "n_dendrites": 1}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exp")
    return make_experiment(folder, conditions={"control": 0.5, "stress": 0.3},
                           animals_per_condition=2, stacks_per_animal=1, seed=3, **SMALL)


def _copy(manifest, tmp_path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(Path(manifest).parent, dst)
    return dst / "manifest.csv"


def _mtimes(outdir):
    return {p.parent.name: p.stat().st_mtime_ns for p in Path(outdir).glob("stacks/*/run.json")}


def test_check_lists_every_problem_at_once(tmp_path, experiment, capsys):
    data = _copy(experiment, tmp_path).parent
    import tifffile

    tifffile.imwrite(data / "plain.tif", np.arange(384, dtype=np.uint16).reshape(6, 8, 8),
                     photometric="minisblack")
    (data / "corrupt.tif").write_bytes(b"II*\x00" + b"\x00" * 20)
    shutil.copy(data / "stacks/m01_1.tif", data / "copy.tif")
    rows = [
        ("stacks/m01_1.tif", "m01", "control"),
        ("stacks/m01_1.tif", "m01", "control"),  # the same stack twice
        ("copy.tif", "m09", "Control "),  # same content; label differs by case and space
        ("missing.tif", "m05", "stress"),  # missing file
        ("corrupt.tif", "m06", "stress"),  # unreadable
        ("plain.tif", "m07", "stress"),  # no voxel size
        ("stacks/m03_1.tif", "m01", "stress"),  # animal m01 under two conditions
    ]
    pd.DataFrame(rows, columns=["path", "animal", "condition"]).to_csv(data / "bad.csv",
                                                                       index=False)
    problems = [str(p) for p in check_manifest(data / "bad.csv")]
    text = "\n".join(problems)
    assert "row 2, column path: the same stack as row 1" in text
    assert "row 3, column path: same content as row 1" in text
    assert "row 4, column path: file not found: missing.tif" in text
    assert "row 5" in text and "corrupt" in text.lower()
    assert "row 6" in text and "voxel size" in text
    assert "differ only by case or spaces: 'Control ', 'control'" not in text  # stripped
    assert "differ only by case or spaces: 'Control', 'control'" in text
    assert "animal 'm01' is listed under 2 conditions" in text
    assert len(problems) == 7
    # missing columns are a problem too, and the CLI prints them all with status 2
    pd.DataFrame({"path": ["a.tif"], "animal": ["m1"]}).to_csv(data / "cols.csv", index=False)
    assert "missing column condition" in str(check_manifest(data / "cols.csv")[-1])
    assert main(["check", str(data / "bad.csv"), "-q"]) == 2
    assert len(capsys.readouterr().out.strip().splitlines()) == 7
    assert main(["check", str(experiment), "-q"]) == 0
    with pytest.raises(ManifestError, match="5 problems"):  # a run does not open images first
        run_experiment(data / "bad.csv", tmp_path / "out", workers=0, progress=False)


def test_run_tables_cache_and_changed_parameters(tmp_path, experiment):
    out = tmp_path / "out"
    res = run_experiment(experiment, out, workers=0, progress=False)
    assert res.ok and res.n_computed == 4 and res.n_cached == 0
    for name in ("spines", "dendrites", "animals", "conditions", "stats", "failures"):
        assert (out / f"{name}.csv").exists()
    for name in ("density_superplot", "density_by_type", "head_diameter"):
        assert (out / "plots" / f"{name}.png").exists() and (out / "plots" / f"{name}.svg").exists()
    html = (out / "report.html").read_text()
    assert "Methods" in html and "mixed model" in html and html.count("data:image/jpeg") == 4
    sp = pd.read_csv(out / "spines.csv")
    assert {"animal", "condition", "cell", "planted_density_per_um", "source"} <= set(sp.columns)
    assert set(sp["source"]) == {"automatic"}
    animals = pd.read_csv(out / "animals.csv")
    assert sorted(animals["animal"]) == ["m01", "m02", "m03", "m04"]
    stats = pd.read_csv(out / "stats.csv")
    assert {"contrast", "estimate", "ci_low", "ci_high", "p_value", "p_adj", "n_animals_a",
            "n_animals_b"} <= set(stats.columns)
    assert stats.loc[stats.measure == "density_per_um", "contrast"].tolist() == [
        "stress - control"]
    assert "fewer than 3 animals" in stats["warning"].iloc[0]
    info = json.loads((out / "experiment.json").read_text())
    took = info["timings_s"]
    assert set(took) == {"setup", "stacks", "aggregation"} and min(took.values()) >= 0
    assert took["stacks"] > 0 and sum(took.values()) <= info["wall_time_s"] + 0.01
    # a second run redoes nothing
    before = _mtimes(out)
    again = run_experiment(experiment, out, workers=0, progress=False)
    assert again.n_computed == 0 and again.n_cached == 4 and _mtimes(out) == before
    assert json.loads((out / "experiment.json").read_text())["timings_s"]["stacks"] < 0.1 * took[
        "stacks"]
    pd.testing.assert_frame_equal(pd.read_csv(out / "spines.csv"), sp)
    # a changed voxel size on one row redoes that stack only
    man = pd.read_csv(experiment)
    man.loc[0, ["voxel_size_z", "voxel_size_y", "voxel_size_x"]] = [1.0, 0.13, 0.13]
    changed = experiment.with_name("changed.csv")
    man.to_csv(changed, index=False)
    res = run_experiment(changed, out, workers=0, progress=False)
    assert res.n_computed == 1 and res.n_cached == 3
    after = _mtimes(out)
    assert [k for k in after if after[k] != before[k]] == ["stacks__m01_1"]
    # a changed detection parameter redoes every stack
    res = run_experiment(changed, out, params=DetectionParams(spine_threshold=3.5), workers=0,
                         progress=False)
    assert res.n_computed == 4
    chosen = json.loads((out / "experiment.json").read_text())["classifier"]
    assert chosen["source"] == "rr30a" and len(chosen["sha256"]) == 64  # the default
    # so does another choice of spines, the rules alone; the same again redoes none
    with pytest.raises(InputError, match="classifier file not found"):
        run_experiment(changed, out, classifier=tmp_path / "none.json", progress=False)
    res = run_experiment(changed, out, classifier="rules", workers=0, progress=False)
    assert res.n_computed == 4
    assert json.loads((out / "experiment.json").read_text())["classifier"] == {
        "source": "rules", "sha256": None}
    res = run_experiment(changed, out, classifier="rules", workers=0, progress=False)
    assert res.n_computed == 0


def test_failing_stack_amid_good_ones_and_resume(tmp_path, experiment):
    manifest = _copy(experiment, tmp_path)
    (manifest.parent / "stacks/m02_1.tif").write_bytes(b"II*\x00broken")
    out = tmp_path / "out"
    assert main(["run", str(manifest), "-o", str(out), "--workers", "0", "-q"]) == 1
    failures = pd.read_csv(out / "failures.csv")
    assert failures["stack"].tolist() == ["stacks__m02_1"]
    assert "m02_1.tif" in failures["error"].iloc[0]
    assert set(pd.read_csv(out / "animals.csv")["animal"]) == {"m01", "m03", "m04"}
    assert "1 stack(s) failed" in (out / "report.html").read_text()
    # the file is repaired: only the missing stack is computed, the finished ones are kept
    shutil.copy(experiment.parent / "stacks/m02_1.tif", manifest.parent / "stacks/m02_1.tif")
    before = _mtimes(out)
    res = run_experiment(manifest, out, workers=0, progress=False)
    assert res.ok and res.n_computed == 1 and res.n_cached == 3
    assert all(_mtimes(out)[k] == v for k, v in before.items())
    assert pd.read_csv(out / "failures.csv").empty


def test_warnings_of_a_stack_reach_the_report_and_survive_the_cache(tmp_path, experiment):
    """A stack that shows no dendrite (noise only) is analysed with a warning; the batch
    reports it (report, experiment.json, the result) also when the stack is reused from the
    cache."""
    from spinecount.io import read_stack, write_imagej

    manifest = _copy(experiment, tmp_path)
    tif = manifest.parent / "stacks/m02_1.tif"
    st = read_stack(tif)
    noise = np.random.default_rng(0).poisson(3, st.data.shape).astype(st.data.dtype)
    write_imagej(tif, noise, st.voxel_size)
    out = tmp_path / "out"
    for computed in (4, 0):
        res = run_experiment(manifest, out, workers=0, progress=False)
        assert res.ok and res.n_computed == computed
        assert list(res.warnings) == ["stacks__m02_1"]
        assert "no dendrite found" in res.warnings["stacks__m02_1"][0]
    info = json.loads((out / "experiment.json").read_text())["stacks"]
    assert [k for k, v in info.items() if v["warnings"]] == ["stacks__m02_1"]
    assert "1 stack(s) gave warnings" in (out / "report.html").read_text()


def test_interrupted_run_resumes(tmp_path, experiment):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "spinecount.cli", "run", str(experiment), "-o", str(out),
           "--workers", "0", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(out.glob("stacks/*/qc.jpg")) and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done = len(list(out.glob("stacks/*/qc.jpg")))
    assert 1 <= done < 4 and not (out / "spines.csv").exists()
    res = run_experiment(experiment, out, workers=0, progress=False)
    assert res.n_cached == done and res.n_computed == 4 - done


def test_reviewed_table_takes_precedence(tmp_path, experiment):
    out = tmp_path / "out"
    run_experiment(experiment, out, workers=0, progress=False)
    folder = out / "stacks" / "stacks__m01_1"
    auto = pd.read_csv(folder / "spines.csv")
    reviewed = auto.assign(status="accepted")
    reviewed.loc[0, "status"] = "rejected"
    added = auto.iloc[[1]].assign(spine_id=auto["spine_id"].max() + 1, dendrite_id=-1,
                                  status="added")
    added[["y_um", "x_um"]] += 0.5
    write_reviewed(pd.concat([reviewed, added]), folder, reviewer="tester")
    res = run_experiment(experiment, out, workers=0, progress=False)
    assert res.n_computed == 0
    sp = res.spines[res.spines["stack"] == "stacks__m01_1"]
    assert set(sp["source"]) == {"reviewed"} and len(sp) == len(auto)  # -1 rejected, +1 added
    assert "rejected" not in set(sp["status"]) and (sp["dendrite_id"] >= 0).all()
    others = res.spines[res.spines["stack"] != "stacks__m01_1"]
    assert set(others["source"]) == {"automatic"}
    animals = res.animals.set_index("animal")
    assert animals.loc["m01", "source"] == "reviewed"
    assert (folder / "spines.csv").read_text() == auto.to_csv(index=False)  # untouched


def test_statistics_against_a_known_answer():
    # balanced design: the mixed-model estimate is the difference of the condition means
    rng = np.random.default_rng(1)
    rows = []
    for cond, mean in [("control", 0.50), ("stress", 0.35), ("ketamine", 0.47)]:
        for a in range(5):
            animal_mean = mean + rng.normal(0, 0.03)
            rows += [{"animal": f"{cond}{a}", "condition": cond,
                      "density": animal_mean + rng.normal(0, 0.05)} for _ in range(4)]
    df = pd.DataFrame(rows)
    st = compare_conditions(df, "density").set_index("contrast")
    means = df.groupby("condition")["density"].mean()
    assert list(st.index) == ["stress - control", "ketamine - control", "ketamine - stress"]
    assert st.loc["stress - control", "estimate"] == pytest.approx(
        means["stress"] - means["control"], abs=1e-6)
    assert st.loc["ketamine - stress", "estimate"] == pytest.approx(
        means["ketamine"] - means["stress"], abs=1e-6)
    assert st.loc["stress - control", "p_adj"] < 0.01
    assert st.loc["ketamine - stress", "p_adj"] < 0.01
    assert st.loc["ketamine - control", "p_adj"] > 0.05
    from statsmodels.stats.multitest import multipletests

    np.testing.assert_allclose(st["p_adj"], multipletests(st["p_value"], method="holm")[1])
    assert (st["ci_low"] < st["estimate"]).all() and (st["estimate"] < st["ci_high"]).all()
    assert (st["n_animals_a"] == 5).all() and (st["warning"] == "").all()
    # the reference condition is settable
    st2 = compare_conditions(df, "density", reference="stress")
    assert st2["contrast"].iloc[0] == "control - stress"


def test_run_on_a_separate_scheduler_and_workers_gives_the_local_tables(tmp_path, experiment):
    pytest.importorskip("distributed")
    local = tmp_path / "local"
    run_experiment(experiment, local, workers=0, progress=False)
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    bindir = Path(sys.executable).parent
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=bindir)
    worker = None
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        worker = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
             str(sched_file), "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=bindir)
        address = json.loads(sched_file.read_text())["address"]
        remote = tmp_path / "remote"
        res = run_experiment(experiment, remote, scheduler=address, progress=False)
        assert res.ok and res.n_computed == 4
        for name in ("spines", "dendrites", "animals", "conditions", "stats"):
            pd.testing.assert_frame_equal(pd.read_csv(remote / f"{name}.csv"),
                                          pd.read_csv(local / f"{name}.csv"))
    finally:
        for p in (worker, scheduler):
            if p is not None:
                p.terminate()
                p.wait(timeout=30)


def test_yaml_manifest_reads_like_csv(tmp_path, experiment):
    from spinecount.manifest import read_manifest

    csv = read_manifest(experiment)
    rows = pd.read_csv(experiment).to_dict("records")
    import yaml

    path = experiment.parent / "manifest.yaml"
    path.write_text(yaml.safe_dump({"stacks": rows}, sort_keys=False))
    pd.testing.assert_frame_equal(read_manifest(path), csv)
