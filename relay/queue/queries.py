"""Loads the named queries of queries.sql: `Q["insert_event"]`."""

from __future__ import annotations

import re
from importlib import resources


def _load() -> dict[str, str]:
    text = resources.files("relay.queue").joinpath("queries.sql").read_text("utf-8")
    queries: dict[str, str] = {}
    for chunk in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = chunk.partition("\n")
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        queries[name.strip()] = "\n".join(lines).strip().rstrip(";")
    return queries


Q = _load()
