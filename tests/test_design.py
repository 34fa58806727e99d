"""docs/DESIGN.md shows the house, and this keeps it true.

* Its module table names every module of the package (``ls artifactfs/ artifactfs/registry/``)
  and nothing else.
* Every layer of its stack diagram is a module or a folder that exists, every module stands in
  exactly one layer, and every import in the package (at the top of a module, inside a function,
  or for type checking only) goes to the module's own layer or one below it: no arrow runs back
  up the stack.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "artifactfs"
DESIGN = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
_TOKEN = re.compile(r"(?<![\w/.])((?:\w+/)?\w+\.py|\w+/)(?![\w/])")


def _modules() -> set[str]:
    return {p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py")}


def _section(title: str) -> str:
    start = DESIGN.index(f"\n## {title}\n")
    end = DESIGN.find("\n## ", start + 1)
    return DESIGN[start : end if end >= 0 else None]


def _layers() -> list[set[str]]:
    """The stack diagram's layers, top first, each the set of modules it holds."""
    block = _section("Stack").split("```")[1]
    modules = _modules()
    layers = []
    for line in block.splitlines():
        names: set[str] = set()
        for token in _TOKEN.findall(line):
            if token.endswith("/"):
                assert (PKG / token).is_dir(), f"the stack names {token}, which is no folder of the package"
                names |= {m for m in modules if m.startswith(token)}
            else:
                assert token in modules, f"the stack names {token}, which is no module of the package"
                names.add(token)
        if names:
            layers.append(names)
    return layers


def _imports(module: str) -> set[str]:
    """The package's modules that ``module`` imports, anywhere in it."""
    path = PKG / module
    here = Path(module).parent
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        base = here
        for _ in range(node.level - 1):
            base = base.parent
        target = base / node.module.replace(".", "/") if node.module else base
        for alias in node.names:
            for candidate in (f"{target}/{alias.name}.py", f"{target}.py", f"{target}/__init__.py"):
                name = candidate.removeprefix("./")
                if (PKG / name).is_file():
                    out.add(name)
                    break
    return out - {module}


def test_the_module_table_lists_the_package() -> None:
    table = _section("Modules")
    named: set[str] = set()
    for row in table.splitlines():
        if row.startswith("| `"):
            named |= set(re.findall(r"`([\w/]+\.py)`", row.split("|")[1]))
    modules = _modules()
    assert sorted(modules - named) == [], "modules missing from the table in docs/DESIGN.md"
    assert sorted(named - modules) == [], "the table in docs/DESIGN.md names modules that do not exist"


def test_every_module_stands_in_one_layer_of_the_stack() -> None:
    layers = _layers()
    for module in sorted(_modules()):
        places = [i for i, layer in enumerate(layers) if module in layer]
        assert len(places) == 1, f"{module} stands in {len(places)} layers of the stack diagram"


def test_no_import_runs_back_up_the_stack() -> None:
    layers = _layers()
    level = {m: i for i, layer in enumerate(layers) for m in layer}  # 0 is the top
    upward = [
        f"{module} -> {imported}"
        for module in sorted(level)
        for imported in sorted(_imports(module))
        if level[imported] < level[module]
    ]
    assert upward == []
