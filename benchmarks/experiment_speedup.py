"""Speed-up of the demo experiment on 2 local workers over 1 (goal: at least 1.7x on 2 cores).

Writes the demo's synthetic experiment (24 stacks) once, then runs it into fresh output folders
with 1 and with 2 worker processes, each run in a fresh Python process (as a user's
``spinecount run`` would be: nothing imported or compiled beforehand), and prints wall times
(cluster start-up and aggregation included), their parts (``timings_s`` of the run's
experiment.json: setup, that is checking and hashing the inputs and starting the cluster; the
stacks; the aggregation; the report is the rest), and the speed-up per round and its median,
of the whole run and of the stacks alone.

    python benchmarks/experiment_speedup.py [--folder /tmp/spinecount-speedup] [--rounds 3]
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def one_run(manifest: Path, out: Path, workers: int) -> dict:
    from spinecount.experiment import run_experiment

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    run_experiment(manifest, out, workers=workers, progress=False)
    took = {"wall": time.perf_counter() - t}
    took.update(json.loads((out / "experiment.json").read_text())["timings_s"])
    return took


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default="/tmp/spinecount-speedup")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, help=argparse.SUPPRESS)  # one run (child process)
    a = ap.parse_args()
    folder = Path(a.folder)
    manifest = folder / "data" / "manifest.csv"
    if a.workers is not None:
        print(json.dumps(one_run(manifest, folder / f"out{a.workers}", a.workers)))
        return
    if not manifest.exists():
        from spinecount.synthetic import make_experiment

        make_experiment(manifest.parent)
    ratios, stack_ratios = [], []
    for r in range(a.rounds):
        took = {}
        for workers in (1, 2):
            out = subprocess.run([sys.executable, __file__, "--folder", str(folder),
                                  "--workers", str(workers)],
                                 check=True, capture_output=True, text=True).stdout
            took[workers] = json.loads(out.splitlines()[-1])
        ratios.append(took[1]["wall"] / took[2]["wall"])
        stack_ratios.append(took[1]["stacks"] / took[2]["stacks"])
        parts = {w: f"{t['wall']:.1f} s (setup {t['setup']:.1f}, stacks {t['stacks']:.1f}, "
                    f"aggregation {t['aggregation']:.1f})" for w, t in took.items()}
        print(f"round {r + 1}: 1 worker {parts[1]}, 2 workers {parts[2]}; speed-up "
              f"{ratios[-1]:.2f}x, the stacks alone {stack_ratios[-1]:.2f}x", flush=True)
    print(f"speed-up 2 over 1 worker: median {statistics.median(ratios):.2f}x "
          f"(range {min(ratios):.2f}-{max(ratios):.2f}; goal >= 1.7x); the stacks alone "
          f"{statistics.median(stack_ratios):.2f}x ({min(stack_ratios):.2f}-"
          f"{max(stack_ratios):.2f})")


if __name__ == "__main__":
    main()
