"""Run an experiment: every stack of a manifest, in parallel, cached, then aggregated.

``run_experiment`` detects spines in every stack listed in a manifest
(:mod:`spinecount.manifest`) with dask.distributed (a local cluster of worker processes, or an
existing cluster given by its scheduler address), and writes into the output folder::

    stacks/<stack>/       one result folder per stack (spines.csv, dendrites.csv,
                          centerlines.csv, run.json, qc.jpg) and, after a review,
                          spines_reviewed.csv, which is then used instead of spines.csv
    spines.csv            every counted spine, with its stack's manifest columns and source
    dendrites.csv         every dendrite, with per-type densities and ``included``
    animals.csv           per animal; conditions.csv per condition (mean and SEM over animals)
    stats.csv             mixed-model contrasts between conditions (:mod:`spinecount.stats`)
    failures.csv          stacks that failed, with the error
    plots/                superplot, density by type, head diameters, survival (PNG and SVG)
    timelapse/<field>/    tracks of each field imaged in several sessions (spinecount.fields);
                          turnover.csv, survival.csv, turnover_conditions.csv for all fields
    report.html           one self-contained page with all of it
    experiment.json       provenance of the run

Each stack's result is cached under a key made of the input file's hash, its channel, voxel
size and traces, the detection parameters and the spinecount version: a second run redoes
nothing, an interrupted run resumes, and a changed parameter redoes exactly the stacks it
affects. A stack that fails is recorded and the others go on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ._version import __version__
from .classifier import load_classifier
from .errors import InputError
from .params import DEFAULT_CLASSIFIER, MIN_LENGTH_UM, DetectionParams
from .results import RUN_FILE

STACKS_DIR = "stacks"
QC_FILE = "qc.jpg"
FAILURE_COLUMNS = ["stack", "path", "animal", "condition", "error"]


@dataclass
class ExperimentResult:
    """Tables of an experiment run (see the module docstring for the files)."""

    outdir: Path
    spines: pd.DataFrame
    dendrites: pd.DataFrame
    animals: pd.DataFrame
    conditions: pd.DataFrame
    stats: pd.DataFrame
    failures: pd.DataFrame
    report: Path
    n_computed: int
    n_cached: int
    turnover: pd.DataFrame  # time-lapse fields only (empty otherwise)
    warnings: dict = field(default_factory=dict)  # stack -> the warnings its detection gave

    @property
    def ok(self) -> bool:
        return self.failures.empty


#: dask setting that :func:`run_experiment` turns off for its local cluster (see README).
TRIM_SETTING = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
START_METHOD_SETTING = "distributed.worker.multiprocessing-method"


def cache_key(task: dict) -> str:
    """Hash of everything a stack's result depends on."""
    doc = {k: task[k] for k in ("sha256", "channel", "voxel_size", "traces_sha256", "params",
                                "classifier_sha256")}
    doc["version"] = __version__
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _warnings(task: dict) -> list[str]:
    """The warnings a stack's detection gave, from its ``run.json``."""
    try:
        return json.loads((Path(task["folder"]) / RUN_FILE).read_text()).get("warnings", [])
    except (OSError, json.JSONDecodeError):
        return []


def _is_cached(folder: Path, key: str) -> bool:
    run = folder / RUN_FILE
    if not (run.exists() and (folder / QC_FILE).exists()):
        return False
    try:
        return json.loads(run.read_text()).get("cache_key") == key
    except (OSError, json.JSONDecodeError):
        return False


def process_stack(task: dict) -> dict:
    """Read, detect and write one stack's result folder; never raises (runs on a worker).

    Returns a dict with ``stack``, ``ok``, ``error`` and ``seconds``.
    """
    t0 = time.perf_counter()
    try:
        from .plots import qc_thumbnail
        from .results import detect_to_folder

        folder = Path(task["folder"])
        stack, det, _ = detect_to_folder(
            task["file"], folder, DetectionParams.from_dict(task["params"]), command="run",
            channel=task["channel"], voxel_size=task["voxel_size"],
            traces=task["traces_file"] or None, sha256=task["sha256"], threads=1,
            classifier=task["classifier"],
            extra={"cache_key": task["key"], "stack": task["stack"],
                   "manifest_row": task["row"]})
        qc_thumbnail(stack, det.spines, det.centerlines, folder / QC_FILE)
        return {"stack": task["stack"], "ok": True, "error": "",
                "seconds": time.perf_counter() - t0}
    except Exception as exc:  # recorded in failures.csv; the batch goes on
        msg = str(exc) if exc.__class__.__module__.startswith("spinecount") else (
            f"{type(exc).__name__}: {exc}")
        return {"stack": task["stack"], "ok": False, "error": msg,
                "seconds": time.perf_counter() - t0}


