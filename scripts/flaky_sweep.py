"""Run the test suite again and again, with a CPU hog on the other core, and say which tests
ever failed: the races that a quiet machine hides.

    .venv/bin/python scripts/flaky_sweep.py [--runs 20] [--hog/--no-hog] [-- PYTEST ARGS]

Each run is `pytest -p no:cacheprovider -q` (plus the arguments after `--`, e.g. a subset of
tests/); its JUnit XML goes to sweep-results/run-N.xml, and the summary — every test that
failed at least once, how often, and the first line of its failure — to
sweep-results/summary.md and the terminal. The hog is a busy loop per extra core (all but
one), pinned when the machine allows, so the suite runs with one core's worth of CPU free,
as CI does when something else shares the machine. Exit status: 0 when every run passed.

A failure found here is fixed at its cause (wait for a condition, never lengthen a sleep).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "sweep-results"


def _spin(core: int | None) -> None:
    if core is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {core})
        except OSError:
            pass
    while True:
        pass


def start_hog() -> list[multiprocessing.Process]:
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    hogs = []
    for core in cores[1:] or [None]:
        process = multiprocessing.Process(target=_spin, args=(core,), daemon=True)
        process.start()
        hogs.append(process)
    return hogs


def failures(report: Path) -> dict[str, str]:
    """test id → the first line of its failure, from a JUnit XML report."""
    found: dict[str, str] = {}
    if not report.exists():
        return {"(no report: pytest did not finish)": ""}
    for case in ET.parse(report).getroot().iter("testcase"):
        for kind in ("failure", "error"):
            element = case.find(kind)
            if element is not None:
                name = f"{case.get('classname')}::{case.get('name')}"
                message = (element.get("message") or element.text or "").strip()
                found[name] = message.splitlines()[0][:200] if message else kind
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--hog", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    hogs = start_hog() if args.hog else []
    count: Counter[str] = Counter()
    first_seen: dict[str, str] = {}
    clean = 0
    started = time.monotonic()
    try:
        for run in range(1, args.runs + 1):
            report = OUT / f"run-{run}.xml"
            report.unlink(missing_ok=True)
            began = time.monotonic()
            status = subprocess.run(
                [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                 f"--junitxml={report}", *args.pytest_args],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ).returncode  # fmt: skip
            failed = failures(report) if status else {}
            clean += not failed
            for name, message in failed.items():
                count[name] += 1
                first_seen.setdefault(name, message)
            print(f"run {run}/{args.runs}: {'clean' if not failed else f'{len(failed)} failed'}"
                  f" in {time.monotonic() - began:.0f} s", flush=True)  # fmt: skip
    finally:
        for hog in hogs:
            hog.terminate()
    lines = [
        f"# Flaky-test sweep: {args.runs} runs, {clean} clean, "
        f"{'with' if hogs else 'without'} a CPU hog, {time.monotonic() - started:.0f} s",
        "",
        f"pytest arguments: `{' '.join(args.pytest_args) or '(the whole suite)'}`",
        "",
    ]
    if count:
        lines += ["| test | failed in runs | first failure |", "|---|---|---|"]
        lines += [f"| `{name}` | {n} | {first_seen[name]} |" for name, n in count.most_common()]
    else:
        lines.append("No test failed.")
    (OUT / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if clean == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
