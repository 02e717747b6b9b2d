"""The ``spinecount`` command line.

Errors in the input are printed as one line naming the file and the problem, with exit status 2
(``--debug`` shows the traceback); nothing is written for a stack that failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from ._version import __version__
from .errors import InputError, SpinecountError

EXIT_INPUT = 2


def _voxel_arg(p: argparse.ArgumentParser):
    p.add_argument("--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"),
                   help="voxel size in micrometres; overrides the file's metadata")


def _classifier_arg(p: argparse.ArgumentParser):
    from .params import DEFAULT_CLASSIFIER, RULES

    p.add_argument("--classifier", default=DEFAULT_CLASSIFIER,
                   help=f"what chooses the spines: a built-in model (default: "
                        f"{DEFAULT_CLASSIFIER}), a file of spinecount train, or {RULES} (the "
                        f"detector's rules alone)")


def _cmd_detect(args) -> int:
    from .params import DetectionParams, load_params

    params = load_params(args.params) if args.params else DetectionParams()
    from .results import detect_to_folder

    stack, det, wall = detect_to_folder(
        args.stack, args.output, params, command="detect", channel=args.channel,
        voxel_size=args.voxel_size, timepoint=args.timepoint, traces=args.traces,
        progress=not args.quiet, chunk_um=args.chunk_um, classifier=args.classifier)
    total_len = float(det.dendrites["length_um"].sum())
    density = f"{len(det.spines) / total_len:.3f} spines/um" if total_len else "no density"
    print(f"{stack.name}: {len(det.spines)} spines on {len(det.dendrites)} dendrites "
          f"({total_len:.1f} um, {density}) in {wall:.1f} s")
    print(f"results: {Path(args.output)}")
    return 0


def _cmd_train(args) -> int:
    from .classifier import train_classifier
    from .errors import InputError
    from .io import read_stack
    from .params import DetectionParams, load_params
    from .tables import read_centerlines, read_spines

    lines = args.centerlines or []
    if len(args.spines) != len(args.stack) or (lines and len(lines) != len(args.stack)):
        raise InputError(f"{len(args.stack)} --stack, {len(args.spines)} --spines and "
                         f"{len(lines)} --centerlines given",
                         hint="give one --spines (and one --centerlines, or none) per --stack")
    params = load_params(args.params) if args.params else DetectionParams()
    examples = ((read_stack(f, channel=args.channel, voxel_size=args.voxel_size),
                 read_spines(s), read_centerlines(c) if c else None)
                for f, s, c in zip(args.stack, args.spines, lines or [None] * len(args.stack)))
    clf = train_classifier(examples, params=params, compare_at=args.compare_at,
                           progress=not args.quiet)
    clf.save(args.output)
    print(f"classifier trained on {clf.trained_on['peaks']} peaks "
          f"({clf.trained_on['spines']} spines) of {len(args.stack)} stack(s): {args.output}")
    return 0


def _cmd_track(args) -> int:
    import pandas as pd

    from .errors import InputError
    from .io import read_stack
    from .results import CANDIDATES_FILE, CENTERLINES_FILE, input_info
    from .tables import read_centerlines, read_spines
    from .timelapse import (AUTOMATIC_TURNOVER_CAVEAT, prefer_reviewed, spines_source, track,
                            write_tracks)

    n = len(args.spines)
    if n < 2:
        raise InputError("give at least two spine tables (one per session, in order)")
    for opt, given in (("--stacks", args.stacks), ("--centerlines", args.centerlines)):
        if given and len(given) != n:
            raise InputError(f"{opt} needs one file per spine table ({n}), got {len(given)}")
    tables = [read_spines(path) for path in args.spines]  # reviewed ones keep `status`
    segments = ["segment_id" in pd.read_csv(path, nrows=0).columns for path in args.spines]
    if args.centerlines:
        cls = [read_centerlines(c) for c in args.centerlines]
    else:  # a result folder's spines come with its centre lines
        beside = [Path(path).with_name(CENTERLINES_FILE) for path in args.spines]
        cls = [read_centerlines(c) for c in beside] if all(c.exists() for c in beside) else None
    # a result folder's automatic spines come with the detector's candidates
    cands = [Path(path).with_name(CANDIDATES_FILE) for path in args.spines]
    cands = None if args.no_rescue else [read_spines(c) if c.exists() else None for c in cands]
    stacks = [read_stack(f, channel=args.channel, voxel_size=args.voxel_size)
              for f in args.stacks] if args.stacks else None
    # annotation tables (MapManager) name the same dendrite by the same segment_id
    auto, regs = track(tables, stacks=stacks, centerlines=cls, gate_um=args.gate,
                       same_dendrite_ids=all(segments), candidates=cands)
    tracks, source = prefer_reviewed(auto, args.output)
    sources = [spines_source(t) for t in tables]
    info = {"command": "track", "spines": [str(Path(f).resolve()) for f in args.spines],
            "spines_sources": sources, "links": source,
            "gate_um": args.gate, "rescued": int(auto["rescued"].sum()),
            "centerlines": "given" if args.centerlines else (
                "beside the spine tables" if cls else "none"),
            "inputs": [{**input_info(s), "voxel_size_um": s.voxel_size}
                       for s in stacks] if stacks else [],
            "spinecount_version": __version__}
    paths = write_tracks(args.output, auto, regs, info, used=tracks)
    fates = tracks.drop_duplicates("track_id")["fate"].value_counts()
    print(f"{len(tracks)} spines in {tracks['track_id'].nunique()} tracks over {n} sessions: "
          + ", ".join(f"{fates.get(f, 0)} {f}" for f in ("stable", "formed", "eliminated",
                                                          "transient")))
    for i, r in enumerate(regs[1:], start=1):
        print(f"  session {i} -> 0: shift (z, y, x) "
              f"{', '.join(f'{v:+.2f}' for v in r.shift_um)} um")
    print(f"tracks: {paths['tracks']}")
    unreviewed = [i for i, src in enumerate(sources) if src == "automatic"]
    bare = [i for i in unreviewed if cands is not None and cands[i] is None]
    if bare:
        print(f"note: no {CANDIDATES_FILE} beside the automatic spines of session(s) "
              f"{', '.join(map(str, bare))} (detect them again with this version): spines "
              "missed there by a narrow margin were not looked for")
    if unreviewed:
        print(f"note: the spines of session(s) {', '.join(map(str, unreviewed))} are automatic "
              f"detections; {AUTOMATIC_TURNOVER_CAVEAT}")
    return 0


def _cmd_synth(args) -> int:
    from .synthetic import make_stack, write_synthetic

    syn = make_stack(shape_um=tuple(args.shape_um), voxel_size=tuple(args.voxel_size),
                     n_dendrites=args.dendrites, spine_density=args.density,
                     peak_photons=args.photons, seed=args.seed)
    paths = write_synthetic(syn, args.output)
    print(f"{paths['stack']}: {len(syn.spines)} spines on {len(syn.dendrites)} dendrites "
          f"(truth: {paths['spines'].name}, {paths['dendrites'].name}, "
          f"{paths['centerlines'].name})")
    return 0


def _cmd_evaluate(args) -> int:
    from .evaluate import evaluate
    from .results import CENTERLINES_FILE
    from .tables import read_centerlines, read_spines

    pred, gt = read_spines(args.pred), read_spines(args.gt)
    cl = read_centerlines(args.centerlines) if args.centerlines else None
    found = args.detected_centerlines
    if found is None and cl is not None and "dendrite_id" in pred:  # a result folder's own
        found = Path(args.pred).with_name(CENTERLINES_FILE)
        found = found if found.exists() else None
    ev = evaluate(pred, gt, lateral_tol=args.lateral_tol, axial_tol=args.axial_tol,
                  centerlines=cl, tube_lateral_um=args.tube_lateral,
                  tube_axial_um=args.tube_axial, pred_point=args.pred_point.replace("-", "_"),
                  pred_centerlines=None if found is None or cl is None
                  else read_centerlines(found))
    s = ev.summary
    lo, hi = s["f1_ci95"]
    print(f"precision {s['precision']:.3f}  recall {s['recall']:.3f}  F1 {s['f1']:.3f} "
          f"(95% CI {lo:.2f} to {hi:.2f})  (matched {s['true_positives']}, predicted "
          f"{s['n_pred']}, annotated {s['n_gt']})")
    if len(ev.per_dendrite):
        print(ev.per_dendrite.round(3).to_string(index=False))
    if args.output:
        paths = ev.write(args.output)
        print(f"results: {paths['matched'].parent}")
    if args.json:
        print(json.dumps(s))
    return 0


def _score_real_sample(samples: Path, out: Path, params) -> None:
    """Detect spines in the bundled real crop and score them against the human annotation."""
    from .evaluate import evaluate
    from .results import detect_to_folder
    from .tables import read_centerlines, read_spines

    name = "rr30a_s0_crop"
    if not (samples / f"{name}.tif").exists():
        raise InputError("bundled sample stacks not found", path=samples,
                         hint="run from the spinecount checkout or pass --samples FOLDER")
    _, det, _ = detect_to_folder(samples / f"{name}.tif", out / name, params, command="demo")
    # the annotator clicked near the distal edge of each head (sample_stacks/README.md)
    ev = evaluate(det.spines, read_spines(samples / f"{name}_spines.csv"),
                  centerlines=read_centerlines(samples / f"{name}_backbone.csv"),
                  pred_point="distal_edge")
    ev.write(out / name / "evaluation")
    s = ev.summary
    print(f"real sample {name}: {len(det.spines)} spines; against the human annotation "
          f"(at the distal edge of each head, where the annotator clicked): precision "
          f"{s['precision']:.2f}, recall {s['recall']:.2f}, F1 {s['f1']:.2f} (95% CI "
          f"{s['f1_ci95'][0]:.2f} to {s['f1_ci95'][1]:.2f})")


def _cmd_demo(args) -> int:
    """Make a synthetic experiment with planted densities, run it, and compare."""
    import pandas as pd

    from .experiment import run_experiment
    from .params import DetectionParams
    from .samples import sample_dir
    from .synthetic import make_experiment

    out = Path(args.output)
    manifest = out / "data" / "manifest.csv"
    if not manifest.exists():
        print(f"writing a synthetic experiment to {manifest.parent} ...")
        make_experiment(manifest.parent, workers=args.workers)
    res = run_experiment(manifest, out / "results", workers=args.workers,
                         progress=not args.quiet)
    planted = pd.read_csv(manifest).groupby("condition")["planted_density_per_um"].mean()
    print("condition: planted -> measured density (spines/um, mean +- SEM over animals)")
    for _, c in res.conditions.iterrows():
        p = planted.get(c["condition"], float("nan"))
        m = c["density_per_um_mean"]
        print(f"  {c['condition']}: {p:.3f} -> {m:.3f} +- {c['density_per_um_sem']:.3f} "
              f"({m / p - 1:+.1%}), {c['n_animals']} animals")
    for _, r in res.stats[res.stats["measure"] == "density_per_um"].iterrows():
        print(f"  {r['contrast']}: {r['estimate']:+.3f} /um "
              f"(95% CI {r['ci_low']:+.3f} to {r['ci_high']:+.3f}), p_adj {r['p_adj']:.2g}")
    if not args.no_real:
        _score_real_sample(Path(args.samples) if args.samples else sample_dir(),
                           out / "real_sample", DetectionParams())
    print(f"report: {res.report.resolve()}")
    return 0 if res.ok else 1


def _cmd_check(args) -> int:
    from .manifest import check_manifest, read_manifest

    df = read_manifest(args.manifest)
    problems = check_manifest(df, read_images=not args.quick, progress=not args.quiet)
    if problems:
        for p in problems:
            print(f"{args.manifest}: {p}")
        print(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in "
              f"{args.manifest}; fix them and check again", file=sys.stderr)
        return EXIT_INPUT
    print(f"{args.manifest}: {len(df)} stacks, {df['animal'].nunique()} animals, "
          f"conditions {', '.join(dict.fromkeys(df['condition']))}: ready to run")
    return 0


def _cmd_run(args) -> int:
    from .experiment import run_experiment
    from .params import DetectionParams, load_params
    from .report import unreviewed_turnover_note

    params = load_params(args.params) if args.params else DetectionParams()
    res = run_experiment(args.manifest, args.output, params=params, workers=args.workers,
                         scheduler=args.scheduler, reference=args.reference,
                         min_length_um=args.min_length, progress=not args.quiet,
                         classifier=args.classifier)
    n = len(res.failures)
    print(f"{res.n_computed} stacks analysed, {res.n_cached} reused from an earlier run, "
          f"{n} failed" + (f" (see {res.outdir / 'failures.csv'})" if n else ""))
    if res.warnings:
        print(f"{len(res.warnings)} stack(s) gave warnings (see {res.report}): "
              + ", ".join(res.warnings))
    if len(res.turnover):
        print(f"time-lapse: {res.turnover['field'].nunique()} field(s) tracked over sessions "
              f"(see {res.outdir / 'turnover.csv'})")
        note = unreviewed_turnover_note(res.turnover)
        if note:
            print(f"note: {note}")
    print(f"report: {res.report}")
    return 0 if res.ok else 1


def build_parser() -> argparse.ArgumentParser:
    from .params import MIN_LENGTH_UM

    parser = argparse.ArgumentParser(
        prog="spinecount",
        description="Count and measure dendritic spines in two-photon stacks. "
                    "All lengths are in micrometres.")
    parser.add_argument("--version", action="version", version=f"spinecount {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("detect", help="trace dendrites and detect spines in one stack")
    p.add_argument("stack", help="TIFF stack (ImageJ, OME, ScanImage or plain)")
    p.add_argument("-o", "--output", required=True, help="result folder")
    _voxel_arg(p)
    p.add_argument("--channel", type=int, help="channel index in a multi-channel file")
    p.add_argument("--timepoint", type=int, help="time point in a file with a time axis")
    p.add_argument("--params", help="JSON file of detection parameters (a run.json works)")
    p.add_argument("--traces", help="analyse these dendrites (SWC or CSV in um) instead of "
                                    "tracing them")
    p.add_argument("--chunk-um", type=float, help="process in overlapping lateral chunks of "
                   "this size (um); same result (default: automatic for large stacks)")
    _classifier_arg(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_detect)

    p = sub.add_parser("train", help="train a classifier that chooses spines among the "
                                      "detector's peaks, from annotated or reviewed stacks")
    p.add_argument("--stack", action="append", required=True,
                   help="a stack (repeat for each; one --spines per --stack, in order)")
    p.add_argument("--spines", action="append", required=True,
                   help="its spines CSV in um (annotated, or a reviewed spines.csv)")
    p.add_argument("--centerlines", action="append",
                   help="its annotated dendrites (CSV: dendrite_id, z_um, y_um, x_um): only "
                        "peaks near them are used (give one per --stack, or none: every "
                        "spine of the field is annotated)")
    p.add_argument("--compare-at", choices=("head", "distal_edge"), default="head",
                   help="where the annotation was clicked: the head's centre (default) or "
                        "its distal edge")
    p.add_argument("-o", "--output", required=True, help="classifier file to write (JSON)")
    _voxel_arg(p)
    p.add_argument("--channel", type=int, help="channel index in multi-channel files")
    p.add_argument("--params", help="JSON file of detection parameters (a run.json works)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("demo", help="run a synthetic experiment (control, chronic stress, "
                                     "ketamine) and the bundled real sample")
    p.add_argument("output", nargs="?", default="spinecount-demo", help="result folder")
    p.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    p.add_argument("--samples", help="folder of the sample stacks (default: the bundled ones)")
    p.add_argument("--no-real", action="store_true", help="skip the bundled real sample")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("check", help="check an experiment table (manifest) before a run")
    p.add_argument("manifest", help="CSV or YAML: path, animal, condition, ...")
    p.add_argument("--quick", action="store_true", help="do not open the stacks")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("run", help="analyse every stack of an experiment table")
    p.add_argument("manifest", help="CSV or YAML: path, animal, condition, ...")
    p.add_argument("-o", "--output", required=True, help="result folder (reused by later runs)")
    p.add_argument("--workers", type=int,
                   help="local worker processes (default: one per core; 0: no cluster)")
    p.add_argument("--scheduler", help="address of a running dask scheduler, "
                                       "e.g. tcp://10.0.0.5:8786")
    p.add_argument("--params", help="JSON file of detection parameters (a run.json works)")
    p.add_argument("--reference", help="reference condition (default: control)")
    _classifier_arg(p)
    p.add_argument("--min-length", type=float, default=MIN_LENGTH_UM,
                   help=f"shortest dendrite (um) in the statistics "
                        f"(default {MIN_LENGTH_UM:g})")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("synth", help="write a synthetic stack with known truth")
    p.add_argument("output", help="output TIFF; truth CSVs are written beside it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape-um", nargs=3, type=float, default=(16, 40, 40),
                   metavar=("Z", "Y", "X"), help="size of the volume (um)")
    p.add_argument("--voxel-size", nargs=3, type=float, default=(1.0, 0.12, 0.12),
                   metavar=("Z", "Y", "X"), help="voxel size (um)")
    p.add_argument("--dendrites", type=int, default=2, help="main dendrites")
    p.add_argument("--density", type=float, default=0.5, help="spines per um of dendrite")
    p.add_argument("--photons", type=float, default=40.0,
                   help="photons at a shaft centre (lower = noisier)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("track", help="follow spines across imaging sessions of one field")
    p.add_argument("--spines", nargs="+", required=True, metavar="CSV",
                   help="spine tables in session order (automatic, reviewed or annotations)")
    p.add_argument("--stacks", nargs="+", metavar="TIF",
                   help="the sessions' stacks, for registration (one per table)")
    p.add_argument("--centerlines", nargs="+", metavar="CSV",
                   help="dendrite centre lines per session (default: centerlines.csv beside "
                        "each table, when all have one)")
    p.add_argument("--gate", type=float, default=2.0,
                   help="largest distance (um) between a spine's registered positions")
    p.add_argument("--no-rescue", action="store_true",
                   help="do not look among the detector's candidates (candidates.csv beside "
                        "an automatic table) for spines missed in one session")
    p.add_argument("--channel", type=int, help="channel of multi-channel stacks")
    _voxel_arg(p)
    p.add_argument("-o", "--output", required=True, help="output folder (tracks.csv ...)")
    p.set_defaults(func=_cmd_track)

    p = sub.add_parser("evaluate", help="score detected spines against annotated spines")
    p.add_argument("pred", help="detected spines CSV")
    p.add_argument("gt", help="annotated (or synthetic truth) spines CSV")
    p.add_argument("--centerlines", help="score only near these centre lines (CSV in um)")
    p.add_argument("--detected-centerlines",
                   help="the detected dendrites' centre lines (default: centerlines.csv beside "
                        "PRED, if there is one): with --centerlines, also the length of the "
                        "detected dendrites along each annotated one and their spine density")
    p.add_argument("--lateral-tol", type=float, default=1.0, help="xy tolerance (um)")
    p.add_argument("--axial-tol", type=float, default=2.0, help="z tolerance (um)")
    p.add_argument("--tube-lateral", type=float, default=4.0, help="tube radius in xy (um)")
    p.add_argument("--tube-axial", type=float, default=5.0, help="tube half-height in z (um)")
    p.add_argument("--pred-point", choices=["head", "distal-edge"], default="head",
                   help="compare the annotation with each detected spine's head centre, or with "
                        "the edge of its head furthest from the dendrite (where MapManager "
                        "users click)")
    p.add_argument("-o", "--output", help="folder for matched.csv, per_dendrite.csv, "
                                          "evaluation.json")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")
    p.set_defaults(func=_cmd_evaluate)
    return parser


_HERE = str(Path(__file__).resolve().parent)
_python_format = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None):
    """spinecount's own warnings as one line each, without the code that raised them."""
    if str(filename).startswith(_HERE):
        return f"spinecount: warning: {message}\n"
    return _python_format(message, category, filename, lineno, line)


def main(argv=None) -> int:
    warnings.formatwarning = _format_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except SpinecountError as exc:
        if args.debug:
            raise
        print(f"spinecount: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("spinecount: interrupted; nothing was written for the unfinished stack",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
