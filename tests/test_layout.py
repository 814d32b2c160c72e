"""The package layout: imports only go down the pipeline, and no import cycle.

Every `import compress...` / `from compress... import` in every module is read with `ast` (lazy imports inside
functions too), so the test sees what the code imports, not what it happens to load.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "compress"

# What each subpackage may import besides itself. Everyone uses `common`; `models` knows architectures; the
# measurements (toxicity, bias) know nothing of compression, and a method may optimise one (bias-aware
# pruning); the report reads outputs and metric definitions, never a compression method; the study runs the
# methods by module name and reads results through the report. The top-level scripts may import anything.
ALLOWED = {
    "common": set(),
    "models": {"common"},
    "toxicity": {"common"},
    "bias": {"common", "toxicity"},
    "distillation": {"common", "models"},
    "pruning": {"common", "models", "bias"},
    "quantization": {"common", "models"},
    "sparsity": {"common", "models"},
    "layer_dropping": {"common", "models"},
    "report": {"common", "toxicity", "bias"},
    "study": {"common", "report"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def subpackage(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return ""
    return parts[1] if (PACKAGE / parts[1]).is_dir() else ""


def imports_of(path: Path) -> set[str]:
    """Modules of ours that `path` imports, resolved to module names (`from compress.x import y`: compress.x.y
    when y is a module, else compress.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "compress"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "compress":
            base = node.module
            for alias in node.names:
                candidate = PACKAGE.parent.joinpath(*f"{base}.{alias.name}".split("."))
                is_module = candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file()
                found.add(f"{base}.{alias.name}" if is_module else base)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_subpackage_has_a_layer():
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert subpackages, "no subpackages found"
    assert subpackages <= set(ALLOWED), f"add {sorted(subpackages - set(ALLOWED))} to ALLOWED"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_go_down(module):
    own = subpackage(module)
    for target in sorted(imports_of(MODULES[module])):
        other = subpackage(target)
        if other == own or own == "":
            continue
        assert other in ALLOWED[own], f"{module} imports {target}: {own} may import only {sorted(ALLOWED[own])}"


def test_no_import_cycle():
    graph = {m: {t for t in imports_of(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    # Package __init__ files are empty; a cycle through one would still be found as an edge here.
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    assert len(graph) > 20, "the walk found too few modules to mean anything"
    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_lm_eval_glue_only_reaches_the_measurements():
    """The task folders' utils.py stay thin: they call into compress.toxicity / compress.bias, nothing else."""
    for utils in sorted((REPO / "lm_eval_tasks").rglob("utils.py")):
        for target in imports_of(utils):
            assert subpackage(target) in {"toxicity", "bias", "common"}, f"{utils} imports {target}"


def test_the_walk_sees_lazy_imports(tmp_path):
    """A deliberately upward import inside a function is found (the check is not blind to lazy imports)."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from compress.distillation import trainer\n    import compress.pruning.config\n")
    assert imports_of(probe) == {"compress.distillation.trainer", "compress.pruning.config"}
