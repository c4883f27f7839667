"""Loads the named queries of queries.sql: `Q["insert_event"]`."""

from __future__ import annotations

import re
from importlib import resources


def named(package: str, filename: str) -> dict[str, str]:
    """The statements of an SQL file of `package` by name: `-- name: <name>` starts one, the
    comment lines of its body (why it is so) are left out, as is the final `;`."""
    text = resources.files(package).joinpath(filename).read_text("utf-8")
    queries: dict[str, str] = {}
    for chunk in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = chunk.partition("\n")
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        queries[name.strip()] = "\n".join(lines).strip().rstrip(";")
    return queries


Q = named("relay.queue", "queries.sql")
