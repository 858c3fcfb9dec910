"""The import graph of src/csa: no cycle among csa's modules, and csa.nn stays below the rest.

Every module under src/csa is parsed with ``ast`` (nothing is imported). Every import
statement counts, wherever it stands: at module level, inside functions and methods
(imports deferred for speed or to dodge a cycle are still edges), and inside
``if TYPE_CHECKING:`` blocks. Relative imports are resolved against the importing module's
package. ``from P import name`` is an edge to ``P.name`` when that is a module, else to
``P``. Importing ``a.b.c`` also runs the packages ``a`` and ``a.b``; those implicit edges to
parent packages are not counted (every submodule would otherwise "import" its package's
``__init__``, which imports the submodule back).
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "csa"
# What csa.nn may import from the rest of csa: the network code sits below everything else.
NN_MAY_IMPORT = ("csa.errors", "csa.config")


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under src/csa."""
    modules = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The csa modules that ``module`` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")} - {module}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: {t for t in imports_of(name, path, modules) if t in modules} for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_parser_sees_deferred_and_relative_imports() -> None:
    graph = import_graph()
    assert "csa.nn.attention" in graph and "csa.nn.attention.rules" in graph  # packages and their modules
    assert "csa.errors" in graph["csa.nn.attention.rules"]  # from ...errors import CsaError
    assert "csa.nn._csa_numba" in graph["csa.nn.attention.numba_backend"]  # an import inside a function


def test_no_import_cycle_in_csa() -> None:
    graph = import_graph()
    cycles = find_cycles(graph)
    # Each cycle's modules, then the edges among them (where to cut).
    described = "; ".join(
        " <-> ".join(c) + " (" + ", ".join(f"{m} -> {t}" for m in c for t in sorted(graph[m] & set(c))) + ")"
        for c in cycles
    )
    assert not cycles, f"import cycles among csa modules (imports inside functions count): {described}"


def test_csa_nn_imports_only_errors_and_config_from_the_rest_of_csa() -> None:
    graph = import_graph()
    bad = {
        module: sorted(t for t in targets if not t.startswith("csa.nn.") and t != "csa.nn" and t not in NN_MAY_IMPORT)
        for module, targets in graph.items()
        if module == "csa.nn" or module.startswith("csa.nn.")
    }
    bad = {m: t for m, t in bad.items() if t}
    assert not bad, f"csa.nn modules import from csa outside csa.nn, csa.errors and csa.config: {bad}"
