"""The core is laid out by role (docs/architecture.md): a newcomer finds a helper from its role in one look."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import gotel

ROOT = Path(gotel.__file__).parent
ARCH = Path(__file__).resolve().parents[3] / "docs" / "architecture.md"


def _packages() -> list[Path]:
    return sorted(p for p in ROOT.iterdir() if p.is_dir() and p.name != "__pycache__")


def test_gotel_holds_packages_only() -> None:
    loose = sorted(p.name for p in ROOT.glob("*.py") if p.name not in {"__init__.py", "__main__.py"})
    assert loose == [], f"modules outside a role package: {loose}"


def test_every_package_says_its_role() -> None:
    for pkg in _packages():
        init = pkg / "__init__.py"
        assert init.is_file(), f"{pkg.name}/ is not a package"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 4, f"gotel/{pkg.name}/__init__.py has no docstring naming its role"


def test_architecture_lists_every_package_and_module() -> None:
    text = ARCH.read_text().split("## The core", 1)[1]
    listed = set(re.findall(r"^\| `(\w+)/` \|", text, re.M))
    assert listed >= {p.name for p in _packages()}, sorted({p.name for p in _packages()} - listed)
    for pkg in _packages():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{pkg.name}/` |"))
        for mod in sorted(pkg.glob("*.py")):
            if mod.name == "__init__.py" or pkg.name == "proto":
                continue
            stem = mod.stem
            named = f"`{mod.name}`" in row or (stem.startswith("usdt") and "`usdt*.py`" in row)
            assert named, f"docs/architecture.md does not name gotel/{pkg.name}/{mod.name}"


# The two places the core names a component on purpose, each with its reason.
ALLOWED = {
    # the internal OTLP entry point is the otlp receiver's server, imported by module so that a third-party
    # `otlp` entry point can never replace the socket receiver processes write to
    "service/internal.py: gotel.receivers",
}


# What runs components itself rather than serving them: the command line and `gotel diagnose`'s gathering
# (it starts the go_ebpf, sched and net receivers and the pprof receiver's fetcher in its own process).
APPLICATIONS = ("cli", "diagnose")


def test_core_imports_no_component() -> None:
    plugins = ("gotel.receivers", "gotel.processors", "gotel.exporters", "gotel.connectors", "gotel.extensions")
    offenders = []
    for f in ROOT.rglob("*.py"):
        if "proto" in f.parts or f.relative_to(ROOT).parts[0] in APPLICATIONS:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            offenders += [f"{f.relative_to(ROOT)}: {n}" for n in names if n.startswith(plugins)]
    assert sorted(set(offenders) - ALLOWED) == []
