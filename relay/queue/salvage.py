"""Reads `events` rows straight from the pages of a damaged database file.

When interior B-tree pages are lost (a truncated file, overwritten pages), SQL cannot reach
the leaf pages that survived. This walks every page, decodes table-leaf cells in SQLite's
record format (https://www.sqlite.org/fileformat.html) and keeps the rows shaped like an
`events` row. A page from the freelist may hold rows already pruned: those come back with
their old seq, at or below the sink cursors, and are not delivered again.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EVENT_COLUMNS = 20  # seq (NULL: the rowid stands in for it) + 19 columns, see schema.sql
_HEX_ID = re.compile(r"^[0-9a-f]{32}$")


def _varint(buf: bytes, at: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        byte = buf[at + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + i + 1
    return (value << 8) | buf[at + 8], at + 9


def _record(payload: bytes) -> list[Any] | None:
    header_size, at = _varint(payload, 0)
    types = []
    while at < header_size:
        serial, at = _varint(payload, at)
        types.append(serial)
    values: list[Any] = []
    at = header_size
    for serial in types:
        if serial == 0:
            values.append(None)
        elif 1 <= serial <= 6:
            size = (1, 2, 3, 4, 6, 8)[serial - 1]
            values.append(int.from_bytes(payload[at : at + size], "big", signed=True))
            at += size
        elif serial == 7:
            values.append(struct.unpack(">d", payload[at : at + 8])[0])
            at += 8
        elif serial in (8, 9):
            values.append(serial - 8)
        elif serial >= 12:
            size = (serial - 12) // 2
            chunk = payload[at : at + size]
            if len(chunk) != size:
                return None
            values.append(bytes(chunk) if serial % 2 == 0 else chunk.decode("utf-8"))
            at += size
        else:
            return None
    return values


def _cells(data: bytes, page_size: int, usable: int, number: int) -> Iterator[tuple[int, bytes]]:
    """(rowid, payload) of each cell of a table-leaf page."""
    start = (number - 1) * page_size
    page = data[start : start + page_size]
    header = 100 if number == 1 else 0
    if len(page) < page_size or page[header] != 0x0D:
        return
    count = struct.unpack_from(">H", page, header + 3)[0]
    for i in range(count):
        (offset,) = struct.unpack_from(">H", page, header + 8 + 2 * i)
        if not 0 < offset < page_size:
            continue
        size, at = _varint(page, offset)
        rowid, at = _varint(page, at)
        local_max = usable - 35
        if size <= local_max:
            yield rowid, page[at : at + size]
            continue
        local_min = (usable - 12) * 32 // 255 - 23
        local = local_min + (size - local_min) % (usable - 4)
        local = local if local <= local_max else local_min
        payload = bytearray(page[at : at + local])
        (overflow,) = struct.unpack_from(">I", page, at + local)
        seen = set()
        while overflow and len(payload) < size and overflow not in seen:
            seen.add(overflow)
            o = (overflow - 1) * page_size
            chunk = data[o : o + page_size]
            if len(chunk) < page_size:
                break
            (overflow,) = struct.unpack_from(">I", chunk, 0)
            payload += chunk[4 : min(usable, 4 + size - len(payload))]
        if len(payload) == size:
            yield rowid, bytes(payload)


def event_rows(path: Path) -> Iterator[tuple[Any, ...]]:
    """Every readable row that has the shape of an `events` row, with its seq filled in."""
    data = path.read_bytes()
    if len(data) < 100 or not data.startswith(b"SQLite format 3\x00"):
        return
    page_size = struct.unpack_from(">H", data, 16)[0]
    page_size = 65536 if page_size == 1 else page_size
    usable = page_size - data[20]
    for number in range(1, len(data) // page_size + 1):
        try:
            for rowid, payload in _cells(data, page_size, usable, number):
                values = _record(payload)
                if values and _is_event(values):
                    values[0] = rowid
                    yield tuple(values)
        except (IndexError, struct.error, UnicodeDecodeError):
            continue  # a damaged page: keep going


def _is_event(values: list[Any]) -> bool:
    return (
        len(values) == EVENT_COLUMNS
        and values[0] is None
        and isinstance(values[1], str)
        and _HEX_ID.match(values[1]) is not None
        and isinstance(values[2], float)
        and all(isinstance(values[i], str) for i in range(3, 8))
        and isinstance(values[19], bytes | str)
    )
