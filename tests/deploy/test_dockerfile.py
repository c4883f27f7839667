"""The Dockerfile has what a production image needs, and its build context holds only what the
image uses. (test_image.py then does what the Dockerfile does, without a Docker engine.)"""

from __future__ import annotations

import re
import subprocess
import tomllib

from relay.config import load_settings, parse_duration
from tests.deploy.support import (
    ROOT,
    DockerIgnore,
    Instruction,
    build_context,
    parse_dockerfile,
    read_dockerfile,
)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_two_stages_from_the_pinned_python_image() -> None:
    dockerfile = read_dockerfile()
    assert [s.name for s in dockerfile.stages] == ["build", "1"]
    assert dockerfile.args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    for stage in dockerfile.stages:
        assert stage.base == "python:3.11-slim-bookworm"
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    build = dockerfile.stage("build").one("RUN").args
    assert "pip wheel --no-deps" in build  # what test_image.py runs
    assert "--only-binary=:all:" in build
    assert "python -m venv /opt/relay" in build
    copied = dockerfile.final.one("COPY").args
    assert copied == "--from=build /opt/relay /opt/relay"  # the venv only, no wheels or pip cache


def test_runtime_stage_runs_unprivileged_and_read_only_friendly() -> None:
    final = read_dockerfile().final
    user = final.one("USER").args
    assert re.fullmatch(r"\d+:\d+", user), "numeric, so runAsNonRoot can check it"
    uid, gid = (int(x) for x in user.split(":"))
    assert uid == 10001 and gid == 10001
    run = final.one("RUN").args
    assert f"useradd --system --uid {uid} --gid {gid}" in run
    assert f"install -d -o {uid} -g {gid}" in run and "/data" in run
    env = final.env()
    assert env["RELAY_DATA_DIR"] == "/data"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["TMPDIR"] == "/tmp"
    assert env["HOME"] == "/data"
    assert env["PATH"].startswith("/opt/relay/bin:")
    assert final.one("WORKDIR").args == "/data"
    settings = load_settings(env)  # every RELAY_* the image sets is valid
    assert settings.data_dir == "/data"
    assert settings.shutdown_timeout == parse_duration(env["RELAY_SHUTDOWN_TIMEOUT"]) > 0


def test_volume_port_signal_healthcheck_and_entrypoint() -> None:
    final = read_dockerfile().final
    env = final.env()
    assert final.one("VOLUME").exec_form() == [env["RELAY_DATA_DIR"]]
    port = final.one("EXPOSE").args
    assert port == "8080"
    assert load_settings(env).listen_port == int(port)
    assert final.one("STOPSIGNAL").args == "SIGTERM"
    assert final.one("ENTRYPOINT").exec_form() == ["relay"]
    assert final.one("CMD").exec_form() == ["serve"]
    health = final.one("HEALTHCHECK").args
    options, _, command = health.partition(" CMD ")
    assert "--interval=" in options and "--timeout=" in options and "--start-period=" in options
    argv = Instruction("CMD", command, 0).exec_form()
    assert argv and argv[0] == "python" and "/healthz" in argv[-1]  # slim has no curl


def test_the_build_context_is_only_what_the_image_uses() -> None:
    files = build_context(ROOT)
    assert "pyproject.toml" in files and "README.md" in files
    assert "relay/app.py" in files and "relay/queue/schema.sql" in files
    outside = [f for f in files if f not in ("pyproject.toml", "README.md")
               and not f.startswith("relay/")]  # fmt: skip
    assert outside == []
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    # what the build stage copies is all in the context
    for inst in read_dockerfile().stage("build").all("COPY"):
        *sources, _ = inst.args.split()
        for source in sources:
            assert any(f == source or f.startswith(source + "/") for f in files), source


def test_dockerignore_rules_follow_docker() -> None:
    ignore = DockerIgnore("*\n!relay\n**/__pycache__\n!keep/**/x.txt\n")
    assert ignore.excluded(".venv/bin/python")
    assert ignore.excluded("tests/unit/test_config.py")
    assert not ignore.excluded("relay/app.py")
    assert ignore.excluded("relay/__pycache__/app.cpython-311.pyc")
    assert ignore.excluded("relay/queue/__pycache__")
    assert not ignore.excluded("keep/a/b/x.txt")
    assert ignore.excluded("keep/a/b/y.txt")
    assert ignore.may_include_below("keep") and not ignore.may_include_below("tests")


def test_the_parser_joins_continuations_and_names_stages() -> None:
    parsed = parse_dockerfile(
        "ARG BASE=img:1\n# c\nFROM ${BASE} AS one\nRUN a \\\n  # inside\n  && b\n"
        "FROM $BASE\nENV A=1 \\\n    B='two words'\n"
    )
    assert [(s.base, s.name) for s in parsed.stages] == [("img:1", "one"), ("img:1", "1")]
    assert parsed.stage("one").one("RUN").args == "a && b"
    assert parsed.final.env() == {"A": "1", "B": "two words"}


def test_the_docker_smoke_script_matches_the_image() -> None:
    """scripts/container-smoke.sh (for hosts with a Docker engine) checks the same user and
    port; CI can only check its syntax."""
    final = read_dockerfile().final
    script = (ROOT / "scripts" / "container-smoke.sh").read_text()
    assert f'= "{final.one("USER").args}" ]' in script
    assert f':{final.one("EXPOSE").args}" -v "$volume:{final.env()["RELAY_DATA_DIR"]}"' in script
    assert subprocess.run(["bash", "-n", ROOT / "scripts" / "container-smoke.sh"]).returncode == 0