def _import_aggregation() -> None:
    """Import what the aggregation needs (statistics, plots): run in a thread while the
    workers work."""
    import importlib

    from .plots import _plt

    for name in ("scipy.stats", "statsmodels.formula.api"):
        importlib.import_module(name)
    _plt()


def _tasks(df: pd.DataFrame, outdir: Path, params: DetectionParams,
           classifier: dict) -> list[dict]:
    """One task per stack; `classifier` is the model's provenance (source and digest)."""
    from .manifest import INTERNAL, row_channel, row_voxel_size

    meta = [c for c in df.columns if c not in INTERNAL]
    tasks = []
    for _, row in df.iterrows():
        t = {"stack": row["stack"], "file": row["file"], "traces_file": row["traces_file"],
             "sha256": row["sha256"], "traces_sha256": row["traces_sha256"],
             "channel": row_channel(row), "voxel_size": row_voxel_size(row),
             "params": params.to_dict(), "row": {c: row[c] for c in meta},
             "folder": str(outdir / STACKS_DIR / row["stack"]),
             "classifier": classifier["source"], "classifier_sha256": classifier["sha256"]}
        t["key"] = cache_key(t)
        tasks.append(t)
    return tasks


def _local_cluster_settings() -> dict:
    """dask settings for the local cluster that :func:`run_experiment` starts."""
    # dask sets MALLOC_TRIM_THRESHOLD_=65536 in its workers so that freed memory goes back to
    # the system at once; with the large arrays of detection that makes every stack about 1.5
    # times slower, and the arrays are returned anyway (mmap).
    settings = {TRIM_SETTING: None}
    if "forkserver" in multiprocessing.get_all_start_methods():  # not on Windows
        settings[START_METHOD_SETTING] = "forkserver"
    return settings


def _start_forkserver() -> None:
    """Start the process that the local cluster's workers are forked from, with spinecount
    imported and its numba code loaded (:mod:`spinecount._preload`), so that the workers start
    warm and that work (about 2 s) is done once, not once per worker. It warms up while this
    process starts the scheduler. Call inside ``dask.config.set(_local_cluster_settings())``;
    nothing where there is no forkserver; once per process."""
    import multiprocessing.forkserver

    import dask
    from distributed.utils import get_mp_context

    if dask.config.get(START_METHOD_SETTING) != "forkserver":
        return
    # the environment the workers would get when spawned (OMP_NUM_THREADS=1 ...) has to be
    # there when the forkserver imports numpy; dask's nanny sets it here as well
    env = dask.config.get("distributed.nanny.pre-spawn-environ")
    os.environ.update({k: os.environ.get(k, str(v)) for k, v in env.items() if v is not None})
    get_mp_context().set_forkserver_preload(["distributed", "spinecount._preload"])
    multiprocessing.forkserver.ensure_running()


def _execute(tasks: list[dict], *, workers: int, scheduler: str | None, progress: bool,
             jobs: list[tuple] = (), clock: dict | None = None) -> list[dict]:
    """Run process_stack over `tasks` on dask.distributed (or in this process with 0 workers),
    and the `jobs` (``(name, function, args)``, for example registering the sessions of a
    field) after them; a job that fails is left to the aggregation, which does it again.
    ``clock["ready"]`` is set to the time (``time.perf_counter``) the first task could start."""
    from tqdm.auto import tqdm

    results = []
    bar = tqdm(total=len(tasks), desc="stacks", unit="stack", disable=not progress)

    def done(res):
        results.append(res)
        bar.update(1)
        n_fail = sum(not r["ok"] for r in results)
        bar.set_postfix_str(f"done {len(results) - n_fail}, failed {n_fail}")

    try:
        if not tasks and not jobs:
            return results
        if scheduler is None and workers == 0:
            if clock is not None:
                clock["ready"] = time.perf_counter()
            for t in tasks:
                done(process_stack(t))
            for _, fn, args in jobs:
                with contextlib.suppress(Exception):
                    fn(*args)
            return results
        from dask.distributed import Client, LocalCluster, as_completed, wait

        # the aggregation's libraries take about 1.5 s to import: do it while the workers work
        threading.Thread(target=_import_aggregation, name="spinecount-imports",
                         daemon=True).start()
        cluster = None
        if scheduler is None:
            import dask

            with dask.config.set(_local_cluster_settings()):
                _start_forkserver()
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster if cluster is not None else scheduler)
        if clock is not None:
            clock["ready"] = time.perf_counter()
        try:
            futures = {client.submit(process_stack, t, key=f"spinecount-{t['stack']}-"
                                     f"{t['key'][:12]}", pure=False): t for t in tasks}
            later = [client.submit(fn, *args, key=f"spinecount-{name}", pure=False,
                                   priority=-1) for name, fn, args in jobs]
            for fut in as_completed(futures):
                try:
                    done(fut.result())
                except Exception as exc:  # the worker died (memory, crash)
                    done({"stack": futures[fut]["stack"], "ok": False, "seconds": None,
                          "error": f"worker lost: {type(exc).__name__}: {exc}"})
            wait(later)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
        return results
    finally:
        bar.close()


