"""The house's layering, read from the source: no import circles in speechkit/ (counting imports inside functions
too), no two modules of one name in different roles, the light modules validation uses import no torch, and the
SageMaker handler imports nothing of speechkit."""

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "speechkit"


def modules() -> dict:
    """{dotted name: path} of every module of speechkit."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, known: dict) -> set:
    """The speechkit modules `path` imports, anywhere in it. `from package import name` counts as importing
    package.name when that is a module, else the package; a package's own __init__ is not implied."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("speechkit")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("speechkit"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found & set(known)


def test_no_import_circles():
    known = modules()
    graph = {name: imports(path, known) - {name} for name, path in known.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_module_names_do_not_clash():
    """One name, one role: a module's file name is unique in speechkit/ (each package's __init__ and base, the
    seam of the family of modules beside it, excepted)."""
    names = {}
    for name, path in modules().items():
        if path.stem not in ("__init__", "base"):
            names.setdefault(path.stem, []).append(name)
    assert not {k: v for k, v in names.items() if len(v) > 1}


def test_config_checks_need_neither_torch_nor_transformers():
    """What a config's checks import (the registries of tasks and model families among them) stays light, so a bad
    value is refused in about a second."""
    code = ("import sys; import speechkit.cli, speechkit.validation, speechkit.tasks, speechkit.models; "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_sagemaker_handler_is_self_contained():
    """code/inference.py in model.tar.gz runs where speechkit is not installed."""
    assert not imports(PACKAGE / "sagemaker" / "inference.py", modules())
