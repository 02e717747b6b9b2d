"""Benchmark the detector on synthetic stacks at several voxel sizes and noise levels.

Prints per case: precision, recall, F1, total dendrite length against the truth, the fraction
of matched spines whose type is right (and the commonest wrong types), how measured head
diameters of matched spines compare with the true ones (median relative error, correlation),
and the median relative error of their total lengths. Then a dendrite beside one 3 and 10
times brighter (the mask's threshold, from the whole stack, is set by the bright one): how much
of the dim dendrite is traced and the F1 of its spines.

The stacks are seeds ``FIRST_SEED`` on, which the built-in classifier (the detector's default
choice of spines) was not trained on (``classifier_rr30a.py`` trains on seeds below it);
``--classifier rules`` scores the rules alone. Ten seeds a case by default: one stack's F1
varies by several hundredths from seed to seed, and three seeds' mean was up to 0.03 from ten
seeds' (session 49); the range over the seeds is printed with the mean.

    python benchmarks/detect_synthetic.py [--seeds 10] [--classifier rr30a|rules|FILE]
"""

import argparse
import time

import numpy as np

from spinecount.classifier import load_classifier
from spinecount.params import DEFAULT_CLASSIFIER
from spinecount.detection import detect
from spinecount.evaluate import evaluate, in_tube
from spinecount.synthetic import make_stack

CASES = [  # voxel size (z, y, x) um, photons at a shaft centre
    ((1.0, 0.12, 0.12), 40), ((1.0, 0.12, 0.12), 15), ((0.5, 0.08, 0.08), 40),
    ((2.0, 0.25, 0.25), 40), ((0.3, 0.05, 0.05), 40), ((1.0, 0.12, 0.12), 100),
]
#: The first seed scored: the built-in classifier is trained on synthetic stacks of lower seeds.
FIRST_SEED = 100


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--classifier", default=DEFAULT_CLASSIFIER,
                    help="what chooses the spines (a built-in model, a file, or rules)")
    a = ap.parse_args()
    model = load_classifier(a.classifier)[0]
    print(f"spines chosen by {a.classifier}; seeds {FIRST_SEED}-{FIRST_SEED + a.seeds - 1}")
    for vs, photons in CASES:
        f1, p, r, lerr, tacc, secs, sizes, wrong = [], [], [], [], [], [], [], []
        for seed in range(FIRST_SEED, FIRST_SEED + a.seeds):
            syn = make_stack(voxel_size=vs, peak_photons=photons, seed=seed)
            t = time.perf_counter()
            det = detect(syn.stack, classifier=model)
            secs.append(time.perf_counter() - t)
            ev = evaluate(det.spines, syn.spines)
            s = ev.summary
            f1.append(s["f1"]), p.append(s["precision"]), r.append(s["recall"])
            lerr.append(det.dendrites["length_um"].sum() / syn.dendrites["length_um"].sum() - 1)
            tp = ev.matched[ev.matched.status == "tp"]
            if len(tp):
                pt = det.spines["type"].to_numpy()[tp["pred_index"].to_numpy()]
                gt = syn.spines["type"].to_numpy()[tp["gt_index"].to_numpy()]
                tacc.append(float(np.mean(pt == gt)))
                wrong += [f"{g} as {q}" for g, q in zip(gt, pt) if g != q]
                sizes.append(np.column_stack([
                    table[c].to_numpy()[tp[i].to_numpy()]
                    for c in ("head_diameter_um", "length_um")
                    for table, i in ((det.spines, "pred_index"), (syn.spines, "gt_index"))]))
        h = np.vstack(sizes)  # measured head, true head, measured length, true length
        print(f"voxel {vs} um, {photons} photons: precision {np.mean(p):.2f} recall "
              f"{np.mean(r):.2f} F1 {np.mean(f1):.3f} (seeds {min(f1):.2f}-{max(f1):.2f}); "
              f"dendrite length error "
              f"{np.mean(lerr):+.1%}; "
              f"type right {np.mean(tacc):.0%} ({commonest(wrong)}); head diameter error "
              f"{np.median(np.abs(h[:, 0] / h[:, 1] - 1)):.0%} (median), r = "
              f"{np.corrcoef(h[:, 0], h[:, 1])[0, 1]:.2f}; spine length error "
              f"{np.median(np.abs(h[:, 2] / h[:, 3] - 1)):.0%}; {np.mean(secs):.1f} s/stack")
    dim_beside_bright(a.seeds + 1, model)


def commonest(wrong: list, n: int = 3) -> str:
    """The `n` commonest type errors ("thin as stubby") with their counts."""
    names, counts = np.unique(wrong, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:n]
    return ", ".join(f"{names[i]} {counts[i]}" for i in order) or "none wrong"


def dim_beside_bright(seeds: int, model) -> None:
    for ratio in (3, 10):
        traced, f1 = [], []
        for seed in range(seeds):
            syn = make_stack(shape_um=(16, 50, 50), n_dendrites=2, branch_probability=0,
                             dendrite_brightness=(1, ratio), seed=seed)
            det = detect(syn.stack, classifier=model)
            dim = syn.centerlines[syn.centerlines["dendrite_id"] == 0]
            traced.append(in_tube(dim[["z_um", "y_um", "x_um"]].to_numpy(), det.centerlines,
                                  lateral_radius=1.0, axial_radius=2.0).mean())
            f1.append(evaluate(det.spines, syn.spines[syn.spines["dendrite_id"] == 0],
                               centerlines=dim).summary["f1"])
        print(f"a dendrite beside one {ratio} times brighter ({seeds} stacks): traced "
              f"{', '.join(f'{t:.0%}' for t in traced)}; F1 of its spines "
              f"{', '.join(f'{f:.2f}' for f in f1)}")


if __name__ == "__main__":
    main()