def run_experiment(manifest, outdir, *, params: DetectionParams | None = None,
                   workers: int | None = None, scheduler: str | None = None,
                   reference: str | None = None, min_length_um: float = MIN_LENGTH_UM,
                   progress: bool = True, classifier=DEFAULT_CLASSIFIER) -> ExperimentResult:
    """Detect spines in every stack of a manifest and write the experiment's tables and report.

    Parameters
    ----------
    manifest : path
        The experiment table (see :mod:`spinecount.manifest`). It is checked first and every
        problem is reported at once (:class:`spinecount.manifest.ManifestError`).
    outdir : path
        Output folder; a second run into the same folder reuses every unchanged result.
    params : DetectionParams, optional
        Detection parameters (defaults otherwise).
    workers : int, optional
        Worker processes of the local cluster (default: the number of cores, at most the
        number of stacks to compute); 0 runs in this process without a cluster.
    scheduler : str, optional
        Address of a running dask scheduler (``tcp://host:8786``); its workers do the work.
    reference : str, optional
        Reference condition for the statistics (default: one named control).
    min_length_um : float
        Dendrites shorter than this are listed but left out of the animal, condition and
        statistics tables.
    progress : bool
        Show a progress bar.
    classifier : str or path
        What chooses the spines (:func:`spinecount.detect`): the built-in model by default,
        another built-in name, a file of ``spinecount train`` (:mod:`spinecount.classifier`),
        or ``"rules"``; its digest is part of each stack's cache key.

    Returns
    -------
    ExperimentResult
    """
    from .fields import TIMELAPSE_DIR, fields, register_field, registration_done
    from .manifest import INTERNAL, load_manifest

    t0 = time.perf_counter()
    params = params or DetectionParams()
    chosen = load_classifier(classifier)[1]  # a bad file is said before any stack is read
    if chosen["source"] == "in memory":  # the workers read the model themselves
        raise InputError("run_experiment needs the classifier's file or built-in name, "
                         "not a model", hint="save it (model.save(path)) and pass the path")
    outdir = Path(outdir)
    df = load_manifest(manifest, progress=progress)
    outdir.mkdir(parents=True, exist_ok=True)
    tasks = _tasks(df, outdir, params, chosen)
    todo = [t for t in tasks if not _is_cached(Path(t["folder"]), t["key"])]
    # time-lapse fields are registered on the workers too (they need the stacks only)
    jobs = [(f"register-{name}", register_field, (ts, outdir / TIMELAPSE_DIR / name))
            for name, ts in fields(tasks).items()
            if not registration_done(ts, outdir / TIMELAPSE_DIR / name)]
    if workers is None:
        workers = max(1, min(os.cpu_count() or 1, len(todo) + len(jobs)))
    clock = {"ready": time.perf_counter()}
    results = {r["stack"]: r for r in _execute(todo, workers=workers, scheduler=scheduler,
                                                progress=progress, jobs=jobs, clock=clock)}
    t_stacks = time.perf_counter()
    failed = [t for t in todo if not results[t["stack"]]["ok"]]
    failures = pd.DataFrame(
        [{"stack": t["stack"], "path": t["row"].get("path", ""),
          "animal": t["row"].get("animal", ""), "condition": t["row"].get("condition", ""),
          "error": results[t["stack"]]["error"]} for t in failed], columns=FAILURE_COLUMNS)
    failed_names = {t["stack"] for t in failed}
    good = [t for t in tasks if t["stack"] not in failed_names]
    meta = [c for c in df.columns if c not in INTERNAL]
    res = _aggregate(good, meta, outdir, failures, reference=reference,
                     min_length_um=min_length_um, progress=progress)
    info = {
        "spinecount_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "manifest": str(Path(manifest).resolve()), "parameters": params.to_dict(),
        "classifier": chosen,
        "min_length_um": min_length_um, "reference": res["order"][0] if res["order"] else None,
        "workers": workers, "scheduler": scheduler, "n_stacks": len(tasks),
        "n_computed": len(todo) - len(failed), "n_cached": len(tasks) - len(todo),
        "n_failed": len(failed), "wall_time_s": round(time.perf_counter() - t0, 3),
        # before the report: checking and hashing the inputs and starting the cluster, the
        # stacks from then on, and the tables, statistics and plots
        "timings_s": {"setup": round(clock["ready"] - t0, 3),
                      "stacks": round(t_stacks - clock["ready"], 3),
                      "aggregation": round(time.perf_counter() - t_stacks, 3)},
        "stacks": {t["stack"]: {"path": t["row"].get("path"), "sha256": t["sha256"],
                                "cache_key": t["key"],
                                "warnings": [] if t["stack"] in failed_names else _warnings(t)}
                   for t in tasks},
    }
    (outdir / "experiment.json").write_text(json.dumps(info, indent=2, default=str))
    res["warnings"] = {k: v["warnings"] for k, v in info["stacks"].items() if v["warnings"]}
    from .report import write_report

    report = write_report(outdir, res, info)
    return ExperimentResult(outdir, res["spines"], res["dendrites"], res["animals"],
                            res["conditions"], res["stats"], failures, report,
                            info["n_computed"], info["n_cached"], res["turnover"],
                            res["warnings"])


