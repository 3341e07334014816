#!/usr/bin/env python3
"""Compare two run directories file by file: byte for byte, except that wall-clock times (JSON keys starting
with `wall_`, a samples file's meta line `wall_s`, metrics.csv's `wall_*` columns) are removed first, and the
`.sha256` beside a file holding wall times is not compared (it hashes them). Locks are ignored.

    python3 scripts/compare-runs.py runs/a runs/b     # exit 0 and "identical: N files" when they agree

Used to check that a change of code leaves a run's results as they were (a refactoring, a resumed run).
Needs the `zstandard` package for samples files (pip install zstandard).
"""

import csv
import io
import json
import sys
from pathlib import Path


def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if not k.startswith("wall_")}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v


def normal(path: Path):
    """The file's content with wall times removed, or its bytes."""
    data = path.read_bytes()
    name = path.name
    if name.endswith(".jsonl.zst"):
        import zstandard

        text = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read().decode()
        return [strip(json.loads(line)) for line in text.splitlines()]
    if name.endswith(".json"):
        return strip(json.loads(data))
    if name.endswith(".jsonl"):
        return [strip(json.loads(line)) for line in data.decode().splitlines()]
    if name == "metrics.csv":
        rows = list(csv.reader(io.StringIO(data.decode())))
        keep = [i for i, h in enumerate(rows[0]) if not h.startswith("wall_")]
        return [[r[i] for i in keep] for r in rows]
    return data


def holds_wall_times(path: Path) -> bool:
    return path.name.endswith((".json", ".jsonl", ".jsonl.zst")) or path.name == "metrics.csv"


def files(root: Path):
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and p.name != "lock":
            out[str(p.relative_to(root))] = p
    return out


def main(a: Path, b: Path) -> int:
    fa, fb = files(a), files(b)
    bad = []
    for rel in sorted(set(fa) | set(fb)):
        if rel not in fa or rel not in fb:
            bad.append(f"only in {a if rel in fa else b}: {rel}")
            continue
        if rel.endswith(".sha256") and holds_wall_times(Path(rel[: -len(".sha256")])):
            continue
        if normal(fa[rel]) != normal(fb[rel]):
            bad.append(f"differs: {rel}")
    for line in bad:
        print(line)
    if bad:
        print(f"{len(bad)} of {len(set(fa) | set(fb))} files differ")
        return 1
    print(f"identical: {len(fa)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
