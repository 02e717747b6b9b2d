"""Rebuild sample_stacks/ (run from the repo root; the real crop needs ../shared/data/rr30a)."""

from pathlib import Path
import shutil

import numpy as np
import pandas as pd
import tifffile

from spinecount.io import write_imagej
from spinecount.synthetic import make_stack, write_synthetic

OUT = Path("sample_stacks")
SRC = Path("../shared/data/rr30a")
# Crop of session 0 around traced segment 0: z slices, y and x pixels.
Z0, Z1, Y0, Y1, X0, X1 = 20, 40, 150, 310, 330, 1024
VS = (1.0, 0.12, 0.12)

OUT.mkdir(exist_ok=True)
if SRC.exists():
    data = tifffile.imread(SRC / "rr30a_s0.tif")[Z0:Z1, Y0:Y1, X0:X1]
    write_imagej(OUT / "rr30a_s0_crop.tif", np.ascontiguousarray(data), VS, compression="zlib")
    shift = np.array([Z0 * VS[0], Y0 * VS[1], X0 * VS[2]])
    ext = np.array(data.shape) * VS
    sp = pd.read_csv(SRC / "rr30a_s0_spines.csv")
    bb = pd.read_csv(SRC / "rr30a_s0_backbone.csv")
    sp, bb = sp[sp.segment_id == 0].copy(), bb[bb.segment_id == 0].copy()
    for df, cols in ((sp, ["z_um", "y_um", "x_um"]), (sp, ["base_z_um", "base_y_um", "base_x_um"]),
                     (bb, ["z_um", "y_um", "x_um"])):
        df[cols] = (df[cols].to_numpy() - shift).round(3)
    inside = np.all((sp[["z_um", "y_um", "x_um"]].to_numpy() >= 0)
                    & (sp[["z_um", "y_um", "x_um"]].to_numpy() < ext), axis=1)
    sp[inside].to_csv(OUT / "rr30a_s0_crop_spines.csv", index=False)
    bb.to_csv(OUT / "rr30a_s0_crop_backbone.csv", index=False)
    shutil.copy(SRC / "LICENSE", OUT / "LICENSE-rr30a")
    print(f"real crop {data.shape}: {inside.sum()} annotated spines on segment 0")
syn = make_stack(shape_um=(12, 30, 30), n_dendrites=2, seed=7)
write_synthetic(syn, OUT / "synthetic_small.tif")
print(f"synthetic: {len(syn.spines)} spines on {len(syn.dendrites)} dendrites")