def _aggregate(tasks, meta, outdir: Path, failures, *, reference, min_length_um,
               progress: bool = False) -> dict:
    """Collect the stack results into the experiment tables, statistics and plots."""
    from .aggregate import MEASURES, animal_table, condition_table, dendrite_measures
    from .fields import condition_turnover, track_fields, turnover_stats
    from .plots import head_diameter_plot, save, superplot, survival_plot, type_density_plot
    from .review import load_result
    from .stats import STATS_COLUMNS, compare_conditions, condition_order

    sp, de = [], []
    for t in tasks:
        spines, dendrites, _, source = load_result(t["folder"])
        for table, out in ((spines, sp), (dendrites, de)):
            table = table.copy()
            for c in reversed(meta):
                table.insert(0, c, t["row"][c])
            table.insert(0, "source", source)
            table.insert(0, "stack", t["stack"])
            out.append(table)
    spines = pd.concat(sp, ignore_index=True) if sp else pd.DataFrame(
        columns=["stack", "source", *meta])
    dendrites = pd.concat(de, ignore_index=True) if de else pd.DataFrame(
        columns=["stack", "source", *meta, "dendrite_id", "length_um", "n_spines"])
    dendrites = dendrite_measures(dendrites, spines, min_length_um=min_length_um)
    order = condition_order(dendrites["condition"], reference) if len(dendrites) else []
    animals = animal_table(dendrites)
    conditions = condition_table(animals, order)
    included = dendrites[dendrites["included"]]
    stats = pd.concat([compare_conditions(included, m, reference=order[0] if order else None)
                       for m in MEASURES], ignore_index=True) if len(included) else (
        pd.DataFrame(columns=STATS_COLUMNS))
    turnover, survival = track_fields(tasks, outdir, progress=progress)
    turnover_conditions = condition_turnover(turnover, order)
    if len(turnover):
        stats = pd.concat([stats, turnover_stats(turnover, reference=order[0] if order else None)],
                          ignore_index=True)
        for name, table in (("turnover", turnover), ("survival", survival),
                            ("turnover_conditions", turnover_conditions)):
            table.to_csv(outdir / f"{name}.csv", index=False)
    for name, table in (("spines", spines), ("dendrites", dendrites), ("animals", animals),
                        ("conditions", conditions), ("stats", stats), ("failures", failures)):
        table.to_csv(outdir / f"{name}.csv", index=False)
    plots = {}
    if order:
        figs = {
            "density": ("density_superplot", superplot(
                included, "density_per_um", order=order, ylabel="spine density (spines/um)")),
            "types": ("density_by_type", type_density_plot(animals, order=order)),
            "heads": ("head_diameter", head_diameter_plot(spines, order=order)),
        }
        if len(survival):
            figs["survival"] = ("survival", survival_plot(survival, order=order))
        plots = {k: save(ax.figure, outdir / "plots", name) for k, (name, ax) in figs.items()}
    return {"spines": spines, "dendrites": dendrites, "animals": animals,
            "conditions": conditions, "stats": stats, "failures": failures, "order": order,
            "plots": plots, "tasks": tasks, "turnover": turnover,
            "turnover_conditions": turnover_conditions}
