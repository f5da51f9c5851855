"""Where the reference data (GPU profiles, traces) lives.

The data is not shipped in the package (see ../shared/data/README.md). It is found, in order, at
``$LLMSCHED_DATA``, at ``<project root>/../shared/data`` and at ``./../shared/data``.
"""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class DataNotFound(FileNotFoundError):
    pass


def data_dir(required: bool = True) -> Path | None:
    """The reference-data folder, or None (``required=False``) when absent."""
    candidates = []
    if os.environ.get("LLMSCHED_DATA"):
        candidates.append(Path(os.environ["LLMSCHED_DATA"]))
    candidates += [PROJECT_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if (c / "profiles").is_dir():
            return c
    if required:
        raise DataNotFound(
            "reference data not found (looked in: " + ", ".join(str(c) for c in candidates) +
            "); set LLMSCHED_DATA to the folder holding profiles/ and traces/")
    return None


def trace_path(name: str) -> Path:
    """Resolve a trace by file path or by its name in the data folder (with or without .csv)."""
    p = Path(name)
    if p.exists():
        return p
    d = data_dir(required=False)
    if d is not None:
        for cand in (d / "traces" / name, d / "traces" / f"{name}.csv"):
            if cand.exists():
                return cand
    raise FileNotFoundError(f"trace not found: {name!r}; give a CSV path or a name from "
                            f"{(d / 'traces') if d else '../shared/data/traces'}")
