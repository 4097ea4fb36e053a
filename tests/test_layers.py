"""Imports point down (docs/architecture.md): every `import polymodal.…` in the package, at the
top of a module or inside a function, is checked against the floors below."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "polymodal"

#: package area -> areas it must never import
FORBIDDEN = {
    "data": ("eval", "train", "infer", "tasks", "cli", "demo", "compare"),
    "models": ("infer", "train", "eval", "tasks", "data", "cli", "demo", "compare"),
    "eval": ("train", "cli", "demo", "compare"),
    "infer": ("train", "cli", "demo", "compare"),
    "tasks": ("train", "cli", "demo", "compare"),
    "train": ("cli", "demo", "compare"),
    "explain": ("train", "cli", "demo", "compare"),
    "serve": ("train", "cli", "demo", "compare"),
}
#: the command-line modules of an area may reach up to the registries they resolve names in
ALLOWED = {("data/cli.py", "tasks"), ("data/cli.py", "infer")}  # `data score|dedup --model` load one


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {m for m in found if m.startswith("polymodal.")}


@pytest.mark.parametrize("area", sorted(FORBIDDEN))
def test_imports_point_down(area):
    bad = []
    for path in sorted((SRC / area).rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for module in _imports(path):
            target = module.split(".")[1]
            if target in FORBIDDEN[area] and (rel, target) not in ALLOWED:
                bad.append(f"{rel} imports {module}")
    assert not bad, bad


def test_library_never_calls_a_cli_command():
    bad = [f"{p.relative_to(SRC)} imports {m}" for p in SRC.rglob("*.py") if p.name not in ("cli.py", "__main__.py")
           for m in _imports(p) if m.endswith(".cli") or m == "polymodal.cli"]
    assert not bad, bad
