"""Damage a log file where only SQLite's integrity check looks."""

from __future__ import annotations

from pathlib import Path


def damage_record_page(db: Path, marker: bytes) -> int:
    """Overwrite with garbage the page holding `marker` (bytes found in one event's record):
    a leaf of the events table. The relay's start-up counts read the dedup index and the
    table's last page only, so this damage is found by the integrity check alone. The WAL
    must be checkpointed (the relay stopped cleanly). Returns the page number."""
    data = db.read_bytes()
    page_size = int.from_bytes(data[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    page = data.index(marker) // page_size
    assert 0 < page < len(data) // page_size - 1, "the marker is not in a middle page"
    with open(db, "r+b") as f:
        f.seek(page * page_size)
        f.write(b"\xde\xad\xbe\xef" * (page_size // 4))
    return page
