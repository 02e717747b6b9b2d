"""Time and peak memory of detection on a large stack (200 x 2048 x 2048), processed in chunks.

The stack is built from the real session 0 of rr30a (../shared/data/rr30a): mirrored copies
side by side laterally and stacked in z, so it has real two-photon texture everywhere. Prints
the wall time per stage, the number of spines and dendrites, and the peak resident memory.

    python benchmarks/large_stack.py [--data ../shared/data/rr30a] [--chunk-um 64]
"""

import argparse
import dataclasses
import resource
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main():
    from spinecount.detection import detect
    from spinecount.io import read_stack

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared/data/rr30a"))
    ap.add_argument("--chunk-um", type=float, default=None,
                    help="chunk size (default: automatic, 64 um for a stack this large)")
    a = ap.parse_args()
    s0 = read_stack(Path(a.data) / "rr30a_s0.tif")
    d = s0.data
    big = np.empty((200, 2 * d.shape[1], 2 * d.shape[2]), d.dtype)
    z = np.concatenate([d, d[::-1], d])[:200]
    for iy in range(2):
        for ix in range(2):
            tile = z[:, ::-1] if iy else z
            big[:, iy * d.shape[1]:(iy + 1) * d.shape[1],
                ix * d.shape[2]:(ix + 1) * d.shape[2]] = tile[:, :, ::-1] if ix else tile
    del z, d
    stack = dataclasses.replace(s0, data=big)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"stack {big.shape} {big.dtype}, {big.nbytes / 1e9:.2f} GB; "
          f"peak memory before detection {base:.0f} MB")
    t = time.perf_counter()
    det = detect(stack, chunk_um=a.chunk_um)
    print(f"detection {time.perf_counter() - t:.0f} s {det.timings}; {len(det.spines)} spines on "
          f"{len(det.dendrites)} dendrites; peak memory "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
