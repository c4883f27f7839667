"""A renderer for the small subset of Helm's template language that deploy/helm uses.

This is NOT helm, and not Go's text/template: there is no helm binary in CI, and Go templates
cannot be rendered faithfully in Python. The chart's templates are kept to these constructs,
which this module renders the way Helm does:

    {{ .Values.a.b }}  {{ .Release.Name }}           a value (string, number, bool)
    {{ toYaml .Values.x | nindent N }}               YAML of a map or list, on new lines
    {{- if .Values.x }} … {{- end }}                 Go's truthiness: false, 0, "", empty = false
    {{- if not .Values.x }} … {{- end }}             its negation (Go's `not`)
    {{- … -}}                                        whitespace trimming, as in Go

Anything else (include, default, quote, else, range, with, variables, comments…) raises
TemplateError: a template that outgrows the subset fails in CI instead of rendering wrongly.
Run `helm template` / `helm lint` wherever helm is available.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.S)
_PATH = re.compile(r"\.(?:Values|Release)(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


class TemplateError(Exception):
    pass


def render(template: str, values: dict[str, Any], release: dict[str, Any]) -> str:
    context = {"Values": values, "Release": release}
    pieces: list[str | tuple[str, int]] = []  # text, or (action, line)
    position = 0
    for match in _ACTION.finditer(template):
        text = template[position : match.start()]
        if match.group(1):  # {{- trims the whitespace before
            text = text.rstrip(" \t\r\n")
        if pieces and isinstance(pieces[-1], str) and pieces[-1] == "\x00trim":
            pieces.pop()
            text = text.lstrip(" \t\r\n")
        pieces.append(text)
        pieces.append((match.group(2), template.count("\n", 0, match.start()) + 1))
        if match.group(3):  # -}} trims the whitespace after
            pieces.append("\x00trim")
        position = match.end()
    tail = template[position:]
    if pieces and pieces[-1] == "\x00trim":
        pieces.pop()
        tail = tail.lstrip(" \t\r\n")
    pieces.append(tail)

    out: list[str] = []
    stack: list[bool] = []  # one entry per open `if`: whether its body is rendered
    for piece in pieces:
        if isinstance(piece, str):
            if all(stack):
                out.append(piece)
            continue
        action, line = piece
        if action.startswith("if not "):
            stack.append(all(stack) and not _truthy(_lookup(action[7:].strip(), context, line)))
        elif action.startswith("if "):
            stack.append(all(stack) and _truthy(_lookup(action[3:].strip(), context, line)))
        elif action == "end":
            if not stack:
                raise TemplateError(f"line {line}: `end` without `if`")
            stack.pop()
        elif all(stack):
            out.append(_evaluate(action, context, line))
        else:
            _check(action, line)  # unsupported constructs fail even in a false branch
    if stack:
        raise TemplateError("an `if` is not closed by `end`")
    return "".join(out)


def _evaluate(action: str, context: dict[str, Any], line: int) -> str:
    match = re.fullmatch(r"toYaml\s+(\S+)\s*\|\s*nindent\s+(\d+)", action)
    if match:
        return _nindent(_to_yaml(_lookup(match.group(1), context, line)), int(match.group(2)))
    return _scalar(_lookup(action, context, line), line)


def _check(action: str, line: int) -> None:
    if re.fullmatch(r"toYaml\s+(\S+)\s*\|\s*nindent\s+(\d+)", action):
        return
    if not _PATH.fullmatch(action):
        raise TemplateError(f"line {line}: {{{{ {action} }}}} is outside the supported subset")


def _lookup(path: str, context: dict[str, Any], line: int) -> Any:
    if not _PATH.fullmatch(path):
        raise TemplateError(f"line {line}: {{{{ {path} }}}} is outside the supported subset")
    value: Any = context
    for part in path.split(".")[1:]:
        if not isinstance(value, dict) or part not in value:
            raise TemplateError(f"line {line}: {path} is not defined")
        value = value[part]
    return value


def _truthy(value: Any) -> bool:
    return bool(value)  # Go: false, 0, "", nil and empty maps/lists are false, as in Python


def _scalar(value: Any, line: int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        # Helm reads numbers from values files as float64 and prints them with %v: 1000000
        # becomes 1e+06. Refuse what would print differently.
        if isinstance(value, float) and not value.is_integer():
            return repr(value)
        if abs(value) >= 1_000_000:
            raise TemplateError(f"line {line}: helm prints {value} as 1e+06…; quote it")
        return str(int(value))
    if isinstance(value, str):
        return value
    raise TemplateError(f"line {line}: a {type(value).__name__} needs toYaml, not {{{{ }}}}")


def _to_yaml(value: Any) -> str:
    # Helm's toYaml: sorted keys, block style, no trailing newline.
    text = yaml.safe_dump(value, default_flow_style=False, sort_keys=True)
    text = text.removesuffix("\n").removesuffix("\n...")
    return text


def _nindent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n" + pad + text.replace("\n", "\n" + pad)


def render_chart(chart: Path, values: dict[str, Any], release_name: str) -> dict[str, str]:
    """Every template of the chart (not the `_` partials, not NOTES.txt), rendered."""
    release = {"Name": release_name, "Namespace": "default", "Service": "Helm"}
    rendered = {}
    for template in sorted((chart / "templates").glob("*.yaml")):
        if template.name.startswith("_"):
            continue
        rendered[template.name] = render(template.read_text(), values, release)
    return rendered


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`helm --set`/`-f` merging: maps merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged
