"""The data flows one way: the library never imports the synthetic world or the app.

Imports are read with ``ast`` (including those inside functions, the lazy kind that slips past a glance).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "capnet"
# The command line sits on top of everything, as app/ does: it may reach the world's commands.
FRONT_ENDS = {"cli.py"}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _violations(package: Path = PACKAGE) -> list[str]:
    bad = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        in_world = rel.parts[0] == "world"
        for name in sorted(_imports(path)):
            if (
                name == "app"
                or name.startswith("app.")
                or name.startswith("capnet.world")
                and not in_world
                and str(rel) not in FRONT_ENDS
            ):
                bad.append(f"{rel} imports {name}")
    return bad


def test_library_imports_neither_world_nor_app():
    assert _violations() == []


def test_the_check_sees_a_lazy_import(tmp_path):
    """The walker finds an import hidden inside a function (a check that could never fail is no check)."""
    fake = tmp_path / "capnet"
    (fake / "world").mkdir(parents=True)
    (fake / "model.py").write_text("def f():\n    from capnet.world.scenes import scene_batch\n")
    (fake / "world" / "ok.py").write_text("import capnet.engine\n")
    assert _violations(fake) == [
        "model.py imports capnet.world.scenes",
        "model.py imports capnet.world.scenes.scene_batch",
    ]
