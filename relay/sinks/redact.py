"""Secrets out of error text, once for every sink.

Client libraries put what they were given into their errors: a DSN with its password, a URL
with user:password@, a token in a header they echo. Every error a sink reports passes
through its sink's `Redactor` before it is logged, stored with a dead letter, shown by
`relay check` or the admin API. The secrets are the values of the sink's options declared
`secret`, plus any password found inside the value of any option (URL userinfo, libpq
`password=`, the Go MySQL DSN's `user:password@tcp(host)/db`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from relay.config import SinkSpec

MASK = "***"
# A secret this short would be replaced inside unrelated words; it is matched as a word.
SHORT = 4
_USERINFO = re.compile(r"(?<=//)[^/@\s]+@")
_KV_PASSWORD = re.compile(r"(?i)\b(password|passwd|pwd)\s*=\s*('[^']*'|\S+)")
# go-sql-driver/mysql: the last `@` before the last `/` ends `user:password`
_GO_DSN = re.compile(r"^[^:@/]*:(.+)@[a-z0-9]*(?:\([^/]*\))?/[^/]*$")


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        found = {s for s in secrets if s and s.strip()}
        found |= {unquote(s) for s in found}
        long = sorted((s for s in found if len(s) >= SHORT), key=len, reverse=True)
        short = sorted((s for s in found if len(s) < SHORT), key=len, reverse=True)
        parts = [re.escape(s) for s in long]
        parts += [rf"(?<![\w]){re.escape(s)}(?![\w])" for s in short]
        self._pattern = re.compile("|".join(parts)) if parts else None

    def __call__(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        text = _USERINFO.sub(MASK + "@", text)
        return _KV_PASSWORD.sub(lambda m: f"{m.group(1)}={MASK}", text)


def secrets_in(value: Any) -> list[str]:
    """Passwords embedded in an option's value: URL userinfo and libpq `password=`."""
    texts = value if isinstance(value, (list, tuple)) else [value]
    found: list[str] = []
    for text in texts:
        if not isinstance(text, str) or not text:
            continue
        for part in text.split(","):
            try:
                url = urlsplit(part.strip())
            except ValueError:
                continue
            if url.password:
                found.append(url.password)
            if url.username and url.password is None and "@" in part:
                found.append(url.username)  # a token as the user: nats://<token>@host
        found += [m.group(2).strip("'") for m in _KV_PASSWORD.finditer(text)]
        if "://" not in text and (go := _GO_DSN.match(text.strip())):
            found.append(go.group(1))
    return found


def for_spec(spec: SinkSpec) -> Redactor:
    """The redactor of one configured sink."""
    secrets: list[str] = []
    options = spec.options
    for key in spec.secrets:
        value = options.get(key)
        if isinstance(value, str):
            secrets.append(value)
        elif isinstance(value, (list, tuple)):
            secrets += [v for v in value if isinstance(v, str)]
    for value in options.values():
        secrets += secrets_in(value)
    return Redactor(secrets)
