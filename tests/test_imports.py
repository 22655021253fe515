"""The package's shape: no import circle, and prediction never imports Lightning."""

import ast
import subprocess
import sys

from tests.conftest import ROOT

PACKAGE = ROOT / "crackseg"


def _module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path):
    """crackseg modules ``path`` imports, at load time or lazily inside functions (type-checking
    imports aside): a lazy import that closes a circle is a circle all the same."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for child in ast.walk(node):
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("crackseg"):
                found.add(child.module)
            elif isinstance(child, ast.Import):
                found |= {alias.name for alias in child.names if alias.name.startswith("crackseg")}
    return found


def test_no_import_circle_inside_the_package():
    graph = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    modules = set(graph)
    graph = {m: {i for i in deps if i in modules} for m, deps in graph.items()}
    state = {}

    def visit(module, stack):
        state[module] = "open"
        for dep in graph[module]:
            assert state.get(dep) != "open", f"import circle: {' -> '.join([*stack, module, dep])}"
            if dep not in state:
                visit(dep, [*stack, module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert "crackseg.inference.backends" in graph and "crackseg.models.checkpoints" in graph


def test_prediction_and_evaluation_never_import_lightning():
    modules = ["crackseg.tasks.predict", "crackseg.tasks.evaluate", "crackseg.tasks.export", "crackseg.inference.backends"]
    script = f"import sys; import {', '.join(modules)}; print(sorted(m for m in sys.modules if 'lightning' in m))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"
