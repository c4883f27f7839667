"""Routing rules: matching semantics, the three rule sources, explain()."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.config import ConfigError
from relay.events import Event, canonical_event_name, parse_body
from relay.rules import (
    Router,
    Rule,
    RuleVerdict,
    format_verdicts,
    parse_size,
    resolve_sink_ref,
    rules_from_env,
    rules_from_notification_xml,
    rules_from_toml,
    rules_to_toml,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "rules"
SINKS = ["kafka:archive", "webhook:audit", "webhook:primary"]


def ev(
    event_name: str = "s3:ObjectCreated:Put",
    key: str = "photos/cat.jpg",
    bucket: str = "photos",
    *,
    source: str = "default",
    size: int | None = 1024,
    metadata: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
) -> Event:
    return Event(
        source=source,
        dialect="minio",
        event_name=event_name,
        bucket=bucket,
        key=key,
        record=b"{}",
        size=size,
        metadata=metadata or {},
        tags=tags or {},
    )


def one(rule: Rule, event: Event) -> bool:
    """Whether a single rule (targeting every sink) matches the event."""
    return Router([rule], ["webhook:primary"]).matches("webhook:primary", event)


# ------------------------------------------------------------------------------------------
# Routing basics


def test_no_rules_routes_every_event_to_every_sink():
    router = Router([], SINKS)
    event = ev("s3:ObjectAccessed:Get", key="anything")
    assert all(router.matches(sid, event) for sid in SINKS)
    assert router.sinks_for(event) == sorted(SINKS)
    assert router.explain(event) == []
    assert router.unrouted_sinks() == []
    assert router.warnings == []


def test_rule_without_sinks_targets_every_sink():
    router = Router([Rule("jpg", suffix=".jpg")], SINKS)
    assert router.sinks_for(ev(key="a.jpg")) == SINKS
    assert router.sinks_for(ev(key="a.png")) == []
    assert router.unrouted_sinks() == []
    assert router.warnings == []


def test_sink_gets_event_when_any_rule_targeting_it_matches():
    rules = [
        Rule("images", suffix=".jpg", sinks=("webhook:primary",)),
        Rule("docs", prefix="docs/", sinks=("webhook:primary", "kafka:archive")),
    ]
    router = Router(rules, SINKS)
    assert router.sinks_for(ev(key="x/a.jpg")) == ["webhook:primary"]
    assert router.sinks_for(ev(key="docs/a.jpg")) == ["kafka:archive", "webhook:primary"]
    assert router.sinks_for(ev(key="docs/a.txt")) == ["kafka:archive", "webhook:primary"]
    assert router.sinks_for(ev(key="other.txt")) == []
    assert not router.matches("kafka:archive", ev(key="x/a.jpg"))
    # webhook:audit is named by no rule and no rule targets every sink.
    assert not router.matches("webhook:audit", ev(key="docs/a.jpg"))


def test_unknown_sink_id_is_reached_only_by_rules_without_sinks():
    router = Router([Rule("named", sinks=("webhook:primary",))], SINKS)
    assert not router.matches("webhook:elsewhere", ev())
    router = Router([Rule("all")], SINKS)
    assert router.matches("webhook:elsewhere", ev())


# ------------------------------------------------------------------------------------------
# Event names


@pytest.mark.parametrize(
    "name",
    [
        "s3:ObjectCreated:Put",
        "s3:ObjectCreated:Post",
        "s3:ObjectCreated:Copy",
        "s3:ObjectCreated:CompleteMultipartUpload",
        "s3:ObjectCreated:PutRetention",
    ],
)
def test_created_wildcard_matches_every_creation(name):
    assert one(Rule("c", events=("s3:ObjectCreated:*",)), ev(name))
    assert one(Rule("c", events=("ObjectCreated:*",)), ev(name))  # Ceph/AWS form


@pytest.mark.parametrize(
    "name",
    [
        "s3:ObjectRemoved:Delete",
        "s3:ObjectAccessed:Get",
        "s3:ObjectCreatedX:Put",
        "s3:ObjectCreated",
    ],
)
def test_created_wildcard_does_not_match_other_families(name):
    assert not one(Rule("c", events=("s3:ObjectCreated:*",)), ev(name))


def test_exact_event_name_with_and_without_s3_prefix():
    rule = Rule("d", events=("ObjectRemoved:Delete",))
    assert one(rule, ev("s3:ObjectRemoved:Delete"))
    assert not one(rule, ev("s3:ObjectRemoved:DeleteMarkerCreated"))
    rule = Rule("d", events=("s3:ObjectRemoved:Delete", "s3:ObjectAccessed:Get"))
    assert one(rule, ev("s3:ObjectAccessed:Get"))
    assert not one(rule, ev("s3:ObjectAccessed:Head"))


@pytest.mark.parametrize("pattern", ["*", "s3:*"])
def test_match_all_patterns(pattern):
    rule = Rule("all", events=(pattern,))
    for name in ("s3:ObjectCreated:Put", "s3:BucketRemoved:*", "s3:Scanner:BigPrefix"):
        assert one(rule, ev(name))


def test_bucket_created_is_a_single_name_ending_in_star():
    rule = Rule("b", events=("s3:BucketCreated:*",))
    assert one(rule, ev("s3:BucketCreated:*", key=""))
    assert not one(rule, ev("s3:BucketRemoved:*", key=""))


def test_put_tagging_alias():
    minio_name = canonical_event_name("s3:ObjectCreated:PutTagging")
    assert minio_name == "s3:ObjectTagging:Put"
    # A rule written in MinIO's spelling catches the canonical (AWS/RustFS) event...
    assert one(Rule("t", events=("s3:ObjectCreated:PutTagging",)), ev(minio_name))
    assert one(Rule("t", events=("s3:ObjectCreated:DeleteTagging",)), ev("s3:ObjectTagging:Delete"))
    # ...and an AWS-spelled rule catches the MinIO event once canonicalised.
    assert one(Rule("t", events=("s3:ObjectTagging:*",)), ev(minio_name))
    assert not one(Rule("t", events=("s3:ObjectCreated:PutTagging",)), ev("s3:ObjectCreated:Put"))


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("s3:LifecycleExpiration:*", "s3:ObjectLifecycle:Expiration:Current", True),
        ("s3:LifecycleExpiration:*", "s3:ObjectLifecycle:Expiration:DeleteMarker", True),
        ("s3:LifecycleExpiration:*", "s3:LifecycleExpiration:Delete", True),
        ("s3:ObjectLifecycle:Expiration:*", "s3:LifecycleExpiration:DeleteMarkerCreated", True),
        ("ObjectLifecycle:Expiration:*", "s3:ObjectLifecycle:Expiration:Noncurrent", True),
        ("s3:LifecycleTransition", "s3:ObjectLifecycle:Transition:Current", True),
        ("s3:LifecycleTransition", "s3:LifecycleTransition", True),
        ("s3:ObjectLifecycle:Transition:*", "s3:LifecycleTransition", True),
        ("s3:ObjectLifecycle:*", "s3:LifecycleTransition", True),
        ("s3:ObjectLifecycle:*", "s3:LifecycleExpiration:Delete", True),
        ("s3:LifecycleExpiration:*", "s3:ObjectLifecycle:Transition:Current", False),
        ("s3:LifecycleExpiration:*", "s3:LifecycleTransition", False),
        ("s3:ObjectLifecycle:Transition:*", "s3:LifecycleExpiration:Delete", False),
        ("s3:LifecycleTransition", "s3:ObjectLifecycle:Expiration:Current", False),
    ],
)
def test_lifecycle_families_are_equivalent(pattern, name, expected):
    assert one(Rule("l", events=(pattern,)), ev(name)) is expected


@pytest.mark.parametrize("pattern", ["s3:Object*", "s3:*:Put", "s3:ObjectCreated:Put*", "**"])
def test_invalid_wildcards_are_rejected(pattern):
    with pytest.raises(ConfigError, match='rule "w"'):
        Router([Rule("w", events=(pattern,))], SINKS)


def test_unknown_event_family_is_a_warning():
    router = Router([Rule("typo", events=("s3:ObjectCreatd:Put",))], SINKS)
    assert any('"s3:ObjectCreatd:Put"' in w and 'rule "typo"' in w for w in router.warnings)


# ------------------------------------------------------------------------------------------
# Key, bucket, source, regex, metadata, tags, size


def test_prefix_and_suffix_on_decoded_key_with_spaces():
    rule = Rule("p", prefix="2024/cat ", suffix=" 1.jpg")
    assert one(rule, ev(key="2024/cat 1.jpg"))
    assert one(rule, ev(key="2024/cat and dog 1.jpg"))
    assert not one(rule, ev(key="2024/cat+1.jpg"))
    assert not one(rule, ev(key="2024%2Fcat%201.jpg"))
    # Plain startswith/endswith: no glob, no case folding.
    assert not one(Rule("p", prefix="Photos/"), ev(key="photos/a.jpg"))
    assert not one(Rule("p", suffix=".*"), ev(key="a.jpg"))
    assert one(Rule("p", suffix=".*"), ev(key="a.*"))


def test_prefix_and_suffix_may_overlap_on_short_keys():
    # S3 checks each independently: key "ab" has prefix "ab" and suffix "b".
    assert one(Rule("p", prefix="ab", suffix="b"), ev(key="ab"))
    assert not one(Rule("p", prefix="abc", suffix="c"), ev(key="ab"))


def test_buckets_and_sources():
    rule = Rule("b", buckets=("photos", "media"), sources=("rustfs-a",))
    assert one(rule, ev(bucket="media", source="rustfs-a"))
    assert not one(rule, ev(bucket="docs", source="rustfs-a"))
    assert not one(rule, ev(bucket="photos", source="default"))
    # A source written as the path it was posted to means the same label.
    assert one(Rule("s", sources=("/rustfs-a",)), ev(source="rustfs-a"))


def test_key_regex_is_a_search_on_the_decoded_key():
    rule = Rule("r", key_regex=r"\d{4}/cat \d")
    assert one(rule, ev(key="photos/2024/cat 1.jpg"))
    assert not one(rule, ev(key="photos/2024/dog 1.jpg"))
    assert one(Rule("r", key_regex=r"^photos/"), ev(key="photos/x"))
    assert not one(Rule("r", key_regex=r"^photos/"), ev(key="x/photos/x"))


def test_invalid_regex_in_a_constructed_rule_raises_naming_the_rule():
    with pytest.raises(ConfigError, match=r'rule "bad": key_regex "\(" is not a valid'):
        Router([Rule("bad", key_regex="(")], SINKS)


def test_metadata_keys_compare_lower_case_and_all_must_match():
    rule = Rule("m", metadata=(("Color", "red"), ("x-amz-meta-size", "L")))
    assert one(rule, ev(metadata={"color": "red", "size": "L", "other": "x"}))
    assert one(rule, ev(metadata={"x-amz-meta-color": "red", "x-amz-meta-size": "L"}))
    assert not one(rule, ev(metadata={"color": "red"}))
    assert not one(rule, ev(metadata={"color": "RED", "size": "L"}))
    assert not one(rule, ev())


def test_tags_all_must_match():
    rule = Rule("t", tags=(("env", "prod"), ("team", "data")))
    assert one(rule, ev(tags={"env": "prod", "team": "data", "x": "y"}))
    assert not one(rule, ev(tags={"env": "prod"}))
    assert not one(rule, ev(tags={"env": "dev", "team": "data"}))
    assert not one(rule, ev(tags={"Env": "prod", "team": "data"}))


def test_size_range_is_inclusive_and_unknown_size_does_not_match():
    rule = Rule("s", min_size=100, max_size=200)
    assert one(rule, ev(size=100))
    assert one(rule, ev(size=200))
    assert not one(rule, ev(size=99))
    assert not one(rule, ev(size=201))
    assert not one(rule, ev(size=None))
    assert one(Rule("s", min_size=0), ev(size=0))
    assert one(Rule("s", max_size=10), ev(size=0))
    assert not one(Rule("s", max_size=10), ev(size=None))


# ------------------------------------------------------------------------------------------
# Sink references


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("webhook:primary", "webhook:primary"),
        ("webhook:PRIMARY", "webhook:primary"),
        ("WEBHOOK:Primary", "webhook:primary"),
        ("arn:rustfs:sqs::primary:webhook", "webhook:primary"),
        ("arn:rustfs:sqs::PRIMARY:webhook", "webhook:primary"),
        ("arn:minio:sqs::PRIMARY:webhook", "webhook:primary"),
        ("arn:minio:sqs:us-east-1:PRIMARY:webhook", "webhook:primary"),
        ("arn:minio:sqs::ARCHIVE:kafka", "kafka:archive"),
        ("arn:minio:sqs::main:postgresql", "postgres:main"),
        ("arn:aws:sns:zg1::mytopic", None),
        ("arn:aws:sqs:us-east-1:123456789012:queue", None),
        ("arn:minio:sqs::primary", None),
        ("webhook:missing", None),
        ("webhook", None),
    ],
)
def test_resolve_sink_ref(ref, expected):
    configured = ["webhook:primary", "kafka:archive", "postgres:main"]
    assert resolve_sink_ref(ref, configured) == expected


def test_rules_name_sinks_by_arn_with_upper_case_ids():
    rules = [
        Rule("r", suffix=".jpg", sinks=("arn:rustfs:sqs::PRIMARY:webhook",)),
        Rule("m", suffix=".png", sinks=("arn:minio:sqs::ARCHIVE:kafka",)),
    ]
    router = Router(rules, SINKS)
    assert router.sinks_for(ev(key="a.jpg")) == ["webhook:primary"]
    assert router.sinks_for(ev(key="a.png")) == ["kafka:archive"]
    assert router.warnings == [
        'sink "webhook:audit" is not reached by any rule; it will receive no events '
        "(name it in a rule's sinks, or add a rule without sinks)"
    ]


def test_foreign_arn_and_unconfigured_sink_are_warnings():
    rules = [
        Rule("images", sinks=("kafka:x", "arn:aws:sns:zg1::mytopic", "webhook:primary")),
    ]
    router = Router(rules, ["webhook:primary"])
    assert 'rule "images" names sink "kafka:x", which is not configured' in router.warnings
    assert any(
        w.startswith('rule "images" names "arn:aws:sns:zg1::mytopic", which is not a relay sink')
        for w in router.warnings
    )
    assert len(router.warnings) == 2
    assert router.sinks_for(ev()) == ["webhook:primary"]
    assert router.explain(ev())[0].sinks == ("webhook:primary",)


def test_unrouted_sinks():
    rules = [Rule("a", sinks=("webhook:primary",)), Rule("b", sinks=("arn:aws:sns:zg1::t",))]
    router = Router(rules, SINKS)
    assert router.unrouted_sinks() == ["kafka:archive", "webhook:audit"]
    assert sum("is not reached by any rule" in w for w in router.warnings) == 2
    assert Router([*rules, Rule("all")], SINKS).unrouted_sinks() == []


def test_duplicate_rule_names_are_a_warning():
    router = Router([Rule("a"), Rule("a", prefix="x")], SINKS)
    assert 'rule "a" is defined more than once' in router.warnings


# ------------------------------------------------------------------------------------------
# explain() and format_verdicts()


@pytest.mark.parametrize(
    ("rule", "event", "why"),
    [
        (
            Rule("r", events=("s3:ObjectCreated:*",)),
            ev("s3:ObjectRemoved:Delete"),
            'event "s3:ObjectRemoved:Delete" does not match events ["s3:ObjectCreated:*"]',
        ),
        (
            Rule("r", buckets=("media",)),
            ev(bucket="photos"),
            'bucket "photos" is not in buckets ["media"]',
        ),
        (
            Rule("r", sources=("ceph-east",)),
            ev(source="default"),
            'source "default" is not in sources ["ceph-east"]',
        ),
        (
            Rule("r", prefix="photos/"),
            ev(key="docs/a.txt"),
            'prefix "photos/" does not match key "docs/a.txt"',
        ),
        (
            Rule("r", prefix="docs/", suffix=".jpg"),
            ev(key="docs/a.txt"),
            'suffix ".jpg" does not match key "docs/a.txt"',
        ),
        (
            Rule("r", key_regex=r"\d+"),
            ev(key="docs/a.txt"),
            'key_regex "\\\\d+" does not match key "docs/a.txt"',
        ),
        (Rule("r", min_size=2048), ev(size=1024), "size 1024 is below min_size 2048"),
        (Rule("r", max_size=512), ev(size=1024), "size 1024 is above max_size 512"),
        (
            Rule("r", min_size=1),
            ev(size=None),
            "size is unknown (the sender gave none) and the rule has a size filter",
        ),
        (
            Rule("r", metadata=(("Color", "red"),)),
            ev(),
            'metadata "Color" is missing (rule wants "red")',
        ),
        (
            Rule("r", metadata=(("color", "red"),)),
            ev(metadata={"color": "blue"}),
            'metadata "color" is "blue", rule wants "red"',
        ),
        (Rule("r", tags=(("env", "prod"),)), ev(), 'tag "env" is missing (rule wants "prod")'),
        (
            Rule("r", tags=(("env", "prod"),)),
            ev(tags={"env": "dev"}),
            'tag "env" is "dev", rule wants "prod"',
        ),
    ],
)
def test_explain_gives_the_first_failing_filter(rule, event, why):
    [verdict] = Router([rule], SINKS).explain(event)
    assert verdict == RuleVerdict(name="r", matched=False, why=why, sinks=tuple(SINKS))


def test_explain_checks_filters_in_order():
    # Event, prefix and size all fail: the event is reported.
    rule = Rule("r", events=("s3:ObjectRemoved:*",), prefix="x/", min_size=10**9)
    [verdict] = Router([rule], SINKS).explain(ev())
    assert verdict.why.startswith("event ")


def test_explain_matched_rules_and_sinks():
    rules = [
        Rule(
            "images", events=("s3:ObjectCreated:*",), prefix="photos/", sinks=("WEBHOOK:PRIMARY",)
        ),
        Rule("catch-all"),
        Rule("docs", prefix="docs/", sinks=("kafka:archive",)),
    ]
    router = Router(rules, SINKS)
    verdicts = router.explain(ev(key="photos/cat.jpg"))
    assert [v.name for v in verdicts] == ["images", "catch-all", "docs"]
    assert [v.matched for v in verdicts] == [True, True, False]
    assert verdicts[0].sinks == ("webhook:primary",)
    assert verdicts[0].why == 'matches events ["s3:ObjectCreated:*"], prefix "photos/"'
    assert verdicts[1].why == "no filters: matches every event"
    assert verdicts[1].sinks == tuple(SINKS)
    assert verdicts[2].sinks == ("kafka:archive",)


def test_why_not_to_names_each_rule_of_the_sink_and_its_failing_condition():
    rules = [
        Rule("images", suffix=".jpg", sinks=("kafka:archive",)),
        Rule("big", min_size=4096, sinks=("kafka:archive", "webhook:primary")),
        Rule("docs", prefix="docs/", sinks=("webhook:primary",)),
    ]
    router = Router(rules, SINKS)
    pdf = ev(key="invoices/2026/03/x.pdf", size=10)
    assert router.why_not_to("kafka:archive", pdf) == [
        'rule "images": suffix ".jpg" does not match key "invoices/2026/03/x.pdf"',
        'rule "big": size 10 is below min_size 4096',
    ]
    assert router.why_not_to("webhook:audit", pdf) == ["no rule sends events to webhook:audit"]
    assert router.why_not_to("kafka:archive", ev(key="a.jpg")) is None
    assert router.why_not_to("webhook:primary", ev(key="docs/a", size=1)) is None
    # a sink the router was not told of: the rules that name no sinks
    assert Router([Rule("all", prefix="x/")], SINKS).why_not_to("redis:new", pdf) == [
        'rule "all": prefix "x/" does not match key "invoices/2026/03/x.pdf"'
    ]
    assert Router([], SINKS).why_not_to("kafka:archive", pdf) is None


@settings(max_examples=200)
@given(
    rules=st.lists(
        st.builds(
            Rule,
            name=st.sampled_from(["a", "b", "c"]),
            suffix=st.sampled_from(["", ".jpg"]),
            min_size=st.sampled_from([None, 5]),
            sinks=st.lists(st.sampled_from(SINKS), max_size=2).map(tuple),
        ),
        max_size=3,
    ),
    key=st.sampled_from(["a.jpg", "a.pdf"]),
    size=st.sampled_from([None, 1, 9]),
)
def test_why_not_to_agrees_with_matches(rules, key, size):
    router = Router(rules, SINKS)
    event = ev(key=key, size=size)
    for sink in SINKS:
        assert (router.why_not_to(sink, event) is None) is router.matches(sink, event)


def test_format_verdicts():
    rules = [
        Rule("images", suffix=".jpg", sinks=("webhook:primary",)),
        Rule("docs", prefix="docs/", sinks=("kafka:archive",)),
    ]
    router = Router(rules, SINKS)
    event = ev(key="2024/cat 1.jpg")
    text = format_verdicts(event, router.explain(event), router.sinks_for(event))
    assert "event   s3:ObjectCreated:Put" in text
    assert 'key     "2024/cat 1.jpg"' in text
    assert "images  MATCH     -> webhook:primary" in text
    assert "docs    no match" in text
    assert 'prefix "docs/" does not match key "2024/cat 1.jpg"' in text
    assert text.endswith("sinks: webhook:primary\n")

    nothing = format_verdicts(ev(key="x"), router.explain(ev(key="x")), [])
    assert nothing.endswith("sinks: none (the event goes nowhere)\n")
    no_rules = format_verdicts(ev(), [], SINKS)
    assert "no rules configured: every event goes to every sink" in no_rules
    assert no_rules.endswith("sinks: kafka:archive, webhook:audit, webhook:primary\n")


# ------------------------------------------------------------------------------------------
# Sizes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1234", 1234),
        ("512KiB", 512 * 1024),
        ("8MiB", 8 * 1024**2),
        ("1GiB", 1024**3),
        ("10KB", 10_000),
        ("10MB", 10_000_000),
        ("2GB", 2_000_000_000),
        ("1.5KiB", 1536),
        (" 8 mib ", 8 * 1024**2),
        ("100B", 100),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["12q", "", "-1", "1.5", "KiB", "1e3", "0.1B"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


# ------------------------------------------------------------------------------------------
# Environment


def test_rules_from_env_all_fields_and_underscore_names():
    env = {
        "RELAY_RULE_NEW_IMAGES_EVENTS": "s3:ObjectCreated:* , ObjectRemoved:Delete,",
        "RELAY_RULE_NEW_IMAGES_PREFIX": "photos/",
        "RELAY_RULE_NEW_IMAGES_SUFFIX": ".jpg",
        "RELAY_RULE_NEW_IMAGES_BUCKETS": "photos, media",
        "RELAY_RULE_NEW_IMAGES_SOURCES": "rustfs-a",
        "RELAY_RULE_NEW_IMAGES_SINKS": "webhook:primary, arn:minio:sqs::ARCHIVE:kafka",
        "RELAY_RULE_NEW_IMAGES_KEY_REGEX": r"\d{4}",
        "RELAY_RULE_NEW_IMAGES_METADATA": "Color=red, size = L",
        "RELAY_RULE_NEW_IMAGES_TAGS": "env=prod,team=a=b",
        "RELAY_RULE_NEW_IMAGES_MIN_SIZE": "512KiB",
        "RELAY_RULE_NEW_IMAGES_MAX_SIZE": "1GB",
        "RELAY_RULE_MY_KEY_REGEX": "^x",
        "RELAY_RULE_BIG_SIZE_MIN_SIZE": "10",
        "RELAY_RULES_FILE": "/etc/relay/rules.toml",  # not a rule variable
        "RUSTFS_NOTIFY_WEBHOOK_ENABLE_PRIMARY": "on",
    }
    rules = rules_from_env(env)
    assert [r.name for r in rules] == ["big_size", "my", "new_images"]
    assert rules[0] == Rule("big_size", min_size=10)
    assert rules[1] == Rule("my", key_regex="^x")
    assert rules[2] == Rule(
        name="new_images",
        events=("s3:ObjectCreated:*", "ObjectRemoved:Delete"),
        prefix="photos/",
        suffix=".jpg",
        buckets=("photos", "media"),
        sources=("rustfs-a",),
        key_regex=r"\d{4}",
        metadata=(("Color", "red"), ("size", "L")),
        tags=(("env", "prod"), ("team", "a=b")),
        min_size=512 * 1024,
        max_size=10**9,
        sinks=("webhook:primary", "arn:minio:sqs::ARCHIVE:kafka"),
    )


def test_rules_from_env_empty_values():
    rules = rules_from_env(
        {
            "RELAY_RULE_X_EVENTS": "",
            "RELAY_RULE_X_KEY_REGEX": "",
            "RELAY_RULE_X_MIN_SIZE": "",
            "RELAY_RULE_X_PREFIX": " a ",
        }
    )
    assert rules == [Rule("x", prefix=" a ")]
    assert rules_from_env({}) == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"RELAY_RULE_IMAGES_MIN_SIZE": "12q"},
            'RELAY_RULE_IMAGES_MIN_SIZE: "12q" is not a size '
            "(use 512KiB, 8MiB or a number of bytes)",
        ),
        (
            {"RELAY_RULE_IMAGES_MAX_SIZE": "lots"},
            'RELAY_RULE_IMAGES_MAX_SIZE: "lots" is not a size',
        ),
        ({"RELAY_RULE_IMAGES_PREFIXX": "a"}, "RELAY_RULE_IMAGES_PREFIXX: unknown rule field"),
        ({"RELAY_RULE_IMAGES_REGEX": "a"}, "RELAY_RULE_IMAGES_REGEX: unknown rule field"),
        ({"RELAY_RULE_PREFIX": "a"}, "RELAY_RULE_PREFIX: unknown rule field"),
        ({"RELAY_RULE__PREFIX": "a"}, "RELAY_RULE__PREFIX: the rule name is missing"),
        (
            {"RELAY_RULE_IMAGES_KEY_REGEX": "(unclosed"},
            'RELAY_RULE_IMAGES_KEY_REGEX: "(unclosed" is not a valid regular expression',
        ),
        (
            {"RELAY_RULE_IMAGES_METADATA": "color"},
            'RELAY_RULE_IMAGES_METADATA: "color" is not key=value',
        ),
        (
            {"RELAY_RULE_IMAGES_METADATA": "color=red,COLOR=blue"},
            'RELAY_RULE_IMAGES_METADATA: metadata "COLOR" is given twice',
        ),
        ({"RELAY_RULE_IMAGES_TAGS": "=x"}, "RELAY_RULE_IMAGES_TAGS: a tag name is empty"),
        (
            {"RELAY_RULE_IMAGES_EVENTS": "s3:Object*"},
            'RELAY_RULE_IMAGES_EVENTS: event pattern "s3:Object*" is not valid',
        ),
        (
            {"RELAY_RULE_IMAGES_MIN_SIZE": "2MiB", "RELAY_RULE_IMAGES_MAX_SIZE": "1MiB"},
            "RELAY_RULE_IMAGES_MIN_SIZE / RELAY_RULE_IMAGES_MAX_SIZE: min_size 2097152 is "
            "greater than max_size 1048576",
        ),
    ],
)
def test_rules_from_env_errors_name_the_variable(env, message):
    with pytest.raises(ConfigError) as info:
        rules_from_env({"RELAY_RULE_GOOD_PREFIX": "x", **env})
    assert str(info.value).startswith(message)


# ------------------------------------------------------------------------------------------
# TOML


def test_rules_from_toml_fixture():
    rules = rules_from_toml(FIXTURES / "rules.toml")
    assert rules == [
        Rule(
            "images",
            events=("s3:ObjectCreated:*",),
            prefix="2024/",
            suffix=".jpg",
            buckets=("photos", "media"),
            sinks=("webhook:primary", "arn:rustfs:sqs::archive:kafka"),
        ),
        Rule(
            "large-deletes",
            events=("ObjectRemoved:*",),
            sources=("rustfs-a",),
            min_size=8 * 1024**2,
            max_size=1024**3,
            sinks=("arn:minio:sqs::PRIMARY:webhook",),
        ),
        Rule(
            "ceph classified",
            key_regex=r"^reports/\d{4}/",
            metadata=(("x-amz-meta-class", "secret"),),
            tags=(("env", "prod"), ("team", "data")),
        ),
        Rule("everything"),
    ]
    router = Router(rules, SINKS)
    assert router.warnings == []
    assert router.sinks_for(ev(key="2024/a.jpg", size=1)) == SINKS  # images + everything


def test_toml_round_trip_of_fixture(tmp_path):
    rules = rules_from_toml(FIXTURES / "rules.toml")
    path = tmp_path / "out.toml"
    path.write_text(rules_to_toml(rules), encoding="utf-8")
    assert rules_from_toml(path) == rules


def test_rules_to_toml_is_readable():
    text = rules_to_toml(
        [Rule("a.b", prefix='say "hi"\n', metadata=(("k y", "v"),), min_size=3, sinks=("x:y",))]
    )
    assert text == (
        '[rules."a.b"]\n'
        'prefix = "say \\"hi\\"\\n"\n'
        'metadata = { "k y" = "v" }\n'
        "min_size = 3\n"
        'sinks = ["x:y"]\n'
    )
    assert rules_to_toml([]) == "[rules]\n"
    assert tomllib.loads(rules_to_toml([])) == {"rules": {}}


def test_toml_accepts_string_lists(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text('[rules.a]\nevents = "s3:ObjectCreated:*, s3:ObjectRemoved:*"\n')
    assert rules_from_toml(path) == [Rule("a", events=("s3:ObjectCreated:*", "s3:ObjectRemoved:*"))]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[rules.images]\nprefixx = "a"\n', 'rule "images": unknown key "prefixx"'),
        ("[rules.images]\nprefix = 3\n", 'rule "images": prefix must be a string'),
        ("[rules.images]\nevents = [1]\n", 'rule "images": events must be a list of strings'),
        ('[rules.images]\nmetadata = "a=b"\n', 'rule "images": metadata must be a table'),
        ("[rules.images]\ntags = { env = 1 }\n", 'rule "images": tags "env" must be a string'),
        ('[rules.images]\nmin_size = "12q"\n', 'rule "images": min_size: "12q" is not a size'),
        ("[rules.images]\nmin_size = true\n", 'rule "images": min_size must be a number'),
        ("[rules.images]\nmax_size = -1\n", 'rule "images": max_size must not be negative'),
        (
            "[rules.images]\nmin_size = 2\nmax_size = 1\n",
            'rule "images": min_size 2 is greater than max_size 1',
        ),
        (
            '[rules.images]\nkey_regex = "("\n',
            'rule "images": key_regex "(" is not a valid regular expression',
        ),
        (
            '[rules.images]\nevents = ["s3:*Created"]\n',
            'rule "images": event pattern "s3:*Created" is not valid',
        ),
        (
            '[rules.images]\nmetadata = { a = "1", A = "2" }\n',
            'rule "images": metadata "A" is given twice',
        ),
        ("[rule.images]\n", 'unknown top-level key "rule"'),
        ('rules = "x"\n', "'rules' must be a table"),
        ("[rules]\nimages = 1\n", 'rule "images": must be a table'),
        ('[rules.""]\n', "a rule has an empty name"),
    ],
)
def test_toml_errors_name_the_file_and_rule(tmp_path, body, message):
    path = tmp_path / "rules.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        rules_from_toml(path)
    assert str(info.value).startswith(f"{path}: {message}")


def test_toml_syntax_error_keeps_line_and_column(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text('[rules.images]\nprefix = "a"\nsuffix = \n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        rules_from_toml(path)
    assert str(info.value).startswith(f"{path}: not valid TOML: ")
    assert "(at line 3, column 10)" in str(info.value)


def test_toml_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=re.escape(f"{path}: cannot read the rules file")):
        rules_from_toml(path)


# ------------------------------------------------------------------------------------------
# NotificationConfiguration XML


def test_xml_import_with_namespace():
    text = (FIXTURES / "aws-namespaced.xml").read_text(encoding="utf-8")
    rules = rules_from_notification_xml(text)
    assert rules == [
        Rule(
            "new-images",
            events=("s3:ObjectCreated:*",),
            prefix="photos/",
            suffix=".jpg",
            sinks=("arn:minio:sqs::PRIMARY:webhook",),
        ),
        Rule(
            "rule-1",
            events=("s3:ObjectRemoved:Delete", "s3:ObjectRemoved:DeleteMarkerCreated"),
            sinks=("arn:rustfs:sqs::archive:kafka",),
        ),
        Rule(
            "lifecycle",
            events=("s3:LifecycleExpiration:*",),
            sinks=("arn:aws:lambda:us-east-1:123456789012:function:tidy",),
        ),
    ]
    router = Router(rules, SINKS)
    assert router.sinks_for(ev(key="photos/a.jpg")) == ["webhook:primary"]
    assert router.sinks_for(ev("s3:ObjectRemoved:Delete", key="x")) == ["kafka:archive"]
    assert router.sinks_for(ev("s3:ObjectLifecycle:Expiration:Current")) == []
    assert any("arn:aws:lambda" in w for w in router.warnings)


def test_xml_import_without_namespace_is_the_same():
    text = (FIXTURES / "aws-namespaced.xml").read_text(encoding="utf-8")
    plain = text.replace(' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"', "")
    assert plain != text
    assert rules_from_notification_xml(plain) == rules_from_notification_xml(text)


def test_xml_import_ceph_extensions():
    text = (FIXTURES / "ceph-topic.xml").read_text(encoding="utf-8")
    rules = rules_from_notification_xml(text, source_name="ceph-topic.xml")
    assert rules == [
        Rule(
            "reports",
            events=("s3:ObjectCreated:*", "s3:ObjectRemoved:*"),  # Ceph's default
            prefix="reports/",
            key_regex=r"^(?:reports/[0-9]{4}/.*\.csv)\Z",
            metadata=(("x-amz-meta-class", "secret"),),
            tags=(("env", "prod"), ("team", "data")),
            sinks=("arn:aws:sns:zg1::reports-topic",),
        ),
        Rule(
            "expiry",
            events=("s3:ObjectLifecycle:Expiration:*",),
            sinks=("arn:rustfs:sqs::audit:webhook",),
        ),
    ]
    # Ceph topics are not relay sinks; route the first rule to every sink to test its filters.
    reports = Router([replace(rules[0], sinks=())], SINKS)
    good = ev(
        key="reports/2024/q1.csv",
        metadata={"class": "secret"},
        tags={"env": "prod", "team": "data"},
    )
    assert reports.sinks_for(good) == SINKS
    # Ceph matches the regex against the whole key.
    longer = ev(
        key="reports/2024/q1.csv.bak",
        metadata={"class": "secret"},
        tags={"env": "prod", "team": "data"},
    )
    assert reports.sinks_for(longer) == []
    expiry = Router(rules[1:], SINKS)
    assert expiry.sinks_for(ev("s3:LifecycleExpiration:Delete")) == ["webhook:audit"]


def _xml(body: str) -> str:
    return f"<NotificationConfiguration>{body}</NotificationConfiguration>"


def _queue(ident: str, events: str, key_filter: str = "", arn: str = "webhook:a") -> str:
    id_part = f"<Id>{ident}</Id>" if ident else ""
    filter_part = f"<Filter><S3Key>{key_filter}</S3Key></Filter>" if key_filter else ""
    event_part = "".join(f"<Event>{e}</Event>" for e in events.split()) if events else ""
    return (
        f"<QueueConfiguration>{id_part}<Queue>{arn}</Queue>{event_part}{filter_part}"
        "</QueueConfiguration>"
    )


def _rule(name: str, value: str) -> str:
    return f"<FilterRule><Name>{name}</Name><Value>{value}</Value></FilterRule>"


def test_xml_generated_names_skip_explicit_ids():
    rules = rules_from_notification_xml(
        _xml(_queue("", "s3:ObjectCreated:Put") + _queue("rule-1", "s3:ObjectRemoved:Delete"))
    )
    assert [r.name for r in rules] == ["rule-2", "rule-1"]


def test_xml_empty_configuration_and_eventbridge():
    assert rules_from_notification_xml("<NotificationConfiguration/>") == []
    assert (
        rules_from_notification_xml(_xml("<EventBridgeConfiguration></EventBridgeConfiguration>"))
        == []
    )


def test_xml_lambda_function_configuration():
    body = (
        "<LambdaFunctionConfiguration><Id>f</Id><CloudFunction>arn:aws:lambda:x</CloudFunction>"
        "<Event>s3:ObjectCreated:*</Event></LambdaFunctionConfiguration>"
    )
    [rule] = rules_from_notification_xml(_xml(body))
    assert rule == Rule("f", events=("s3:ObjectCreated:*",), sinks=("arn:aws:lambda:x",))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("<NotificationConfiguration><QueueConfiguration>", "not well-formed XML: "),
        ("<Foo/>", "the root element is <Foo>, expected <NotificationConfiguration>"),
        (
            '<!DOCTYPE x [<!ENTITY a "b">]><NotificationConfiguration/>',
            "DOCTYPE and ENTITY declarations are not accepted",
        ),
        (_xml("<Whatever/>"), "unknown element <Whatever>"),
        (
            _xml(_queue("q1", "s3:ObjectCreated:*", _rule("prefix", "a/") + _rule("Prefix", "b/"))),
            'QueueConfiguration "q1": two prefix rules in one filter',
        ),
        (
            _xml(_queue("q1", "s3:ObjectCreated:*", _rule("suffix", ".a") + _rule("suffix", ".b"))),
            'QueueConfiguration "q1": two suffix rules in one filter',
        ),
        (
            _xml(_queue("q1", "s3:ObjectCreated:*", _rule("regex", "a") + _rule("regex", "b"))),
            'QueueConfiguration "q1": two regex rules in one filter',
        ),
        (
            _xml(_queue("q1", "s3:ObjectCreated:*", _rule("glob", "*.jpg"))),
            'QueueConfiguration "q1": unknown FilterRule name "glob"',
        ),
        (
            _xml(_queue("q1", "s3:ObjectCreated:*", _rule("regex", "(oops"))),
            'QueueConfiguration "q1": regex "(oops" is not a valid regular expression',
        ),
        (
            _xml(
                _queue("q1", "s3:ObjectCreated:*", "<FilterRule><Name>prefix</Name></FilterRule>")
            ),
            'QueueConfiguration "q1": FilterRule "prefix" needs one <Value>',
        ),
        (
            _xml(
                _queue(
                    "q1",
                    "s3:ObjectCreated:*",
                    "<FilterRule><Name>prefix</Name><Value>a</Value><Type>OUT</Type></FilterRule>",
                )
            ),
            'QueueConfiguration "q1": FilterRule "prefix" has Type "OUT"',
        ),
        (_xml(_queue("q1", "")), 'QueueConfiguration "q1": has no <Event>'),
        (
            _xml(
                "<CloudFunctionConfiguration><Id>f1</Id><CloudFunction>arn:x</CloudFunction>"
                "</CloudFunctionConfiguration>"
            ),
            'CloudFunctionConfiguration "f1": has no <Event>',
        ),
        (
            _xml(
                "<QueueConfiguration><Id>q1</Id><Event>s3:ObjectCreated:*</Event></QueueConfiguration>"
            ),
            'QueueConfiguration "q1": needs exactly one <Queue> ARN',
        ),
        (
            _xml(_queue("q1", "s3:Object*")),
            'QueueConfiguration "q1": event pattern "s3:Object*" is not valid',
        ),
        (
            _xml(_queue("", "s3:ObjectCreated:*").replace("<Queue>", "<Bogus/><Queue>")),
            'QueueConfiguration "rule-1": unknown element <Bogus>',
        ),
        (
            _xml(_queue("q1", "s3:ObjectCreated:Put") + _queue("q1", "s3:ObjectRemoved:Delete")),
            'two configurations have the Id "q1"',
        ),
        (
            _xml(
                "<TopicConfiguration><Id>t1</Id><Topic>arn:aws:sns:zg1::t</Topic><Filter>"
                "<S3Metadata>" + _rule("a", "1") + _rule("A", "2") + "</S3Metadata>"
                "</Filter></TopicConfiguration>"
            ),
            'TopicConfiguration "t1": metadata "A" is given twice',
        ),
        (
            _xml(
                "<TopicConfiguration><Id>t1</Id><Topic>arn:aws:sns:zg1::t</Topic><Filter>"
                "<S3Size/></Filter></TopicConfiguration>"
            ),
            'TopicConfiguration "t1": unknown filter <S3Size>',
        ),
    ],
)
def test_xml_errors(body, message):
    with pytest.raises(ConfigError) as info:
        rules_from_notification_xml(body, source_name="bucket.xml")
    assert str(info.value).startswith(f"bucket.xml: {message}")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # Same events, no filters.
        (_queue("a", "s3:ObjectCreated:*"), _queue("b", "s3:ObjectCreated:*")),
        # A wildcard and one of its names; one prefix a prefix of the other.
        (
            _queue("a", "s3:ObjectCreated:*", _rule("prefix", "images/")),
            _queue("b", "s3:ObjectCreated:Put", _rule("prefix", "images/2024/")),
        ),
        # One prefix empty, one suffix empty.
        (
            _queue("a", "s3:ObjectCreated:Put", _rule("prefix", "images/")),
            _queue("b", "s3:ObjectCreated:Put", _rule("suffix", ".jpg")),
        ),
        # Suffixes where one is a suffix of the other.
        (
            _queue("a", "s3:ObjectRemoved:*", _rule("suffix", ".jpg")),
            _queue("b", "s3:ObjectRemoved:Delete", _rule("suffix", "photo.jpg")),
        ),
        # Lifecycle families in the two spellings.
        (
            _queue("a", "s3:LifecycleExpiration:*"),
            _queue("b", "s3:ObjectLifecycle:Expiration:Current"),
        ),
        # Match-all and PutTagging alias.
        (_queue("a", "s3:*"), _queue("b", "s3:ObjectRemoved:Delete")),
        (_queue("a", "s3:ObjectCreated:PutTagging"), _queue("b", "s3:ObjectTagging:*")),
    ],
)
def test_xml_overlapping_configurations_are_rejected(first, second):
    with pytest.raises(ConfigError) as info:
        rules_from_notification_xml(_xml(first + second), source_name="bucket.xml")
    assert str(info.value).startswith('bucket.xml: configurations "a" and "b" overlap')


def test_xml_overlap_between_topic_default_events_and_queue():
    topic = "<TopicConfiguration><Id>t</Id><Topic>arn:aws:sns:zg1::t</Topic></TopicConfiguration>"
    with pytest.raises(ConfigError, match='configurations "t" and "q" overlap'):
        rules_from_notification_xml(_xml(topic + _queue("q", "s3:ObjectRemoved:Delete")))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # Different event families.
        (_queue("a", "s3:ObjectCreated:*"), _queue("b", "s3:ObjectRemoved:*")),
        (_queue("a", "s3:ObjectCreated:Put"), _queue("b", "s3:ObjectCreated:Copy")),
        (_queue("a", "s3:LifecycleExpiration:*"), _queue("b", "s3:LifecycleTransition")),
        # Same events, disjoint prefixes.
        (
            _queue("a", "s3:ObjectCreated:*", _rule("prefix", "images/")),
            _queue("b", "s3:ObjectCreated:*", _rule("prefix", "docs/")),
        ),
        # Same events, disjoint suffixes.
        (
            _queue("a", "s3:ObjectCreated:*", _rule("suffix", ".jpg")),
            _queue("b", "s3:ObjectCreated:*", _rule("suffix", ".png")),
        ),
        # Overlapping prefixes but disjoint suffixes.
        (
            _queue("a", "s3:ObjectCreated:*", _rule("prefix", "i") + _rule("suffix", ".jpg")),
            _queue("b", "s3:ObjectCreated:*", _rule("prefix", "images/") + _rule("suffix", ".gif")),
        ),
    ],
)
def test_xml_non_overlapping_configurations_are_accepted(first, second):
    rules = rules_from_notification_xml(_xml(first + second))
    assert [r.name for r in rules] == ["a", "b"]


def test_xml_rules_round_trip_through_toml(tmp_path):
    text = (FIXTURES / "ceph-topic.xml").read_text(encoding="utf-8")
    rules = rules_from_notification_xml(text)
    path = tmp_path / "imported.toml"
    path.write_text(rules_to_toml(rules), encoding="utf-8")
    assert rules_from_toml(path) == rules


# ------------------------------------------------------------------------------------------
# Properties

KEY_ALPHABET = st.sampled_from("ab/ .é")
keys = st.text(KEY_ALPHABET, max_size=8)
affixes = st.text(KEY_ALPHABET, max_size=3)
EVENT_NAMES = [
    "s3:ObjectCreated:Put",
    "s3:ObjectCreated:Copy",
    "s3:ObjectRemoved:Delete",
    "s3:ObjectTagging:Put",
    "s3:ObjectAccessed:Get",
]
PATTERNS = ["s3:ObjectCreated:*", "ObjectCreated:Put", "s3:ObjectRemoved:*", "*"]
SINK_POOL = ["webhook:a", "webhook:b", "kafka:c"]


def reference_matches(rules: list[Rule], sink: str, name: str, key: str) -> bool:
    """Straightforward, uncompiled routing for rules using events/prefix/suffix/sinks only."""
    if not rules:
        return True
    for rule in rules:
        if rule.sinks and sink not in rule.sinks:
            continue
        if rule.events:
            ok = False
            for pattern in rule.events:
                pattern = pattern if pattern.startswith("s3:") else "s3:" + pattern
                if pattern == "s3:*":
                    ok = True
                elif pattern.endswith(":*"):
                    ok = ok or name.split(":")[:2] == pattern.split(":")[:2]
                else:
                    ok = ok or name == pattern
            if not ok:
                continue
        if key[: len(rule.prefix)] != rule.prefix:
            continue
        if rule.suffix and key[-len(rule.suffix) :] != rule.suffix:
            continue
        return True
    return False


rule_strategy = st.builds(
    Rule,
    name=st.sampled_from(["r1", "r2", "r3"]),
    events=st.lists(st.sampled_from(PATTERNS), max_size=2).map(tuple),
    prefix=affixes,
    suffix=affixes,
    sinks=st.lists(st.sampled_from(SINK_POOL), max_size=2, unique=True).map(tuple),
)


@settings(max_examples=400)
@given(key=keys, prefix=affixes, suffix=affixes)
def test_prefix_suffix_match_reference(key, prefix, suffix):
    router = Router([Rule("p", prefix=prefix, suffix=suffix)], ["webhook:a"])
    expected = key.startswith(prefix) and key.endswith(suffix)
    assert router.matches("webhook:a", ev(key=key)) is expected


@settings(max_examples=300)
@given(
    rules=st.lists(rule_strategy, max_size=3),
    name=st.sampled_from(EVENT_NAMES),
    key=keys,
)
def test_router_matches_reference(rules, name, key):
    router = Router(rules, SINK_POOL)
    event = ev(name, key=key)
    for sink in SINK_POOL:
        assert router.matches(sink, event) is reference_matches(rules, sink, name, key)
    # sinks_for and explain agree with matches.
    assert router.sinks_for(event) == sorted(s for s in SINK_POOL if router.matches(s, event))
    for verdict, rule in zip(router.explain(event), rules, strict=True):
        alone = Router([replace(rule, sinks=())], SINK_POOL)
        assert verdict.matched is alone.matches(SINK_POOL[0], event)


@settings(max_examples=300)
@given(
    rule=st.builds(
        Rule,
        name=st.just("r"),
        buckets=st.lists(st.sampled_from(["a", "b"]), max_size=2).map(tuple),
        key_regex=st.sampled_from([None, "a", "^b", r"\.$", "é"]),
        metadata=st.sampled_from([(), (("color", "red"),), (("X-Amz-Meta-Color", "red"),)]),
        tags=st.sampled_from([(), (("env", "prod"),)]),
        min_size=st.sampled_from([None, 0, 5]),
        max_size=st.sampled_from([None, 5, 10]),
    ),
    bucket=st.sampled_from(["a", "b", "c"]),
    key=keys,
    size=st.sampled_from([None, 0, 5, 7, 11]),
    color=st.sampled_from([None, "red", "blue"]),
    env=st.sampled_from([None, "prod"]),
)
def test_explain_agrees_with_matches(rule, bucket, key, size, color, env):
    event = ev(
        bucket=bucket,
        key=key,
        size=size,
        metadata={} if color is None else {"color": color},
        tags={} if env is None else {"env": env},
    )
    router = Router([rule], ["webhook:a"])
    [verdict] = router.explain(event)
    assert verdict.matched is router.matches("webhook:a", event)


toml_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=6)
toml_item = toml_text.map(str.strip).filter(bool)
round_trip_rules = st.lists(
    st.builds(
        Rule,
        name=toml_item,
        events=st.lists(st.sampled_from([*PATTERNS, "s3:BucketCreated:*"]), max_size=3).map(tuple),
        prefix=toml_text,
        suffix=toml_text,
        buckets=st.lists(toml_item, max_size=2).map(tuple),
        sources=st.lists(toml_item, max_size=2).map(tuple),
        key_regex=st.sampled_from([None, "", r"\d+", "a'b\"c", "^x\\Z"]),
        metadata=st.dictionaries(toml_item.map(str.lower), toml_text, max_size=2).map(
            lambda d: tuple(d.items())
        ),
        tags=st.dictionaries(toml_item, toml_text, max_size=2).map(lambda d: tuple(d.items())),
        min_size=st.none() | st.integers(0, 1000),
        max_size=st.none() | st.integers(1000, 2**40),
        sinks=st.lists(toml_item, max_size=2).map(tuple),
    ),
    max_size=3,
    unique_by=lambda rule: rule.name,
)


@settings(max_examples=200)
@given(rules=round_trip_rules)
def test_toml_round_trip_property(tmp_path_factory, rules):
    path = tmp_path_factory.mktemp("rt") / "rules.toml"
    path.write_text(rules_to_toml(rules), encoding="utf-8")
    assert rules_from_toml(path) == rules


def test_a_multi_object_delete_matches_when_any_of_its_objects_does() -> None:
    """MinIO's DeleteObjects audit entry lists every object of the request: one event whose
    key filters match when one of its objects matches (senders.md §4.5)."""
    entry = {
        "version": "1", "time": "2026-03-04T10:11:12.345Z", "event": "", "trigger": "incoming",
        "api": {"name": "DeleteObjects", "bucket": "reports", "status": "OK", "statusCode": 200,
                "objects": [{"objectName": "q1/a.pdf"}, {"objectName": "q2/é.pdf"},
                            {"objectName": "q3/c.csv", "versionId": "v1"}]},
        "remotehost": "198.51.100.7", "requestID": "184A2B7C9D0E0001", "accessKey": "k",
    }  # fmt: skip
    (event,) = parse_body(json.dumps(entry).encode(), {}, "minio").events
    assert event.objects == ("q1/a.pdf", "q2/é.pdf", "q3/c.csv") and event.key == ""
    q2 = Router([Rule("q2", prefix="q2/", sinks=("file:x",))], ["file:x"])
    assert q2.matches("file:x", event)
    pdf_in_q3 = Router([Rule("r", prefix="q3/", suffix=".pdf", sinks=("file:x",))], ["file:x"])
    assert not pdf_in_q3.matches("file:x", event)  # one object must match every key filter
    (compiled,) = pdf_in_q3._compiled
    assert "none of the objects" in (compiled.why_not(event) or "")
