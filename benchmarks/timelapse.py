"""Benchmark time-lapse tracking: real sessions of ../shared/data/rr30a and synthetic truth.

Prints:

1. rr30a, the annotated spines linked by spinecount (positions from the annotation tables,
   registration from the stacks; the annotator's spine_id is the truth): the fraction of true
   persistent pairs linked correctly (goal >= 95%), wrong links, and spines wrongly called
   formed or lost; the registration residual of persistent spines.
2. rr30a, the detector's own spines (inside the tube around the annotated backbones, 4 um
   laterally, 5 um axially) linked across the sessions, with the detector's candidates (as
   spinecount links automatic results) and without: formation and elimination rates against
   the annotated rates (goal: within 5 percentage points), and what the spines called formed
   or lost are by the annotation.
3. Synthetic time-lapses (3 sessions, planted formation and elimination) linked from their true
   positions (goal: rates within 3 percentage points) and from the detector's spines (with and
   without its candidates).

    python benchmarks/timelapse.py [--data ../shared/data/rr30a] [--sessions 0 1 ...]
                                   [--out /tmp/spinecount-tl] [--seeds 3]
                                   [--classifier rr30a|rules|FILE]

The real sessions are, by default, every annotated session in the data folder, linked in order
and reported per interval.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from spinecount.classifier import load_classifier
from spinecount.params import DEFAULT_CLASSIFIER

HERE = Path(__file__).resolve().parent


def annotated(data: Path, sessions, regs):
    """Link the annotated spines of all sessions; per interval, print how the links compare with
    the annotator's spine_id and return the true (formation, elimination)."""
    from spinecount.tables import POSITION, read_spines
    from spinecount.timelapse import link

    tables = [read_spines(data / f"rr30a_s{s}_spines.csv") for s in sessions]
    tr = link(tables, registrations=regs)
    print(f"1. rr30a annotated spines, sessions {' -> '.join(map(str, sessions))}")
    true_rates = []
    for i in range(len(sessions) - 1):
        a, b = tables[i], tables[i + 1]
        ta, tb = tr[tr.session == i], tr[tr.session == i + 1]
        own = dict(zip(ta.track_id, ta.spine_id))
        linked = {(own[t], s) for t, s in zip(tb.track_id, tb.spine_id) if t in own}
        persistent = set(a.spine_id) & set(b.spine_id)
        right = sum(x == y for x, y in linked)
        lost = ta.loc[~ta.track_id.isin(tb.track_id), "spine_id"]
        new = tb.loc[~tb.track_id.isin(ta.track_id), "spine_id"]
        lost_true, new_true = len(set(a.spine_id) - persistent), len(set(b.spine_id) - persistent)
        # registration residual of persistent spines
        m = a.merge(b, on="spine_id", suffixes=("_a", "_b"))
        res = (regs[i].transform(m[[p + "_a" for p in POSITION]].to_numpy())
               - regs[i + 1].transform(m[[p + "_b" for p in POSITION]].to_numpy()))
        lat = np.hypot(res[:, 1], res[:, 2])
        print(f"   session {sessions[i]} -> {sessions[i + 1]}: registration: shift "
              f"{np.round(regs[i + 1].shift_um, 2).tolist()} um to the first; persistent "
              f"spines land within 1 um laterally: {np.mean(lat < 1):.0%} (median "
              f"{np.median(lat):.2f} um), within 2 um in z: {np.mean(np.abs(res[:, 0]) < 2):.0%}")
        print(f"   persistent pairs linked correctly: {right}/{len(persistent)} = "
              f"{right / len(persistent):.1%} (goal >= 95%); wrong links: {len(linked) - right}")
        print(f"   called lost: {len(lost)} (true {lost_true}; {lost.isin(persistent).sum()} of "
              f"them persist), called formed: {len(new)} (true {new_true}; "
              f"{new.isin(persistent).sum()} of them persist)")
        true_rates.append((new_true / len(a), lost_true / len(a)))
    return true_rates


