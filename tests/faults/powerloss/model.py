"""Build the undo shim and apply its journal: every watched file goes back to what it held
at its last fsync, as after a power cut."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

HERE = Path(__file__).parent


def build(out_dir: Path) -> Path:
    library = out_dir / "undo.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-o", str(library), str(HERE / "undo.c"), "-ldl",
         "-lpthread"],
        check=True,
    )  # fmt: skip
    return library


def _records(journal: Path) -> list[tuple[str, str, int, int, bytes]]:
    data = journal.read_bytes() if journal.exists() else b""
    records, at = [], 0
    while at < len(data):
        kind = chr(data[at])
        try:
            (plen,) = struct.unpack_from("<I", data, at + 1)
            path = data[at + 5 : at + 5 + plen].decode()
            at += 5 + plen
            offset, old_size, saved_len = struct.unpack_from("<QQQ", data, at)
        except (struct.error, UnicodeDecodeError):
            break  # torn at the kill: the write it describes never started
        at += 24
        saved = data[at : at + saved_len]
        at += saved_len
        if len(saved) != saved_len:
            break  # torn at the kill: that write never started
        records.append((kind, path, offset, old_size, saved))
    return records


def power_cut(journal: Path) -> dict[str, int]:
    """Undo every write made after each file's last sync. Returns the syncs seen and the
    writes undone."""
    records = _records(journal)
    last_sync: dict[str, int] = {}
    for index, (kind, path, *_rest) in enumerate(records):
        if kind == "S":
            last_sync[path] = index
    undone = {"syncs": sum(1 for r in records if r[0] == "S"), "undone": 0}
    for index in range(len(records) - 1, -1, -1):
        kind, path, offset, old_size, saved = records[index]
        if kind == "S" or index < last_sync.get(path, -1) or not Path(path).exists():
            continue
        with open(path, "r+b") as f:
            if saved:
                f.seek(offset)
                f.write(saved)
            f.truncate(old_size)
        undone["undone"] += 1
    journal.unlink(missing_ok=True)
    return undone
