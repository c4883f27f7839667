"""RELAY_INGEST_EVENTS: the rules' event patterns decide what ingest stores; the rest is
counted by canonical name, with the number of names bounded."""

from __future__ import annotations

import pytest

from relay import metrics
from relay.config import ConfigError, load_settings
from relay.ingest import IngestFilter, ingest_filter
from tests.support.pipeline import minio_event


def make(patterns: str) -> IngestFilter | None:
    return ingest_filter(load_settings({"RELAY_INGEST_EVENTS": patterns}))


def filtered(event: str) -> float:
    value = metrics.REGISTRY.get_sample_value("relay_events_filtered_total", {"event": event})
    return value or 0.0


def test_wildcards_and_spellings_mean_what_they_mean_in_the_rules() -> None:
    f = make("ObjectCreated:*, s3:ObjectRemoved:Delete, s3:ObjectLifecycle:*")
    assert f is not None
    names = [
        "s3:ObjectCreated:Put", "s3:ObjectCreated:CompleteMultipartUpload",
        "s3:ObjectRemoved:Delete", "s3:ObjectRemoved:DeleteMarkerCreated",
        "s3:LifecycleExpiration:Delete", "s3:ObjectAccessed:Get", "s3:ObjectAccessed:Head",
    ]  # fmt: skip
    events = [minio_event("b", f"k{n}", n, name) for n, name in enumerate(names)]
    before = filtered("s3:ObjectAccessed:Get")
    kept, left_out = f.split(events)
    assert [e.event_name for e in kept] == [
        "s3:ObjectCreated:Put", "s3:ObjectCreated:CompleteMultipartUpload",
        "s3:ObjectRemoved:Delete", "s3:LifecycleExpiration:Delete",
    ]  # fmt: skip
    assert left_out == 3
    assert filtered("s3:ObjectAccessed:Get") == before + 1
    assert f.split(kept) == (kept, 0)  # nothing left out: the same list back


def test_no_filter_unless_some_events_are_left_out() -> None:
    assert ingest_filter(load_settings({})) is None
    assert make("") is None
    assert make(" , ") is None
    assert make("s3:*") is None
    assert make("s3:ObjectCreated:*,s3:*") is None


@pytest.mark.parametrize("patterns", ["s3:Obj*ect", "s3:ObjectCreated:Put*", "*:Get"])
def test_an_invalid_pattern_names_the_variable(patterns: str) -> None:
    with pytest.raises(ConfigError, match="RELAY_INGEST_EVENTS"):
        make(patterns)


def test_the_number_of_event_names_counted_is_bounded() -> None:
    f = make("s3:ObjectCreated:*")
    assert f is not None
    f.MAX_LABELS = 2
    names = [f"s3:Made:Up{n}" for n in range(4)]
    before = {name: filtered(name) for name in [*names, "other"]}
    for _ in range(2):
        kept, left_out = f.split([minio_event("b", "k", n, name) for n, name in enumerate(names)])
        assert (kept, left_out) == ([], 4)
    assert filtered(names[0]) - before[names[0]] == 2
    assert filtered(names[1]) - before[names[1]] == 2
    assert filtered(names[2]) == before[names[2]] == 0
    assert filtered("other") - before["other"] == 4
