"""YAML with line numbers and the collector's environment references.

The document is composed into nodes (not loaded) so that every value keeps the line it came from;
``${env:NAME}``, ``${NAME}``, ``${env:NAME:-default}`` and ``$$`` are expanded in scalars, and a
bad reference is reported at its line instead of aborting the load.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str, ...]

# $$ (literal $), or ${...}: the part inside the braces is checked separately so that a malformed
# reference is an error with its text, not silently left in the value.
_TOKEN = re.compile(r"\$\$|\$\{([^}]*)\}|\$\{")
_REF = re.compile(r"^(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.S)


@dataclass
class Issue:
    """One problem found in a config: where it is and what is wrong."""

    file: str
    line: int | None
    path: str
    message: str
    warning: bool = False

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        head = f"{where} {self.path}:" if self.path else f"{where}:"
        return f"{head} {'warning: ' if self.warning else ''}{self.message}"


def join_path(path: Path) -> str:
    return "::".join(path)


@dataclass
class Source:
    """The loaded document plus where each path came from."""

    file: str
    data: Any
    lines: dict[Path, int] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)

    def line(self, path: Path) -> int | None:
        """Line of the longest known prefix of path (a missing key is reported at its parent)."""
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return self.lines.get((), None)

    def error(self, path: Path, message: str, *, warning: bool = False, line: int | None = None) -> None:
        self.issues.append(Issue(self.file, line or self.line(path), join_path(path), message, warning))


def expand_env(text: str, env: Mapping[str, str]) -> tuple[str, list[str], bool]:
    """Expands references in text. Returns (value, errors, whole) where whole means the scalar
    was exactly one reference (its value is then re-typed as YAML, like the collector does)."""
    errors: list[str] = []
    whole = False
    m0 = _TOKEN.fullmatch(text)
    if m0 and m0.group(0) != "$$" and m0.group(1) is not None:
        whole = True

    def sub(m: re.Match[str]) -> str:
        tok = m.group(0)
        if tok == "$$":
            return "$"
        inner = m.group(1)
        if inner is None:
            errors.append(f"unterminated reference in {text!r}: expected ${{NAME}} or ${{env:NAME}}")
            return tok
        r = _REF.match(inner)
        if r is None:
            errors.append(
                f"malformed reference ${{{inner}}}: expected ${{NAME}}, ${{env:NAME}} or ${{env:NAME:-default}}"
            )
            return tok
        name, default = r.group(1), r.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        errors.append(f"environment variable {name} is not set (use ${{env:{name}:-default}} for a default)")
        return ""

    return _TOKEN.sub(sub, text), errors, whole


class _Builder:
    def __init__(self, src: Source, env: Mapping[str, str]) -> None:
        self.src = src
        self.env = env
        self.loader = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.src.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            self.loader.flatten_mapping(node)
            for knode, vnode in node.value:
                key = self._scalar(knode, path) if isinstance(knode, yaml.ScalarNode) else None
                if not isinstance(key, str | int | float | bool) or key is None:
                    if key is None and isinstance(knode, yaml.ScalarNode):
                        key = "null"
                    else:
                        self.src.error(path, "mapping keys must be scalars", line=knode.start_mark.line + 1)
                        continue
                skey = str(key)
                kpath = (*path, skey)
                if skey in out:
                    self.src.error(kpath, f"duplicate key {skey!r}", line=knode.start_mark.line + 1)
                self.src.lines[kpath] = knode.start_mark.line + 1
                out[skey] = self.build(vnode, kpath)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(v, (*path, str(i))) for i, v in enumerate(node.value)]
        return self._scalar(node, path)

    def _scalar(self, node: yaml.Node, path: Path) -> Any:
        assert isinstance(node, yaml.ScalarNode)
        if node.tag == "tag:yaml.org,2002:str" and "$" in node.value:
            value, errors, whole = expand_env(node.value, self.env)
            for e in errors:
                self.src.error(path, e, line=node.start_mark.line + 1)
            if whole and node.style is None and not errors:
                # An unquoted value that is one reference is typed like YAML (ports, booleans).
                try:
                    return yaml.safe_load(value) if value.strip() else value
                except yaml.YAMLError:
                    return value
            return value
        return self.loader.construct_object(node, deep=True)


def load_source(file: str, text: str | None = None, env: Mapping[str, str] | None = None) -> Source:
    """Reads and composes file; syntax errors and bad references land in Source.issues."""
    src = Source(file=file, data=None)
    if text is None:
        try:
            with open(file, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            src.issues.append(Issue(file, None, "", f"cannot read config: {e.strerror or e}"))
            return src
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        what = " ".join(x for x in (e.context, e.problem) if x)
        src.issues.append(Issue(file, line, "", f"YAML syntax error: {what}"))
        return src
    except yaml.YAMLError as e:
        src.issues.append(Issue(file, None, "", f"YAML syntax error: {e}"))
        return src
    if node is None:
        src.data = {}
        return src
    src.data = _Builder(src, os.environ if env is None else env).build(node, ())
    return src
