"""One-way import direction of docs/architecture.md, checked on the AST of every module under src/attngan.

A module may import only from lower layers (plus its own package); the same-layer exceptions are
legacy -> checkpoint, pipeline -> viz and, in layer 0, config/text/atomic -> errors and text -> atomic; data never imports nn; layer 0 uses the stdlib and numpy only
(and may import errors); nn uses torch/torchvision/numpy only; nothing imports cli or serve except
``__main__``. The package root (the public API) counts as layer 3.5: it may re-export layers <= 3.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import attngan

SRC = Path(attngan.__file__).parent
LAYERS = {"config": 0, "text": 0, "errors": 0, "atomic": 0, "nn": 1, "losses": 2, "checkpoint": 2, "legacy": 2, "data": 2}
LAYERS["model_dir"] = 2  # finds the model folder behind a user's path (file names only)
LAYERS |= {"pipeline": 3, "metrics": 3, "viz": 3, "training": 4, "cli": 5, "serve": 5, "": 3.5, "__main__": 6}
LAYERS["evaluation"] = 4  # like training: composes pipeline, data and metrics (evaluate command)
ALLOWED = {
    ("legacy", "checkpoint"),
    ("pipeline", "viz"),
    ("config", "errors"),
    ("text", "errors"),
    ("atomic", "errors"),
    ("text", "atomic"),
    ("cli", "serve"),  # the CLI is the thin front of every layer-5 entry point
}
FORBIDDEN = {("data", "nn")}
EXTERNAL = {0: {"numpy"}, 1: {"numpy", "torch", "torchvision"}}  # third-party packages a layer may use


def _module(path: Path) -> tuple[str, bool]:
    parts = ("attngan",) + path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts), parts[-1] == "__init__"


def _unit(module: str) -> str | None:
    """'' for the package root, the top-level unit (nn, data, cli, ...) or None for other packages."""
    parts = module.split(".")
    if parts[0] != "attngan":
        return None
    known = len(parts) > 1 and (
        parts[1] in LAYERS or (SRC / parts[1]).is_dir() or (SRC / f"{parts[1]}.py").exists()
    )
    if not known:
        return ""  # `import attngan` / `from attngan import Name` runs the package root
    return parts[1]


def _imports(path: Path):
    """(line, imported module) for every import statement, relative imports resolved."""
    name, is_pkg = _module(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            yield from ((node.lineno, f"{base}.{a.name}" if _unit(base) == "" else base) for a in node.names)


def _files():
    return sorted(SRC.rglob("*.py"))


def test_every_module_has_a_layer():
    unknown = sorted({_unit(_module(p)[0]) for p in _files()} - set(LAYERS))
    assert not unknown, f"modules without a layer in docs/architecture.md (and this test): {unknown}"


def test_import_direction():
    bad = []
    for path in _files():
        src = _unit(_module(path)[0])
        if src not in LAYERS:
            continue
        for line, target in _imports(path):
            dst, top = _unit(target), target.split(".")[0]
            where = f"{path.relative_to(SRC.parent)}:{line} ({src or 'attngan'}, layer {LAYERS[src]}) imports {target}"
            if dst is None:
                allowed = EXTERNAL.get(LAYERS[src])
                if allowed is not None and top not in allowed and top not in sys.stdlib_module_names:
                    bad.append(f"{where}: layer {LAYERS[src]} may use only the stdlib and {sorted(allowed)}")
            elif dst != src and dst in LAYERS:
                lower = LAYERS[dst] < LAYERS[src] and dst not in ("cli", "serve")
                if (src, dst) in FORBIDDEN or not (lower or (src, dst) in ALLOWED or src == "__main__"):
                    bad.append(f"{where} ({dst or 'attngan'}, layer {LAYERS[dst]})")
    assert not bad, "imports against the layer rules of docs/architecture.md:\n" + "\n".join(bad)


def _module_level_imports(path: Path):
    """Modules imported when ``path`` is imported: top-level statements only (not inside functions, not under
    ``if TYPE_CHECKING``), relative imports resolved; ``from pkg import name`` counts ``pkg.name`` when that
    is a module of the package, else ``pkg``."""
    name, is_pkg = _module(path)
    known = {_module(p)[0] for p in _files()}
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            for a in node.names:
                yield f"{base}.{a.name}" if f"{base}.{a.name}" in known else base


def test_no_import_cycle():
    modules = {_module(p)[0]: p for p in _files()}
    graph = {m: {t for t in _module_level_imports(p) if t in modules and t != m} for m, p in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(path[path.index(t) :] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
