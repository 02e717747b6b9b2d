"""Benchmark the detector on synthetic stacks at several voxel sizes and noise levels.

Prints per case: precision, recall, F1, total dendrite length against the truth, the fraction
of matched spines whose type is right, how measured head diameters of matched spines compare
with the true ones (median relative error, correlation), and the median relative error of their
total lengths.

    python benchmarks/detect_synthetic.py [--seeds 3]
"""

import argparse
import time

import numpy as np

from spinecount.detection import detect
from spinecount.evaluate import evaluate
from spinecount.synthetic import make_stack

CASES = [  # voxel size (z, y, x) um, photons at a shaft centre
    ((1.0, 0.12, 0.12), 40), ((1.0, 0.12, 0.12), 15), ((0.5, 0.08, 0.08), 40),
    ((2.0, 0.25, 0.25), 40), ((0.3, 0.05, 0.05), 40),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args()
    for vs, photons in CASES:
        f1, p, r, lerr, tacc, secs, sizes = [], [], [], [], [], [], []
        for seed in range(a.seeds):
            syn = make_stack(voxel_size=vs, peak_photons=photons, seed=seed)
            t = time.perf_counter()
            det = detect(syn.stack)
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
                sizes.append(np.column_stack([
                    table[c].to_numpy()[tp[i].to_numpy()]
                    for c in ("head_diameter_um", "length_um")
                    for table, i in ((det.spines, "pred_index"), (syn.spines, "gt_index"))]))
        h = np.vstack(sizes)  # measured head, true head, measured length, true length
        print(f"voxel {vs} um, {photons} photons: precision {np.mean(p):.2f} recall "
              f"{np.mean(r):.2f} F1 {np.mean(f1):.2f}; dendrite length error "
              f"{np.mean(lerr):+.1%}; "
              f"type right {np.mean(tacc):.0%}; head diameter error "
              f"{np.median(np.abs(h[:, 0] / h[:, 1] - 1)):.0%} (median), r = "
              f"{np.corrcoef(h[:, 0], h[:, 1])[0, 1]:.2f}; spine length error "
              f"{np.median(np.abs(h[:, 2] / h[:, 3] - 1)):.0%}; {np.mean(secs):.1f} s/stack")


if __name__ == "__main__":
    main()
