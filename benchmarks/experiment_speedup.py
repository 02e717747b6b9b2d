"""Speed-up of the demo experiment on 2 local workers over 1 (goal: at least 1.7x on 2 cores).

Writes the demo's synthetic experiment (24 stacks) once, then runs it into fresh output folders
with 1 and with 2 worker processes, and prints wall times (cluster start-up included).

    python benchmarks/experiment_speedup.py [--folder /tmp/spinecount-speedup]
"""

import argparse
import shutil
import time
from pathlib import Path

from spinecount.experiment import run_experiment
from spinecount.synthetic import make_experiment


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default="/tmp/spinecount-speedup")
    a = ap.parse_args()
    folder = Path(a.folder)
    manifest = folder / "data" / "manifest.csv"
    if not manifest.exists():
        make_experiment(manifest.parent)
    times = {}
    for workers in (1, 2):
        out = folder / f"out{workers}"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        res = run_experiment(manifest, out, workers=workers, progress=False)
        times[workers] = time.perf_counter() - t
        print(f"{workers} worker(s): {times[workers]:.1f} s for {res.n_computed} stacks")
    print(f"speed-up 2 over 1 worker: {times[1] / times[2]:.2f}x (goal >= 1.7x)")


if __name__ == "__main__":
    main()
