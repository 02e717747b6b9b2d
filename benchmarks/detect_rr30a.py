"""Benchmark the detector on the real annotated sessions in ../shared/data/rr30a.

Prints per session: precision, recall and F1 inside a tube around the annotated backbones (4 um
laterally, 5 um axially; one-to-one matching within 1.0 um laterally and 2.0 um axially), with
each detected spine compared at the edge of its head furthest from the dendrite (``spinecount
evaluate --pred-point distal-edge``: the annotator clicked near the distal edge of each head,
see the data's README) and, for comparison, at its head centre; the same counting only the
spines of detected dendrites that run along the traced ones
(``spines_along``: spines of dendrites crossing the tube were never annotated); per
traced segment, the length of the detected dendrites that run along it against its traced length
and the density of their spines against the annotated density (``match_dendrites``; the density
of all detected spines in the segment's tube, crossing dendrites' included, in brackets); what
lies near each missed spine and the recall of short and long spines (``misses``); time
per stage, for the stack read and detected in a fresh process and again for the same stack
detected a second time (as every stack after the first of a batch is: importing skan and
loading spinecount's compiled code, about 2 s of work, fall on the first stack of a process
only), and peak
memory; and, for how the result depends on the size of the field, the
same scoring in smaller fields (61 um, 512 x 512 pixels, overlapping by half) cut from the
stack: detected in the smaller field alone, against the whole field's detection there; and, for
how it depends on the sampling and the signal, the same stack made coarser or dimmer
(``resampled``): lateral pixels binned 2 x 2 (0.24 um), every second slice only (2 um steps),
16-bit grey values (x 16 plus an offset of 200), and a quarter of the signal with its Poisson
noise (grey values taken as photon counts); the stack's detection and its maximum
projection's (one plane), both scored in the image plane (``projected``); and, for how far a
single F1 can be trusted, the
same stack moved by one pixel or mirrored (``moved_or_mirrored``), with the spread of the four
F1s and how far each detection agrees with the stack's own (the F1 of one against the
other). Where there are two sessions or more, it then runs the real part of
``benchmarks/timelapse.py`` (``--seeds 0``): the detector's formation and elimination against
the annotated rates, which every change to the detector moves too.

    python benchmarks/detect_rr30a.py [--data ../shared/data/rr30a] [--sessions 0 1 ...]
                                      [--classifier rr30a|rules|FILE]

The spines are chosen as the detector chooses them by default, with the built-in classifier,
whose training data these sessions are (``classifier_rr30a.py`` scores it on dendrites it did
not see); ``--classifier rules`` scores the rules alone.

By default every annotated session in the data folder (``rr30a_sN.tif`` with
``rr30a_sN_spines.csv`` and ``rr30a_sN_backbone.csv``).
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from spinecount.params import DEFAULT_CLASSIFIER

HERE = Path(__file__).resolve().parent
#: side of the smaller fields cut from a stack (pixels)
FIELD_PX = 512


def run_one(data: Path, session: int, classifier: str) -> dict:
    from spinecount.classifier import load_classifier
    from spinecount.detection import detect
    from spinecount.evaluate import evaluate, spines_along
    from spinecount.io import read_stack
    from spinecount.tables import read_centerlines, read_spines

    model = load_classifier(classifier)[0]
    t0 = time.perf_counter()
    stack = read_stack(data / f"rr30a_s{session}.tif")
    t_read = time.perf_counter() - t0
    det = detect(stack, classifier=model)
    wall = time.perf_counter() - t0
    t0 = time.perf_counter()  # a later stack of the same process: everything imported
    again = detect(stack, classifier=model).timings
    wall_again = time.perf_counter() - t0
    gt = read_spines(data / f"rr30a_s{session}_spines.csv")
    cl = read_centerlines(data / f"rr30a_s{session}_backbone.csv")
    # per traced segment also the detected dendrites that run along it (crossing ones left
    # out), their length and the density of the spines attached to them
    ev = evaluate(det.spines, gt, centerlines=cl, pred_point="distal_edge",
                  pred_centerlines=det.centerlines)
    centre = evaluate(det.spines, gt, centerlines=cl).summary
    # the same, counting only spines of detected dendrites that run along the traced ones:
    # spines of dendrites that cross the tube were never annotated
    own = evaluate(det.spines[spines_along(det.spines, det.centerlines, cl) >= 0], gt,
                   centerlines=cl, pred_point="distal_edge").summary
    seg = ev.per_dendrite
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"session": session, "summary": ev.summary, "centre": centre, "own": own,
            "segments": seg.round(3).to_dict("list"),
            "timings_s": {"read": round(t_read, 2), **det.timings}, "wall_s": round(wall, 2),
            "again_s": round(wall_again, 2), "again_timings_s": again,
            "n_dendrites": len(det.dendrites), "peak_rss_mb": peak_mb,
            "misses": misses(ev.matched, det.candidates, gt),
            "fields": smaller_fields(stack, det.spines, gt, cl, model),
            "resampled": resampled(stack, gt, cl, model),
            "moved": moved_or_mirrored(stack, det.spines, gt, cl, model),
            "projected": projected(stack, det.spines, gt, cl, model)}


def misses(matched, candidates, gt) -> dict:
    """What lies near each annotated spine the detector missed (``status`` fn of
    ``evaluate(...).matched``, compared at the distal edge), the first that holds of: a false
    detection within 2 um laterally and 2 um axially (the same spine found at another point, or
    a bump on the shaft found instead of it), a detection matched to another annotated spine
    that near (two spines close together, one detection), a candidate (``candidates.csv``)
    within the matching distances, nothing; and the recall by how far each annotated head lies
    from its annotated base in the image plane (short spines are missed most)."""
    import numpy as np

    from spinecount.evaluate import (AXIAL_TOL_UM, LATERAL_TOL_UM, _pairs_within, distal_edge,
                                     match_points)
    from spinecount.tables import POSITION

    def near(points, others, lateral, axial):
        hit = np.zeros(len(points), bool)
        hit[_pairs_within(points, others, lateral, axial)[:, 0]] = True
        return hit

    def at(status, who):
        return matched.loc[matched["status"] == status,
                           [f"{who}_{c}" for c in POSITION]].to_numpy(float)

    fn = at("fn", "gt")
    kinds = {"a false detection within 2 um": near(fn, at("fp", "pred"), 2.0, 2.0),
             "next to a detection matched to another": near(fn, at("tp", "pred"), 2.0, 2.0),
             "a candidate matches": np.zeros(len(fn), bool)}
    if len(candidates) and len(fn):
        pairs = match_points(distal_edge(candidates), fn, lateral_tol=LATERAL_TOL_UM,
                             axial_tol=AXIAL_TOL_UM)
        kinds["a candidate matches"][pairs[:, 1]] = True
    left = np.ones(len(fn), bool)
    counts = {}
    for name, hit in kinds.items():
        counts[name] = int((hit & left).sum())
        left &= ~hit
    counts["nothing within 2 um"] = int(left.sum())
    scored = matched[matched["status"] != "fp"]
    g = gt.iloc[scored["gt_index"].to_numpy(int)]
    reach = np.hypot(*(g[["y_um", "x_um"]].to_numpy(float)
                       - g[["base_y_um", "base_x_um"]].to_numpy(float)).T)
    found = (scored["status"] == "tp").to_numpy()
    bins = {"under 1.5 um": reach < 1.5, "1.5 um or more": reach >= 1.5}
    by_reach = {k: [int(found[b].sum()), int(b.sum())] for k, b in bins.items()}
    return {"kinds": counts, "by_reach": by_reach}


def shifted(table, by, *, mirror: str = ""):
    """A copy of a spines or centre lines table with its positions (and bases) moved by `by`
    (z, y, x um), each axis named in `mirror` ("zyx") first reversed (x -> -x)."""
    table = table.copy()
    for axis, d in zip("zyx", by):
        for c in (f"{axis}_um", f"base_{axis}_um"):
            if c in table:
                table[c] = (-table[c] if axis in mirror else table[c]) + d
    return table


def smaller_fields(stack, spines, gt, cl, model, size: int = FIELD_PX) -> dict:
    """Matched, detected and annotated spines summed over fields of `size` pixels cut from the
    stack (overlapping by half, with at least 10 annotated spines more than 1 um inside), for
    the field's own detection ("alone") and the whole stack's detection in it ("whole")."""
    import dataclasses

    import numpy as np

    from spinecount.detection import detect
    from spinecount.evaluate import evaluate

    _, vy, vx = stack.voxel_size
    sums = {"alone": np.zeros(3, int), "whole": np.zeros(3, int)}
    for y0 in range(0, stack.data.shape[1] - size + 1, size // 2):
        for x0 in range(0, stack.data.shape[2] - size + 1, size // 2):
            lo, hi = np.array([y0 * vy, x0 * vx]), np.array([(y0 + size) * vy, (x0 + size) * vx])

            def moved(t, margin=0.0):  # the table in the field's coordinates, inside it
                t = shifted(t, (0.0, -lo[0], -lo[1]))
                yx = t[["y_um", "x_um"]].to_numpy()
                return t[np.all((yx > margin) & (yx < hi - lo - margin), axis=1)]

            g = moved(gt, 1.0)
            if len(g) < 10:
                continue
            field = dataclasses.replace(stack, data=stack.data[:, y0:y0 + size, x0:x0 + size])
            track = moved(cl, -np.inf)  # all of it
            for name, pred in (("alone", detect(field, classifier=model).spines),
                               ("whole", moved(spines))):
                m = evaluate(pred, g, centerlines=track, pred_point="distal_edge").summary
                sums[name] += [m["true_positives"], m["n_pred"], m["n_gt"]]
    return {k: v.tolist() for k, v in sums.items()}


def variants(stack) -> dict:
    """The stack made coarser or dimmer: name -> (stack, shift of positions detected in it to
    the stack's own frame, um)."""
    import dataclasses

    import numpy as np

    a, (vz, vy, vx) = stack.data, stack.voxel_size
    z, y, x = a.shape
    binned = a[:, :y // 2 * 2, :x // 2 * 2].reshape(z, y // 2, 2, x // 2, 2).mean(axis=(2, 4))
    made = {  # name: (data, voxel size, shift)
        "lateral pixels binned 2 x 2": (binned.astype(np.float32), (vz, 2 * vy, 2 * vx),
                                        (0.0, vy / 2, vx / 2)),  # a bin's centre
        "every second slice": (a[::2], (2 * vz, vy, vx), (0.0, 0.0, 0.0)),
        "16-bit (x 16 + 200)": (a.astype(np.uint16) * 16 + 200, (vz, vy, vx), (0.0, 0.0, 0.0)),
        "a quarter of the signal": (np.random.default_rng(0).poisson(a / 4.0).astype(np.uint8),
                                    (vz, vy, vx), (0.0, 0.0, 0.0)),
    }
    return {name: (dataclasses.replace(stack, data=data, voxel_size=vs), shift)
            for name, (data, vs, shift) in made.items()}


def resampled(stack, gt, cl, model) -> dict:
    """F1, precision and recall (as in the main figure) of the stack made coarser or dimmer."""
    from spinecount.detection import detect
    from spinecount.evaluate import evaluate

    out = {}
    for name, (made, shift) in variants(stack).items():
        sp = shifted(detect(made, classifier=model).spines, shift)
        m = evaluate(sp, gt, centerlines=cl, pred_point="distal_edge").summary
        out[name] = [m["f1"], m["precision"], m["recall"]]
    return out


def projected(stack, spines, gt, cl, model) -> dict:
    """F1, precision and recall of the stack's detection and of its maximum projection's (one
    plane), both scored in the image plane (z left out of the matching and the tube): what a
    lab that counts on projections would get."""
    import dataclasses

    from spinecount.detection import detect
    from spinecount.evaluate import evaluate

    plane = detect(dataclasses.replace(stack, data=stack.data.max(axis=0)[None]),
                   classifier=model).spines
    out = {}
    for name, table in (("the stack", spines), ("its maximum projection", plane)):
        m = evaluate(table, gt, centerlines=cl, axial_tol=float("inf"),
                     tube_axial_um=float("inf"), pred_point="distal_edge").summary
        out[name] = [m["f1"], m["precision"], m["recall"]]
    return out


def moved_or_mirrored(stack, spines, gt, cl, model) -> dict:
    """F1, precision and recall (as in the main figure) of the same stack moved by one pixel
    (its first row and column cut off) or mirrored left to right or top to bottom, with the
    annotations moved alike: nothing a detector should notice, so the spread of these F1s is
    how far a single F1 can be trusted (the working grid's blocks, the skeleton and the
    peaks near the threshold all change a little). Fourth, how far the detection agrees with
    the stack's own, `spines`: the F1 of one against the other over the whole field (matched
    one to one within the same distances), 1 where they find the same spines."""
    import dataclasses

    import numpy as np

    from spinecount.detection import detect
    from spinecount.evaluate import evaluate

    a, (_, vy, vx) = stack.data, stack.voxel_size
    top_y, top_x = (a.shape[1] - 1) * vy, (a.shape[2] - 1) * vx
    variants = {  # name: (data, the annotations and traced lines as they lie in it)
        "moved by one pixel": (a[:, 1:, 1:], lambda t: shifted(t, (0.0, -vy, -vx))),
        "mirrored left to right": (a[:, :, ::-1],
                                   lambda t: shifted(t, (0.0, 0.0, top_x), mirror="x")),
        "mirrored top to bottom": (a[:, ::-1, :],
                                   lambda t: shifted(t, (0.0, top_y, 0.0), mirror="y")),
    }
    out = {}
    for name, (data, move) in variants.items():
        sp = detect(dataclasses.replace(stack, data=np.ascontiguousarray(data)),
                    classifier=model).spines
        m = evaluate(sp, move(gt), centerlines=move(cl), pred_point="distal_edge").summary
        same = evaluate(sp, move(spines)).summary["f1"]
        out[name] = [m["f1"], m["precision"], m["recall"], same]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared/data/rr30a"))
    ap.add_argument("--sessions", nargs="+", type=int,
                    help="session numbers N (default: every annotated session in --data)")
    ap.add_argument("--classifier", default=DEFAULT_CLASSIFIER,
                    help="what chooses the spines (a built-in model, a file, or rules)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    data = Path(a.data)
    if a.one is not None:
        print(json.dumps(run_one(data, a.one, a.classifier)))
        return
    if not data.exists():
        sys.exit(f"data folder {data} not found; pass --data")
    from rr30a_data import annotated_sessions

    sessions = a.sessions or annotated_sessions(data)
    if not sessions:
        sys.exit(f"no annotated sessions (rr30a_sN.tif, _spines.csv, _backbone.csv) in {data}")
    print(f"spines chosen by {a.classifier}" + (
        " (the built-in classifier, trained on these sessions: it has learnt their annotated "
        "spines, so its choice here says nothing of how it chooses elsewhere, and neither do "
        "the F1s, densities and time-lapse rates below; benchmarks/classifier_rr30a.py scores "
        "it on dendrites it was not trained on, and --classifier rules gives the rules' "
        "figures)" if a.classifier == "rr30a" else ""))
    for s in sessions:  # each session in its own process, so peak memory is its own
        out = subprocess.run([sys.executable, __file__, "--data", str(data), "--one", str(s),
                              "--classifier", a.classifier],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        m = r["summary"]
        print(f"session {s}: precision {m['precision']:.3f}  recall {m['recall']:.3f}  "
              f"F1 {m['f1']:.3f} (95% CI {m['f1_ci95'][0]:.2f} to {m['f1_ci95'][1]:.2f})  "
              f"(matched {m['true_positives']}, detected {m['n_pred']}, annotated "
              f"{m['n_gt']}); {r['n_dendrites']} dendrites detected in the field")
        c = r["centre"]
        print(f"  compared at the head centre instead of the distal edge: precision "
              f"{c['precision']:.3f}  recall {c['recall']:.3f}  F1 {c['f1']:.3f}")
        o = r["own"]
        print(f"  only spines of the detected dendrites along the traced ones: precision "
              f"{o['precision']:.3f}  recall {o['recall']:.3f}  F1 {o['f1']:.3f}")
        seg = r["segments"]
        for i, d in enumerate(seg["dendrite_id"]):
            print(f"  segment {d}: density {seg['density_along_per_um'][i]:.3f} vs annotated "
                  f"{seg['density_gt_per_um'][i]:.3f} /um (error "
                  f"{seg['density_along_error'][i]:+.0%}; all spines in the tube: "
                  f"{seg['density_error'][i]:+.0%}); length "
                  f"{seg['matched_length_um'][i]:.1f} vs traced {seg['length_um'][i]:.1f} um "
                  f"(error {seg['length_error'][i]:+.0%})")
        mi = r["misses"]
        print("  the misses: " + ", ".join(f"{k} {n}" for k, n in mi["kinds"].items())
              + "; found by how far the annotated head lies from its base: " + ", ".join(
                  f"{k} {a} of {b}" for k, (a, b) in mi["by_reach"].items()))
        print(f"  time {r['wall_s']:.1f} s {r['timings_s']}; a later stack of the same "
              f"process {r['again_s']:.1f} s {r['again_timings_s']}; "
              f"peak memory {r['peak_rss_mb']:.0f} MB")
        f = {k: f"F1 {2 * tp / (n_pred + n_gt):.3f} (precision {tp / n_pred:.3f}, recall "
                f"{tp / n_gt:.3f})" for k, (tp, n_pred, n_gt) in r["fields"].items()}
        print(f"  in fields of {FIELD_PX} x {FIELD_PX} pixels cut from the stack, pooled: "
              f"detected in the field alone {f['alone']}; the whole stack's detection there "
              f"{f['whole']}")
        print("  the same stack made coarser or dimmer: " + "; ".join(
            f"{k} F1 {f1:.3f} (precision {pr:.3f}, recall {re:.3f})"
            for k, (f1, pr, re) in r["resampled"].items()))
        print("  in the image plane (z left out of the scoring): " + "; ".join(
            f"{k} F1 {f1:.3f} (precision {pr:.3f}, recall {re:.3f})"
            for k, (f1, pr, re) in r["projected"].items()))
        f1s = [m["f1"]] + [v[0] for v in r["moved"].values()]
        print("  the same stack moved or mirrored (nothing a detector should notice): "
              + "; ".join(f"{k} F1 {f1:.3f} (precision {pr:.3f}, recall {re:.3f}; agrees "
                          f"with the stack's own detection at F1 {same:.3f})"
                          for k, (f1, pr, re, same) in r["moved"].items())
              + f"; F1 over the four {min(f1s):.3f}-{max(f1s):.3f}, mean "
                f"{sum(f1s) / len(f1s):.3f}")
    if len(sessions) > 1:
        print("time-lapse (benchmarks/timelapse.py --seeds 0):", flush=True)
        subprocess.run([sys.executable, str(HERE / "timelapse.py"), "--data", str(data),
                        "--sessions", *map(str, sessions), "--seeds", "0",
                        "--classifier", a.classifier], check=True)


if __name__ == "__main__":
    main()