def detected(data: Path, sessions, stacks, regs, out: Path, true_rates, classifier):
    from spinecount.detection import detect
    from spinecount.evaluate import evaluate, in_tube
    from spinecount.results import write_result
    from spinecount.review import load_candidates, load_result
    from spinecount.tables import POSITION, read_centerlines, read_spines
    from spinecount.timelapse import link, turnover

    tables, cands, cls, tubes = [], [], [], []
    for s, stack in zip(sessions, stacks):
        folder = out / f"rr30a_s{s}"  # written for inspection, detected afresh every run
        t = time.perf_counter()
        write_result(folder, detect(stack, classifier=classifier), {})
        print(f"   (detected session {s} in {time.perf_counter() - t:.0f} s)")
        spines, _, cl, _ = load_result(folder)
        tables.append(spines)
        cands.append(load_candidates(folder))
        cls.append(cl)
        tubes.append(read_centerlines(data / f"rr30a_s{s}_backbone.csv"))
    annotated = [read_spines(data / f"rr30a_s{s}_spines.csv") for s in sessions]
    print("2. rr30a detector's spines inside the annotated tube (goal: within 5 pp)")
    for label, c in (("with its candidates", cands), ("spines alone", None)):
        tr = link(tables, registrations=regs, centerlines=cls, candidates=c)
        inside = np.zeros(len(tr), bool)
        for i, tube in enumerate(tubes):
            m = (tr.session == i).to_numpy()
            inside[m] = in_tube(tr.loc[m, POSITION].to_numpy(float), tube,
                                lateral_radius=4.0, axial_radius=5.0)
        # a track counts when it is inside the tube in the session(s) it was seen in
        tr = tr[pd.Series(inside).groupby(tr["track_id"]).transform("all").to_numpy()]
        # the annotated spine each tracked spine is (-1: none), compared at the distal edge
        tr = tr.assign(spine=-1)
        for i in range(len(sessions)):
            m = tr.session == i
            own = pd.concat([tables[i], cands[i]], ignore_index=True).iloc[tr.loc[m, "row"]]
            hit = evaluate(own, annotated[i], pred_point="distal_edge").matched.query(
                "status == 'tp'")
            ids = np.full(m.sum(), -1)
            ids[hit["pred_index"]] = annotated[i]["spine_id"].to_numpy()[hit["gt_index"]]
            tr.loc[m, "spine"] = ids
        rows = turnover(tr).query("dendrite == 'all'").reset_index(drop=True)
        for (fo, el), (_, r) in zip(true_rates, rows.iterrows()):
            a, b = (tr[tr.session == r[k]] for k in ("session_from", "session_to"))
            f, e = r["formation"], r["elimination"]
            print(f"   {label}, session {sessions[r['session_from']]} -> "
                  f"{sessions[r['session_to']]}: formation {f:.1%} (annotated {fo:.1%}, error "
                  f"{100 * (f - fo):+.1f} pp), elimination {e:.1%} (annotated {el:.1%}, error "
                  f"{100 * (e - el):+.1f} pp); {r['n_from']} spines at the earlier session "
                  f"({a['rescued'].sum()} of them candidates)")
            for what, x, y, other in (("formed", b, a, annotated[r["session_from"]]),
                                      ("lost", a, b, annotated[r["session_to"]])):
                called = x[~x.track_id.isin(y.track_id)]
                kinds = np.select(
                    [called.spine < 0, ~called.spine.isin(other.spine_id),
                     called.spine.isin(y.spine)],
                    ["not annotated", "truly " + what, "annotated in both, not linked"],
                    "annotated in both, missed in the other")
                print(f"      called {what}: {len(called)} = " + ", ".join(
                    f"{n} {k}" for k, n in pd.Series(kinds).value_counts().items()))


