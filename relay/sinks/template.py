"""Per-event names: a topic, routing key, subject or channel may hold placeholders that are
filled from each event.

    {bucket}   the bucket name                       photos
    {event}    the canonical event name              s3:ObjectCreated:Put
    {source}   the ingest path label                 rustfs-a  ("default" for POST /)

`{{` and `}}` stand for literal braces. Nothing else is allowed inside braces (no format
specs, no attribute access): `validate_template` rejects it when the configuration is
loaded, so a typo is a startup error that names the variable, not a failure per event.
The values are inserted as they are; a sink whose target restricts characters (Kafka topic
names, for one) adapts the rendered name itself and documents how.
"""

from __future__ import annotations

import string
from functools import lru_cache

from relay.config import ConfigError
from relay.events import Event

PLACEHOLDERS = ("bucket", "event", "source")

# A parsed template: literal text, or the name of a placeholder.
_Piece = tuple[bool, str]  # (is_placeholder, text or name)


@lru_cache(maxsize=256)
def _parse(template: str) -> tuple[_Piece, ...]:
    """Split a template into pieces; ValueError (with the reason) when it is not valid."""
    pieces: list[_Piece] = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        if literal:
            pieces.append((False, literal))
        if name is None:
            continue
        if spec or conversion or name not in PLACEHOLDERS:
            written = "{" + name + (f"!{conversion}" if conversion else "")
            written += (f":{spec}" if spec else "") + "}"
            allowed = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
            raise ValueError(
                f"unknown placeholder {written} (allowed: {allowed}; write {{{{ and }}}} "
                "for literal braces)"
            )
        pieces.append((True, name))
    return tuple(pieces)


def validate_template(template: str, variable: str) -> None:
    """Raise ConfigError naming `variable` when `template` has an unknown placeholder or an
    unbalanced brace."""
    try:
        _parse(template)
    except ValueError as exc:
        raise ConfigError(f"{variable}: {template!r}: {exc}") from None


def render_template(template: str, event: Event) -> str:
    """The template with its placeholders filled from `event`. A template that was not
    validated and holds an unknown placeholder raises ValueError."""
    if "{" not in template and "}" not in template:
        return template
    values = {"bucket": event.bucket, "event": event.event_name, "source": event.source}
    return "".join(values[text] if is_name else text for is_name, text in _parse(template))
