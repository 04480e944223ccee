"""The package's layout holds: no import cycles, imports point down the pipeline, long modules say why.

Read from the source with ``ast`` (function-level lazy imports count: a
lazy import is still a dependency, only a later one), so the check needs no
import of netblock and sees every ``import`` statement, wherever it sits.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "netblock"

# Higher imports lower, never the reverse; the same rank may import itself.
# commands > run > decide/reports > sources/store/firewall > model/errors.
# config is the operator's decisions: it names backends (firewall) and parses
# targets (decide), and nothing below decide reads it.
RANKS = [
    (4, ("netblock.cli", "netblock.__main__", "netblock.commands")),
    (3, ("netblock.run",)),
    (2, ("netblock.decide", "netblock.reports", "netblock.config")),
    (1, ("netblock.sources", "netblock.store", "netblock.firewall", "netblock.system", "netblock.demo")),
    (0, ("netblock.errors", "netblock.model", "netblock.clock", "netblock.printable", "netblock.limits",
         "netblock.aggregate", "netblock.durations", "netblock.lazynp")),
]
TOP = "netblock"  # the package itself: its __version__ only

LONG = 600
REASON = "Why this module is long:"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int, list[str]]]:
    """(imported module, line, names imported from it) of every netblock import in one module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, []) for a in node.names if a.name.split(".")[0] == TOP]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != TOP:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:  # `from netblock.run import daemon`: the module daemon
                    found.append((sub, node.lineno, []))
                else:
                    found.append((target, node.lineno, [alias.name]))
    return found


def rank(name: str) -> int | None:
    for r, prefixes in RANKS:
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return r
    return None


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: {t for t, _, _ in imports(name, path, known) if t in known and t != name}
            for name, path in mods.items()}


def test_every_module_has_a_rank():
    assert [m for m in modules() if m != TOP and rank(m) is None] == []


def test_imports_point_down():
    mods = modules()
    known = set(mods)
    upward = []
    for name, path in mods.items():
        for target, line, _ in imports(name, path, known):
            if target == TOP or target == name:
                continue
            if rank(target) > rank(name):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name} (rank {rank(name)}) "
                              f"imports {target} (rank {rank(target)})")
    assert upward == []


def test_no_import_cycles():
    g = graph()
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(g[node]):
            if nxt.startswith(node + "."):  # a package importing its own submodules is not a cycle
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node)
    assert cycles == []


def test_no_module_imports_another_modules_private_names():
    mods = modules()
    known = set(mods)
    private = [f"{path.relative_to(PACKAGE.parent)}:{line}: {name} imports {target}.{n}"
               for name, path in mods.items()
               for target, line, names in imports(name, path, known)
               for n in names if n.startswith("_") and not n.startswith("__") and target != name]
    assert private == []


def test_long_modules_say_why_at_their_top():
    unexplained = []
    for name, path in modules().items():
        text = path.read_text()
        if text.count("\n") > LONG and REASON not in (ast.get_docstring(ast.parse(text)) or ""):
            unexplained.append(f"{path.relative_to(PACKAGE.parent)}: {text.count(chr(10))} lines")
    assert unexplained == []


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The checker itself: a function-level import and a relative one are both found."""
    pkg = tmp_path / "netblock" / "sub"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    mod = pkg / "m.py"
    mod.write_text("def f():\n    from netblock.run import daemon\n\nfrom ..errors import BadInput\n")
    found = imports("netblock.sub.m", mod, {"netblock.run.daemon"})
    assert ("netblock.run.daemon", 2, []) in found and ("netblock.errors", 4, ["BadInput"]) in found


def test_every_package_is_shipped():
    """A new subpackage (firewall/netlink, say) must be listed in pyproject.toml, or the Debian package lacks it."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py")}
    assert found - listed == set()
