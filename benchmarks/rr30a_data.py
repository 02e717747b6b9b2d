"""The annotated rr30a sessions present in a data folder (shared by the benchmark scripts)."""

import re
from pathlib import Path


def annotated_sessions(data: Path) -> list[int]:
    """Numbers N of the sessions with a stack, spines and backbone (``rr30a_sN*``), sorted."""
    found = (re.fullmatch(r"rr30a_s(\d+)\.tif", p.name) for p in Path(data).glob("rr30a_s*.tif"))
    return sorted(int(m[1]) for m in found if m and all(
        (Path(data) / f"rr30a_s{m[1]}_{k}.csv").exists() for k in ("spines", "backbone")))