def synthetic(seeds, classifier):
    from spinecount.detection import detect
    from spinecount.registration import register_sessions
    from spinecount.synthetic import make_timelapse
    from spinecount.timelapse import link, turnover

    print("3. synthetic time-lapses, 3 sessions, 16 x 60 x 60 um, planted formation 15% and "
          "elimination 20% per interval")
    largest = {}
    for seed in seeds:
        tl = make_timelapse(n_sessions=3, formation=0.15, elimination=0.2,
                            shape_um=(16, 60, 60), n_dendrites=3, seed=seed)
        stacks = [s.stack for s in tl.sessions]
        regs = register_sessions(stacks)
        err = max(np.abs(r.shift_um + sh).max() for r, sh in zip(regs, tl.shifts_um))
        truth = [s.spines.drop(columns=["track_id"]) for s in tl.sessions]
        dets = [detect(s, classifier=classifier) for s in stacks]
        cases = (
                ("true positions", truth, [s.centerlines for s in tl.sessions], None),
                ("detected with candidates", *([d.spines for d in dets],
                                               [d.centerlines for d in dets],
                                               [d.candidates for d in dets])),
                ("detected alone", [d.spines for d in dets], [d.centerlines for d in dets],
                 None))
        for name, tables, cls, cands in cases:
            tr = link(tables, registrations=regs, centerlines=cls, candidates=cands)
            got = turnover(tr).query("dendrite == 'all'").reset_index(drop=True)
            dif = [100 * (got.loc[i, k] - tl.planted.loc[i, k])
                   for i in range(len(got)) for k in ("formation", "elimination")]
            print(f"   seed {seed}, {name}: formation "
                  f"{', '.join(f'{v:.1%}' for v in got['formation'])} (planted "
                  f"{', '.join(f'{v:.1%}' for v in tl.planted['formation'])}), elimination "
                  f"{', '.join(f'{v:.1%}' for v in got['elimination'])} (planted "
                  f"{', '.join(f'{v:.1%}' for v in tl.planted['elimination'])}); largest error "
                  f"{max(np.abs(dif)):.1f} pp; registration error {err:.2f} um")
            largest.setdefault(name, []).append(max(np.abs(dif)))
    print("   mean largest error over the seeds: " + ", ".join(
        f"{name} {np.mean(v):.1f} pp" for name, v in largest.items()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared/data/rr30a"))
    ap.add_argument("--out", default="/tmp/spinecount-tl", help="where the detections go")
    ap.add_argument("--sessions", nargs="+", type=int,
                    help="session numbers N, in order (default: every annotated session in "
                         "--data)")
    ap.add_argument("--no-real", action="store_true")
    ap.add_argument("--seeds", type=int, default=3, help="synthetic time-lapses (0: none)")
    ap.add_argument("--classifier", default=DEFAULT_CLASSIFIER,
                    help="what chooses the spines (a built-in model, a file, or rules; as "
                         "`spinecount detect --classifier`)")
    a = ap.parse_args()
    data = Path(a.data)
    classifier = load_classifier(a.classifier)[0]
    print(f"spines chosen by {a.classifier}")
    if not a.no_real:
        from rr30a_data import annotated_sessions
        from spinecount.io import read_stack
        from spinecount.registration import register_sessions

        sessions = a.sessions or annotated_sessions(data)
        if len(sessions) < 2:
            raise SystemExit(f"need at least two annotated sessions in {data} (or --no-real)")
        stacks = [read_stack(data / f"rr30a_s{s}.tif") for s in sessions]
        t = time.perf_counter()
        regs = register_sessions(stacks)
        print(f"(registration {time.perf_counter() - t:.1f} s)")
        true_rates = annotated(data, sessions, regs)
        detected(data, sessions, stacks, regs, Path(a.out), true_rates, classifier)
    if a.seeds:
        synthetic(range(a.seeds), classifier)


if __name__ == "__main__":
    main()
