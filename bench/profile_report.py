"""Summarise py-spy collapsed stacks (``--format raw``): the share of samples spent in
each function, inclusive (anywhere on the stack) and self (at the top of it).

Run: ``python -m bench.profile_report FILE [--top N] [--under FUNCTION]``; ``--under``
keeps only the stacks passing through a function (e.g. ``_process``).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# "name (path/to/file.py:123)" -> "name (file.py)"; line numbers split one function up
_FRAME = re.compile(r"^(?P<name>.*?) \((?P<path>[^:()]*)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    return f"{m['name']} ({Path(m['path']).name})"


def file_of(frame: str) -> str:
    m = _FRAME.match(frame)
    return Path(m["path"]).name if m else frame


def summarise(
    path: Path, under: str | None = None, by_file: bool = False
) -> tuple[int, Counter[str], Counter[str]]:
    """(samples, inclusive and self samples per function, or per file with ``by_file``)."""
    total = 0
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    name = file_of if by_file else frame_name
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [name(f) for f in stack.split(";")]
        if under and not any(under in f for f in stack.split(";")):
            continue
        n = int(count)
        total += n
        for f in set(frames):
            inclusive[f] += n
        own[frames[-1]] += n
    return total, inclusive, own


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file", type=Path)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--under", help="only stacks through this function")
    p.add_argument("--by-file", action="store_true", help="per source file, not function")
    args = p.parse_args()
    total, inclusive, own = summarise(args.file, args.under, args.by_file)
    print(f"{total} samples")
    print("inclusive:")
    for name, n in inclusive.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("self:")
    for name, n in own.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
