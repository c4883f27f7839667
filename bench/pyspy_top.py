"""Summarise a py-spy profile of `relay serve`: share of samples per thread, then the top
frames by self time and by inclusive time.

    py-spy record -p <relay pid> -d 10 -r 200 --threads -f raw -o /tmp/relay.txt
    python -m bench.pyspy_top /tmp/relay.txt [--top 30]

The relay's pid is in <data dir>/relay.pid; run the load (bench.ingest, bench.drain …) while
py-spy records. py-spy is not a project dependency (`pip install py-spy` anywhere).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_PREFIX = re.compile(r" \((/.*?/)?(site-packages/|lib/python3\.\d+/)?")


def _frame(text: str) -> str:
    return _PREFIX.sub(" (", text)


def summarise(path: Path, top: int) -> str:
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        threads[frames[0]] += n
        own[_frame(frames[-1])] += n
        for name in {_frame(f) for f in frames[1:]}:
            inclusive[name] += n
    if not total:
        return "no samples"
    out = [f"{total} samples"]
    out += [f"{100 * n / total:5.1f}%  {t}" for t, n in threads.most_common()]
    out.append("-- self")
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    out.append("-- inclusive")
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("profile", type=Path, help="py-spy record -f raw output")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    print(summarise(args.profile, args.top))


if __name__ == "__main__":
    main()
