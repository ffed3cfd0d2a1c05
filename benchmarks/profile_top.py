#!/usr/bin/env python3
"""Summarise a py-spy ``--format raw`` (collapsed stacks) profile: self and inclusive time.

    .venv/bin/py-spy record --pid PID -d 10 -r 200 -f raw -o /tmp/x.raw
    python3 benchmarks/profile_top.py /tmp/x.raw [--lines] [-n 25]

``--lines`` keeps the line numbers (where in a function the time goes); by default frames are
grouped per function. Standard library only.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::(?P<line>\d+))?\)$")


def short(frame: str, lines: bool) -> str:
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    where = f"{path}:{m['line']}" if lines and m["line"] else path
    return f"{m['func']} ({where})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("--lines", action="store_true")
    ap.add_argument("-n", type=int, default=25)
    args = ap.parse_args()
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    with open(args.raw) as f:
        for row in f:
            stack, _, count = row.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            frames = [short(x, args.lines) for x in stack.split(";")]
            total += n
            self_t[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
    print(f"{total} samples")
    print("\nself time:")
    for fr, n in self_t.most_common(args.n):
        print(f"{100 * n / total:5.1f}%  {fr}")
    print("\ninclusive time:")
    for fr, n in incl.most_common(args.n):
        print(f"{100 * n / total:5.1f}%  {fr}")


if __name__ == "__main__":
    main()
