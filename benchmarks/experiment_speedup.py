"""Speed-up of the demo experiment on 2 local workers over 1 (goal: at least 1.7x on 2 cores).

Writes the demo's synthetic experiment (24 stacks) once, then runs it into fresh output folders
with 1 and with 2 worker processes, each run in a fresh Python process (as a user's
``spinecount run`` would be: nothing imported or compiled beforehand), and prints wall times
(cluster start-up and aggregation included) and the speed-up per round and its median.

    python benchmarks/experiment_speedup.py [--folder /tmp/spinecount-speedup] [--rounds 3]
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def one_run(manifest: Path, out: Path, workers: int) -> float:
    from spinecount.experiment import run_experiment

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    run_experiment(manifest, out, workers=workers, progress=False)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default="/tmp/spinecount-speedup")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, help=argparse.SUPPRESS)  # one run (child process)
    a = ap.parse_args()
    folder = Path(a.folder)
    manifest = folder / "data" / "manifest.csv"
    if a.workers is not None:
        print(one_run(manifest, folder / f"out{a.workers}", a.workers))
        return
    if not manifest.exists():
        from spinecount.synthetic import make_experiment

        make_experiment(manifest.parent)
    ratios = []
    for r in range(a.rounds):
        times = {}
        for workers in (1, 2):
            out = subprocess.run([sys.executable, __file__, "--folder", str(folder),
                                  "--workers", str(workers)],
                                 check=True, capture_output=True, text=True).stdout
            times[workers] = float(out.split()[-1])
        ratios.append(times[1] / times[2])
        print(f"round {r + 1}: 1 worker {times[1]:.1f} s, 2 workers {times[2]:.1f} s, "
              f"speed-up {ratios[-1]:.2f}x", flush=True)
    print(f"speed-up 2 over 1 worker: median {statistics.median(ratios):.2f}x "
          f"(range {min(ratios):.2f}-{max(ratios):.2f}; goal >= 1.7x)")


if __name__ == "__main__":
    main()
