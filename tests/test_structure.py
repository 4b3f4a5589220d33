"""The package's shape, measured on the source (the redesign's promises stay kept):

* no import cycle between robustdistill modules - counting imports inside functions and under
  ``TYPE_CHECKING``, not only the top-level ones;
* no private name (``_x``) imported from another module;
* no function longer than 60 lines, and a median function of at most 12 lines.
"""

from __future__ import annotations

import ast
import statistics
from pathlib import Path

import robustdistill

PACKAGE = Path(robustdistill.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    relative = Path(*name.split("."))
    return (PACKAGE.parent / relative.with_suffix(".py")).is_file() or (PACKAGE.parent / relative / "__init__.py").is_file()


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(absolute module, imported names)`` of every import in a file, wherever it appears."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names = [alias.name for alias in node.names]
            out.append((base, names))
            out.extend((f"{base}.{n}", []) for n in names if is_module(f"{base}.{n}"))  # `from . import x`
        elif isinstance(node, ast.Import):
            out.extend((alias.name, []) for alias in node.names)
    return out


def module_graph() -> dict[str, set[str]]:
    """Module -> the robustdistill modules it imports (a package's own ``__init__`` is not an edge of its children)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        targets = {m for m, _ in imports(path) if m.startswith("robustdistill") and is_module(m)}
        graph[name] = {t for t in targets if t != name and not name.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, stack + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def function_lengths() -> dict[str, int]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out[f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}"] = node.end_lineno - node.lineno + 1
    return out


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle() -> None:
    graph = module_graph()
    assert len(graph) > 60 and "robustdistill.methods.spec" in graph["robustdistill.methods.ard"]
    assert find_cycle(graph) is None, find_cycle(graph)


def test_no_private_name_is_imported_from_another_module() -> None:
    offenders = [f"{path.relative_to(PACKAGE.parent)} imports {name} from {module}"
                 for path in PACKAGE.rglob("*.py") for module, names in imports(path)
                 for name in names if name.startswith("_") and not name.endswith("__")]  # dunders are public
    assert offenders == []


def test_functions_are_small() -> None:
    lengths = function_lengths()
    too_long = {where: n for where, n in lengths.items() if n > 60}
    assert too_long == {}
    assert statistics.median(lengths.values()) <= 12
