"""Coverage-guided fuzzing of the dialect parser with atheris (libFuzzer), seeded with every
sender fixture: `python -m bench.fuzz_parse -atheris_runs=200000` (libFuzzer flags pass
through). Fails on anything but a Parsed or an Unparseable, and on a record that is not a
slice of the body. The CI suite runs the hypothesis equivalent (tests/unit/test_events.py,
tests/faults/test_hostile_input.py); this is the longer, coverage-guided search.

Needs `pip install atheris` (a dev tool, not a dependency of the relay)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from relay.events import Parsed, Unparseable, parse_body

HEADER_SETS = ({}, {"ce-specversion": "1.0", "ce-type": "com.amazonaws.ObjectCreated:Put",
                    "ce-source": "ceph:s3.zg.bucket", "ce-subject": "k"})  # fmt: skip


def one(data: bytes) -> None:
    headers = HEADER_SETS[data[0] & 1] if data else {}
    try:
        parsed = parse_body(data[1:], headers, "fuzz")
    except Unparseable:
        return
    assert isinstance(parsed, Parsed)
    for event in parsed.events:
        assert event.record in data or event.record == b"{}", "record is not a slice of the body"
        assert event.event_id and event.event_name.startswith("s3:")


def main() -> None:
    corpus = Path(tempfile.mkdtemp(prefix="relay-fuzz-"))
    fixtures = Path(__file__).parents[1] / "tests" / "fixtures"
    for n, path in enumerate(sorted(fixtures.rglob("*.json*"))):
        (corpus / f"seed-{n}").write_bytes(b"\0" + path.read_bytes())
    atheris.Setup([sys.argv[0], str(corpus), *sys.argv[1:]], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
