"""The package's shape, kept true: imports run one way, no circles, a pure core, one error tree.

    cli -> daemons, fleet -> usecases / build / sample -> delivery -> store, triton -> core -> errors, settings, faults

A module may import its own folder's modules and any folder below it, never one above or beside
it (store and triton do not know each other). ``README.md`` ("How it works") draws the same map.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from orchestrator import errors

PACKAGE = Path(__file__).resolve().parents[2] / "orchestrator"

# Lower number = lower layer. Same number, different folder: neither may import the other.
LAYERS = {
    "errors": 0, "settings": 0, "faults": 0,
    "core": 1,
    "store": 2, "triton": 2,
    "delivery": 3,
    "usecases": 4, "build": 4, "sample": 4,
    "daemons": 5, "fleet": 5,
    "cli": 6,
    "__main__": 7, "__init__": 7,
}
# The protobuf schema of config.pbtxt ships in tritonclient; only these may import tritonclient.
TRITONCLIENT_USERS = {"orchestrator.triton.client", "orchestrator.store.modelconfig", "orchestrator.triton.twin"}
CORE_THIRD_PARTY = {"numpy"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()
# The python-backend files run inside Triton's stub, not in this package's import graph.
BACKEND_FILES = {"orchestrator.sample.model", "orchestrator.sample.faulty_model"}


def _imports(module: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import, lazy ones in functions included."""
    tree = ast.parse(path.read_text())
    found = []
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [alias.name for alias in node.names]
            # "from orchestrator.triton import metrics": the submodule is what is imported.
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            found += [(sub, [], node.lineno) for sub in subs]
            rest = [n for n in names if f"{base}.{n}" not in MODULES]
            if rest or not subs:
                found.append((base, rest, node.lineno))
    return found


def _layer(module: str) -> tuple[str, int]:
    top = module.split(".")[1] if "." in module else "__init__"
    return ("base" if LAYERS[top] == 0 else top), LAYERS[top]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        if module in BACKEND_FILES:
            continue
        graph[module] = {target for target, _, _ in _imports(module, path)
                         if target.startswith("orchestrator.") and target in MODULES and target != module}
    return graph


def test_every_folder_has_a_layer() -> None:
    tops = {m.split(".")[1] for m in MODULES if m != "orchestrator"}
    assert tops <= set(LAYERS), f"add {sorted(tops - set(LAYERS))} to LAYERS and to the README's map"


def test_imports_only_go_down() -> None:
    upward = []
    for module, targets in _graph().items():
        if module == "orchestrator":
            continue
        folder, rank = _layer(module)
        for target in targets:
            if target == "orchestrator":
                continue
            other, other_rank = _layer(target)
            if other != folder and other_rank >= rank:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports against the layers:\n" + "\n".join(sorted(upward))


def test_no_import_circles() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target):], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))
    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_core_is_pure() -> None:
    """No disk formats, network, Triton client or metrics in core: stdlib, numpy and core itself."""
    impure = []
    for module, path in MODULES.items():
        if not module.startswith("orchestrator.core"):
            continue
        for target, _, line in _imports(module, path):
            root = target.split(".")[0]
            if target.startswith("orchestrator."):
                if not (target.startswith("orchestrator.core") or target == "orchestrator.errors"):
                    impure.append(f"{module}:{line} imports {target}")
            elif root not in sys.stdlib_module_names and root not in CORE_THIRD_PARTY and root != "__future__":
                impure.append(f"{module}:{line} imports {target}")
    assert not impure, "\n".join(impure)


def test_only_the_client_knows_tritonclient() -> None:
    users = {module for module, path in MODULES.items() if module not in BACKEND_FILES
             for target, _, _ in _imports(module, path) if target.split(".")[0] == "tritonclient"}
    assert users <= TRITONCLIENT_USERS, f"tritonclient imported by {sorted(users - TRITONCLIENT_USERS)}"


def test_no_private_name_crosses_a_module() -> None:
    crossing = []
    for module, path in MODULES.items():
        if module in BACKEND_FILES:
            continue
        tree = ast.parse(path.read_text())
        aliases = {}
        for target, names, line in _imports(module, path):
            if target.startswith("orchestrator"):
                crossing += [f"{module}:{line} takes {target}.{n}" for n in names
                             if n.startswith("_") and not n.startswith("__")]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases.update({(a.asname or a.name): a.name for a in node.names if a.name.startswith("orchestrator")})
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("orchestrator"):
                aliases.update({(a.asname or a.name): f"{node.module}.{a.name}" for a in node.names
                                if f"{node.module}.{a.name}" in MODULES})
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                    and node.attr.startswith("_") and not node.attr.startswith("__"):
                crossing.append(f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not crossing, "\n".join(crossing)


def test_every_error_the_cli_meets_is_in_the_one_tree() -> None:
    """Our exceptions are all defined in errors.py, listed in its drawing with their exit codes."""
    outside = []
    names = {cls.__name__ for cls in errors.ERROR_TYPES}
    for module, path in MODULES.items():
        if module == "orchestrator.errors" or module in BACKEND_FILES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                if bases & names:
                    outside.append(f"{module}: {node.name}({', '.join(sorted(bases))})")
    assert not outside, "errors defined outside errors.py:\n" + "\n".join(outside)
    drawing = errors.__doc__ or ""
    for cls in errors.ERROR_TYPES:
        match = re.search(rf"\b{cls.__name__}\b.*\(exit (\d+)\)", drawing)
        assert match, f"{cls.__name__} is not drawn in errors.py's tree"
        assert int(match.group(1)) == cls.exit_code, f"{cls.__name__}: drawn exit {match.group(1)}, " \
                                                     f"class says {cls.exit_code}"


@pytest.mark.parametrize("cls", [c for c in errors.ERROR_TYPES if c.__mro__[1] is errors.OrchestratorError])
def test_each_kind_of_error_has_its_own_exit_code(cls: type[errors.OrchestratorError]) -> None:
    """The direct kinds differ; a subclass shares its parent's code (UnknownModel is a usage error)."""
    others = [c for c in errors.ERROR_TYPES if c.__mro__[1] is errors.OrchestratorError and c is not cls]
    assert cls.exit_code not in {c.exit_code for c in others}
    assert cls.exit_code not in (0, errors.OrchestratorError.exit_code, errors.UNEXPECTED_EXIT)
