"""The import contract: layers of `rgap_bench` import in one direction only.

Read from the bottom: neutral records and helpers (errors, types, losses, options) import nothing above them;
`linalg` and `models` build only on those; attacks see the model and the update, never the client side (`fl`), the
data or the scoring (`metrics`); defences run on the client but need nothing from `fl`; the rank analysis does not
depend on an attack. The walk reads every `import` in the source, inside functions too, so an import hidden in a
function body to dodge a cycle still counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "rgap_bench"
PACKAGE = "rgap_bench"
NEUTRAL = ("errors", "types", "losses", "options")  # the bottom layer: records and helpers every layer may use

# (importer package, imported packages it must never use)
FORBIDDEN = {
    "attacks": ("data", "metrics", "fl"),
    "defenses": ("fl",),
    "rank": ("attacks",),
}
# (package, packages it may use besides itself); everything else of rgap_bench is forbidden
ONLY = {
    "errors": (),
    "losses": ("errors",),
    "options": ("errors",),
    "types": ("errors", "losses"),
    "linalg": NEUTRAL,
    "models": NEUTRAL,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_in(source: str, module: str, is_package: bool = False) -> list[tuple[str, int]]:
    """Every rgap_bench module that `module`'s source imports (absolute names), with its line, wherever the import
    statement sits; `from rgap_bench import fl` counts as importing `rgap_bench.fl`."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base == PACKAGE:
                found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
            else:
                found.append((base, node.lineno))
    return [(name, line) for name, line in found if name == PACKAGE or name.startswith(PACKAGE + ".")]


def top(name: str) -> str:
    """The first-level package or module of an rgap_bench name (`rgap_bench.fl.client` -> `fl`)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def all_imports() -> list[tuple[str, str, int]]:
    """(importer, imported, line) for every rgap_bench import in the package."""
    edges = []
    for path in sorted(ROOT.rglob("*.py")):
        importer = module_name(path)
        imports = imports_in(path.read_text(), importer, is_package=path.name == "__init__.py")
        edges += [(importer, imported, line) for imported, line in imports]
    return edges


def violations(edges: list[tuple[str, str, int]]) -> list[str]:
    """Every import that breaks the contract, as `importer:line imports imported (rule)`."""
    found = []
    for importer, imported, line in edges:
        src, dst = top(importer), top(imported)
        if dst in ("", src):
            continue
        if dst in FORBIDDEN.get(src, ()):
            found.append(f"{importer}:{line} imports {imported} ({src} never imports {dst})")
        elif src in ONLY and dst not in ONLY[src]:
            allowed = ", ".join(ONLY[src]) or "nothing"
            found.append(f"{importer}:{line} imports {imported} ({src} may import only {allowed})")
    return found


def test_the_walk_sees_hidden_and_relative_imports_and_the_rules_catch_them():
    source = "def f():\n    from rgap_bench.fl import client\n    import rgap_bench.metrics\nfrom ..data import base\n"
    source += "from rgap_bench import fl\nfrom . import labels\n"
    names = {name for name, _ in imports_in(source, "rgap_bench.attacks.probe")}
    assert names == {"rgap_bench.fl", "rgap_bench.metrics", "rgap_bench.data", "rgap_bench.attacks"}
    assert len(violations([("rgap_bench.attacks.probe", name, 1) for name in sorted(names)])) == 3
    assert violations([("rgap_bench.linalg.x", "rgap_bench.models.layers", 1)])
    assert violations([("rgap_bench.types", "rgap_bench.fl.client", 1)])
    assert not violations([("rgap_bench.linalg.x", "rgap_bench.errors", 1), ("rgap_bench.fl.x", "rgap_bench.data", 1)])


def test_every_import_follows_the_layer_contract():
    found = violations(all_imports())
    assert not found, "imports against the layer contract:\n" + "\n".join(found)
