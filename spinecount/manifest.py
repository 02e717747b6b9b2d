"""The experiment table (manifest): one row per stack, with its animal and condition.

A manifest is a CSV (or TSV, or YAML: a list of rows, or ``{"stacks": [...]}``) with the columns

========================  ==========================================================================
``path``                  the stack, relative to the manifest (required)
``animal``                animal identifier; the unit of the statistics (required)
``condition``             free text such as control, chronic stress, ketamine (required)
``cell``                  cell or field of view (optional)
``session``               imaging day (optional)
``voxel_size_z/y/x``      voxel size in um, when the file does not say or says it wrong (optional)
``channel``               channel index of the cell fill in multi-channel files (optional)
``traces``                SWC or CSV of dendrites to analyse instead of automatic tracing (optional)
========================  ==========================================================================

Any other column is metadata and is carried through to every output table.
:func:`check_manifest` lists every problem of a manifest at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError

REQUIRED = ("path", "animal", "condition")
VOXEL_COLUMNS = ("voxel_size_z", "voxel_size_y", "voxel_size_x")
OPTIONAL = ("cell", "session", *VOXEL_COLUMNS, "channel", "traces")
#: Columns that spinecount adds to a manifest it has read (never written by the user).
INTERNAL = ("stack", "file", "traces_file", "sha256", "traces_sha256")


@dataclass(frozen=True)
class Problem:
    """One problem found in a manifest: where (row of the table, 1 = first stack) and what."""

    message: str
    row: int | None = None
    column: str | None = None

    def __str__(self):
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column:
            where.append(f"column {self.column}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class ManifestError(InputError):
    """A manifest with problems; ``problems`` lists all of them."""

    def __init__(self, path, problems: list[Problem]):
        self.problems = problems
        n = len(problems)
        super().__init__(f"{n} problem{'s' if n > 1 else ''} in the experiment table: "
                         + "; ".join(map(str, problems)), path=path,
                         hint="run `spinecount check` on it for the full list")


def _normalise_label(s: str) -> str:
    return re.sub(r"\s+", " ", str(s)).strip().casefold()


def stack_name(relpath: str) -> str:
    """A readable, file-system-safe name for a stack, unique within a manifest.

    >>> stack_name("mouse 1/day0/field_a.tif")
    'mouse_1__day0__field_a'
    """
    p = Path(str(relpath))
    parts = [*p.parent.parts, p.name.split(".")[0]] if p.parent != Path(".") else [
        p.name.split(".")[0]]
    parts = [re.sub(r"[^A-Za-z0-9_.-]+", "_", q) for q in parts if q not in ("", ".", "/")]
    return "__".join(q.replace("..", "up") for q in parts) or "stack"


def read_manifest(path) -> pd.DataFrame:
    """Read a manifest into a DataFrame of strings, without judging its content.

    Adds ``file`` (the stack's absolute path), ``traces_file`` (absolute, or empty) and ``stack``
    (a unique readable name used for the result folder). Raises :class:`InputError` only when the
    table itself cannot be read.

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> with open(os.path.join(d, "m.csv"), "w") as f:
    ...     _ = f.write("path,animal,condition\\na.tif,m1,control\\n")
    >>> read_manifest(os.path.join(d, "m.csv"))[["stack", "animal", "condition"]]
      stack animal condition
    0     a     m1   control
    """
    path = Path(path)
    if not path.exists():
        raise InputError("experiment table not found", path=path)
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            doc = yaml.safe_load(path.read_text())
            if isinstance(doc, dict):
                doc = doc.get("stacks", doc.get("rows"))
            if not isinstance(doc, list) or not all(isinstance(r, dict) for r in doc):
                raise InputError("YAML manifest must be a list of rows (or {stacks: [...]})",
                                 path=path)
            df = pd.DataFrame(doc, dtype=object)
        else:
            sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
            df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, comment=None)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read the experiment table ({type(exc).__name__}: {exc})",
                         path=path, hint="save it as CSV with a header row") from None
    df.columns = [str(c).strip() for c in df.columns]
    df = df.astype(object).where(df.notna(), "")
    df = df.map(lambda v: str(v).strip())
    if df.empty:
        raise InputError("experiment table has no rows", path=path,
                         hint="add one row per stack: path, animal, condition")
    base = path.resolve().parent
    rel = df["path"] if "path" in df else pd.Series([""] * len(df))
    df["file"] = [str((base / p).resolve()) if p else "" for p in rel]
    tr = df["traces"] if "traces" in df else pd.Series([""] * len(df))
    df["traces_file"] = [str((base / p).resolve()) if p else "" for p in tr]
    names = [stack_name(p) if p else f"row{i + 1}" for i, p in enumerate(rel)]
    seen: dict[str, int] = {}
    for i, n in enumerate(names):  # keep names unique: a, a-2, a-3
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            names[i] = f"{n}-{seen[n]}"
    df["stack"] = names
    df.attrs["source"] = str(path)
    return df


def row_voxel_size(row) -> tuple[float, float, float] | None:
    """The manifest's voxel size for a row (None when the columns are empty)."""
    vals = [str(row.get(c, "")).strip() for c in VOXEL_COLUMNS]
    if not any(vals):
        return None
    return tuple(float(v) for v in vals)


def row_channel(row) -> int | None:
    v = str(row.get("channel", "")).strip()
    return int(float(v)) if v else None


def file_hashes(files, *, progress: bool = False) -> dict[str, str]:
    """sha256 of every existing file (each once)."""
    from tqdm.auto import tqdm

    from .io import file_sha256

    out = {}
    for f in tqdm(sorted(set(files)), desc="hashing", unit="file", disable=not progress,
                  leave=False):
        if f and Path(f).is_file():
            out[f] = file_sha256(f)
    return out


def check_manifest(manifest, *, read_images: bool = True, progress: bool = False,
                   hashes: dict[str, str] | None = None) -> list[Problem]:
    """Every problem of a manifest, at once (an empty list when it is ready to run).

    Checks the columns, that every stack exists and can be read with a known voxel size
    (reading each image when ``read_images``), the channel and traces columns, the same stack
    listed twice (by path or by content), condition labels that differ only by case or spaces,
    and an animal listed under two conditions.

    Parameters
    ----------
    manifest : path or DataFrame
        The table, or what :func:`read_manifest` returned.
    read_images : bool
        Open every stack (slow on big experiments but catches corrupt files).
    progress : bool
        Show a progress bar while reading the stacks.
    hashes : dict, optional
        sha256 of the files (from :func:`file_hashes`), where the caller already has them.
    """
    from tqdm.auto import tqdm

    df = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest)
    problems: list[Problem] = []
    missing = [c for c in REQUIRED if c not in df]
    if missing:
        problems.append(Problem(f"missing column{'s' if len(missing) > 1 else ''} "
                                f"{', '.join(missing)} (required: {', '.join(REQUIRED)})"))
    for c in ("animal", "condition", "path"):
        if c in df:
            for i in np.flatnonzero(df[c].to_numpy() == ""):
                problems.append(Problem(f"empty {c}", row=int(i) + 1, column=c))
    given_vs = {}
    if any(c in df for c in VOXEL_COLUMNS):
        for i, row in df.iterrows():
            try:
                vs = row_voxel_size(row)
                if vs is not None and not all(np.isfinite(v) and v > 0 for v in vs):
                    raise ValueError
                given_vs[i] = vs
            except ValueError:
                problems.append(Problem("voxel_size_z/y/x must be three positive numbers in um "
                                        "(or all empty to use the file's)", row=i + 1,
                                        column="voxel_size"))
                given_vs[i] = None
    channels = {}
    if "channel" in df:
        for i, row in df.iterrows():
            try:
                channels[i] = row_channel(row)
                if channels[i] is not None and channels[i] < 0:
                    raise ValueError
            except ValueError:
                problems.append(Problem(f"channel {row['channel']!r} is not a channel index "
                                        "(0, 1, ...)", row=i + 1, column="channel"))
                channels[i] = None
    if "traces" in df:
        from .traces import read_traces

        for i, row in df.iterrows():
            if row["traces_file"]:
                try:
                    read_traces(row["traces_file"])
                except InputError as exc:
                    problems.append(Problem(str(exc), row=i + 1, column="traces"))
    if "path" in df:
        dup = df["file"].duplicated(keep="first") & (df["file"] != "")
        for i in np.flatnonzero(dup):
            first = int(np.flatnonzero(df["file"] == df["file"].iloc[i])[0]) + 1
            problems.append(Problem(f"the same stack as row {first} ({df['path'].iloc[i]})",
                                    row=int(i) + 1, column="path"))
        rows = [(i, r) for i, r in df.iterrows() if r["path"] and not dup.iloc[i]]
        for i, row in tqdm(rows, desc="checking stacks", unit="stack", disable=not progress,
                           leave=False):
            f = Path(row["file"])
            if not f.exists():
                problems.append(Problem(f"file not found: {row['path']}", row=i + 1,
                                        column="path"))
            elif read_images:
                from .io import read_stack

                try:
                    read_stack(f, channel=channels.get(i), voxel_size=given_vs.get(i))
                except InputError as exc:
                    problems.append(Problem(str(exc), row=i + 1, column="path"))
        if hashes is None:
            hashes = file_hashes([r["file"] for _, r in rows])
        by_hash: dict[str, int] = {}
        for i, row in rows:
            h = hashes.get(row["file"])
            if h is None:
                continue
            if h in by_hash:
                problems.append(Problem(f"same content as row {by_hash[h] + 1} "
                                        f"({row['path']} is a copy of "
                                        f"{df['path'].iloc[by_hash[h]]})", row=i + 1,
                                        column="path"))
            else:
                by_hash[h] = i
    if "condition" in df:
        labels = df.loc[df["condition"] != "", "condition"]
        for _, variants in labels.groupby(labels.map(_normalise_label)):
            forms = sorted(set(variants))
            if len(forms) > 1:
                problems.append(Problem("condition labels differ only by case or spaces: "
                                        + ", ".join(repr(f) for f in forms)
                                        + "; write them the same way", column="condition"))
    if "animal" in df and "condition" in df:
        ok = df[(df["animal"] != "") & (df["condition"] != "")]
        for animal, g in ok.groupby("animal"):
            conds = sorted(set(g["condition"].map(_normalise_label)))
            if len(conds) > 1:
                problems.append(Problem(
                    f"animal {animal!r} is listed under {len(conds)} conditions "
                    f"({', '.join(sorted(set(g['condition'])))}); each animal belongs to one "
                    "condition", column="animal"))
    return sorted(problems, key=lambda p: (p.row is None, p.row or 0))


def load_manifest(path, *, read_images: bool = False, progress: bool = False) -> pd.DataFrame:
    """Read and check a manifest; raise :class:`ManifestError` listing every problem.

    Adds ``sha256`` and ``traces_sha256`` (each file is hashed once, for the duplicate check
    and for the cache keys of a run).
    """
    df = read_manifest(path)
    hashes = file_hashes([*df["file"], *df["traces_file"]], progress=progress)
    problems = check_manifest(df, read_images=read_images, hashes=hashes)
    if problems:
        raise ManifestError(path, problems)
    df["sha256"] = [hashes.get(f) for f in df["file"]]
    df["traces_sha256"] = [hashes.get(f) for f in df["traces_file"]]
    return df
