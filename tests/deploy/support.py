"""Readers for the deployment files, shared by the tests in this package: a line parser for the
Dockerfile, the .dockerignore matcher, and the metric names a PromQL expression uses."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


# -- Dockerfile ------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, ENV…
    args: str  # the rest of the (joined) line
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction (CMD ["a", "b"]), or None."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, f"expected one {keyword} in stage {self.name!r}, found {found}"
        return found[0]

    def env(self) -> dict[str, str]:
        """ENV key=value pairs, in order (the legacy `ENV key value` form is refused)."""
        values: dict[str, str] = {}
        for inst in self.all("ENV"):
            for word in shlex.split(inst.args):
                key, sep, value = word.partition("=")
                assert sep, f"line {inst.line}: use ENV key=value, not {word!r}"
                values[key] = value
        return values


@dataclass
class Dockerfile:
    args: dict[str, str]  # ARGs before the first FROM, with their defaults
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions with their continuation lines joined; comments and blank lines dropped.
    Enough for the instructions this repository's Dockerfile uses (no heredocs)."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        line = pending + stripped
        pending = ""
        keyword, _, rest = line.partition(" ")
        inst = Instruction(keyword.upper(), rest.strip(), start)
        if inst.keyword == "FROM":
            words = inst.args.split()
            base = words[0]
            for key, value in args.items():
                base = base.replace("${" + key + "}", value).replace("$" + key, value)
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(base, name))
        elif not stages:
            assert inst.keyword == "ARG", f"line {start}: only ARG may come before FROM"
            key, _, default = inst.args.partition("=")
            args[key] = default
        else:
            stages[-1].instructions.append(inst)
    assert not pending, "the Dockerfile ends inside a continued line"
    return Dockerfile(args, stages)


def read_dockerfile() -> Dockerfile:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


# -- .dockerignore -----------------------------------------------------------------------------


class DockerIgnore:
    """Docker's rules: patterns in order, the last one matching a path (or one of its parent
    directories) decides; `!` re-includes; `*` and `?` stop at `/`, `**` crosses directories."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str], str]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            pattern = line[1:].strip() if negated else line
            pattern = pattern.strip("/")
            self.rules.append((negated, _glob(pattern), pattern))

    def excluded(self, path: str) -> bool:
        parts = path.strip("/").split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        result = False
        for negated, regex, _ in self.rules:
            if any(regex.fullmatch(p) for p in prefixes):
                result = not negated
        return result

    def may_include_below(self, directory: str) -> bool:
        """Whether a `!` pattern could re-include something under an excluded directory."""
        return any(
            negated and (pattern.startswith(directory + "/") or pattern.startswith("**"))
            for negated, _, pattern in self.rules
        )


def _glob(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def build_context(root: Path) -> list[str]:
    """The files (relative paths) `docker build root` sends, after .dockerignore."""
    ignore = DockerIgnore((root / ".dockerignore").read_text())
    files: list[str] = []
    for path in sorted(root.iterdir()):
        _walk(root, path, ignore, files)
    return files


def _walk(root: Path, path: Path, ignore: DockerIgnore, files: list[str]) -> None:
    rel = path.relative_to(root).as_posix()
    if path.is_dir() and not path.is_symlink():
        if ignore.excluded(rel) and not ignore.may_include_below(rel):
            return
        for child in sorted(path.iterdir()):
            _walk(root, child, ignore, files)
    elif not ignore.excluded(rel):
        files.append(rel)


# -- PromQL --------------------------------------------------------------------------------------

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
             "group_left", "group_right", "inf", "nan"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers left once strings, label matchers,
    ranges and grouping clauses are taken out, that are not called as functions."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers (Grafana's $sink is in there)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # ranges, subqueries, $__rate_interval
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.$])[A-Za-z_:][\w:]*(?![\w:])(?!\s*\()", text):
        if match.group(0).lower() not in _KEYWORDS:
            names.add(match.group(0))
    return names


# -- Kubernetes ---------------------------------------------------------------------------------


def relay_shutdown_budget(env: dict[str, str]) -> float:
    """Seconds the relay may need after SIGTERM: ingest drain and batch settling may each take
    RELAY_SHUTDOWN_TIMEOUT, then every sink gets 5 s to close (relay/app.py `serve`)."""
    from relay.config import parse_duration

    timeout = (
        env.get("RELAY_SHUTDOWN_TIMEOUT") or read_dockerfile().final.env()["RELAY_SHUTDOWN_TIMEOUT"]
    )
    return 2 * parse_duration(timeout) + 5


def env_values(container: dict) -> dict[str, str]:  # type: ignore[type-arg]
    """A container's literal env values (valueFrom entries left out)."""
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


def secret_ref(container: dict, name: str) -> tuple[str, str]:  # type: ignore[type-arg]
    """(secret, key) of an env entry set from a Secret."""
    entry = next(e for e in container.get("env", []) if e["name"] == name)
    ref = entry["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def check_relay_pod(pod: dict, container: dict, claims: set[str]) -> None:  # type: ignore[type-arg]
    """What every pod running the relay needs: probes on the image's port, a non-root,
    read-only, capability-less container, the log on a PVC, /tmp on an emptyDir, time to stop."""
    image = read_dockerfile().final
    uid = int(image.one("USER").args.split(":")[0])
    port = int(image.one("EXPOSE").args)
    data_dir = image.env()["RELAY_DATA_DIR"]

    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    assert port in ports.values()

    def probe(kind: str) -> tuple[str, int]:
        get = container[kind]["httpGet"]
        target = get["port"]
        return get["path"], ports[target] if isinstance(target, str) else target

    assert probe("livenessProbe") == ("/healthz", port)
    assert probe("readinessProbe") == ("/readyz", port)
    assert probe("startupProbe") == ("/healthz", port)

    pod_security = pod.get("securityContext", {})
    security = {**pod_security, **container["securityContext"]}
    assert security["runAsNonRoot"] is True
    assert security.get("runAsUser", uid) == uid
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert not security["capabilities"].get("add")
    assert pod_security.get("fsGroup") == uid  # the PVC is writable by the image's group

    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert set(mounts) == {data_dir, "/tmp"}, "the only writable paths of a read-only root"
    data = mounts[data_dir]
    if data in volumes:
        assert volumes[data]["persistentVolumeClaim"]["claimName"] in claims
    else:
        assert data in claims  # a StatefulSet's volumeClaimTemplate
    assert "emptyDir" in volumes[mounts["/tmp"]]

    assert pod["terminationGracePeriodSeconds"] > relay_shutdown_budget(env_values(container))
