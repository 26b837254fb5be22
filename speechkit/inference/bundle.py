"""The handler as it ships: one file, `code/inference.py`, made from this package's modules.

SageMaker's inference container runs code/inference.py where speechkit is not installed, so what it runs cannot
import speechkit. `bundle()` joins the modules of BUNDLED (each may import those before it) into one module: their
sources in that order, each one's docstring and `from __future__` line dropped (the file opens with handler.py's
docstring and one `from __future__` line), and the imports of their siblings (`from speechkit.inference.<module>
import <names>`, at a module's top level) removed, the names they bring being defined in the same file then. It
refuses, naming the module and the line, what would not work in one file: any other import of speechkit (at the top
or inside a function), a sibling's import renamed (`as`), of a module or of a name the sibling does not define, a
relative import, a name defined at the top of two modules.

deploy.py packs `bundle()` as code/inference.py; serve.py serves `load()`: the same text written to a file and
imported from it as the module `inference`, as the container imports it; the tests load it the same way, so a
bundling mistake fails them. Nothing is generated into the checkout.
"""

from __future__ import annotations

import ast
import importlib.util
import linecache
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Optional

PACKAGE = "speechkit.inference"
HERE = Path(__file__).resolve().parent
BUNDLED = ("heads", "requests", "onnx", "handler")  # in dependency order; handler.py's docstring opens the file
FILE_NAME = "inference.py"  # what the container imports: code/inference.py
RULE = "# " + "=" * 117


class BundleError(RuntimeError):
    """A module of BUNDLED that would not work in the one file."""


def _top_names(tree: ast.Module) -> set:
    """The names a module defines at its top level (not the ones it imports)."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


def _is_speechkit(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] == "speechkit" for a in node.names)
    return isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").split(".")[0] == "speechkit")


def _body(name: str, defined: dict) -> tuple:
    """Module `name`'s (docstring's source lines, its other source lines to ship, the names it defines at the top),
    `defined` being {module: the names it defines at the top} of the modules before it."""
    path = HERE / f"{name}.py"
    source = path.read_text()
    tree = ast.parse(source, str(path))
    lines = source.splitlines()
    where = f"speechkit/inference/{name}.py"
    opening, dropped = [], set()  # the docstring's lines; the numbers (1-based) of the lines not shipped
    for i, node in enumerate(tree.body):
        if i == 0 and ast.get_docstring(tree, clean=False) is not None:
            opening = lines[node.lineno - 1:node.end_lineno]
        elif isinstance(node, ast.ImportFrom) and node.module == "__future__":
            if [a.name for a in node.names] != ["annotations"]:
                raise BundleError(f"{where}:{node.lineno}: only `from __future__ import annotations` is bundled")
        elif isinstance(node, ast.ImportFrom) and _is_speechkit(node):
            module = node.module or ""
            sibling = module[len(PACKAGE) + 1:] if node.level == 0 and module.startswith(PACKAGE + ".") else None
            if sibling not in defined:
                raise BundleError(f"{where}:{node.lineno}: imports {'.' * node.level}{module}; a bundled module "
                                  f"imports speechkit only as `from {PACKAGE}.<module> import <names>`, the module "
                                  f"one bundled before it ({', '.join(defined) or 'none'})")
            for alias in node.names:
                if alias.asname or alias.name not in defined[sibling]:
                    raise BundleError(f"{where}:{node.lineno}: {alias.name}"
                                      f"{' as ' + alias.asname if alias.asname else ''} from {sibling}.py: a bundled "
                                      "module imports its siblings' names as they are, and only names they define "
                                      "at their top level")
        else:
            continue
        dropped |= set(range(node.lineno, node.end_lineno + 1))
    for node in ast.walk(tree):  # speechkit imported anywhere else (inside a function) cannot work in the container
        if isinstance(node, (ast.Import, ast.ImportFrom)) and _is_speechkit(node) and node.lineno not in dropped:
            raise BundleError(f"{where}:{node.lineno}: imports speechkit where the bundle cannot remove it; the "
                              "handler runs where speechkit is not installed")
    out, after_drop = [], False
    for number, line in enumerate(lines, 1):
        if number in dropped:
            after_drop = True
            continue
        if not line.strip() and (not out or after_drop and len(out) > 1 and not out[-1].strip()
                                 and not out[-2].strip()):
            continue  # no blank line first, nor more than two in a row where a line was dropped
        after_drop = after_drop and not line.strip()
        out.append(line)
    while out and not out[-1].strip():
        out.pop()
    return opening, out, _top_names(tree)


def bundle() -> str:
    """The text of code/inference.py: the modules of BUNDLED as one self-contained module (see the module's
    docstring); raises BundleError on a module that would not work in it."""
    defined, parts, opening = {}, [], []
    for name in BUNDLED:
        docstring, lines, names = _body(name, defined)
        clash = {n: m for m, theirs in defined.items() for n in names & theirs}
        if clash:
            raise BundleError(f"speechkit/inference/{name}.py defines {', '.join(sorted(clash))}, defined by "
                              f"{', '.join(sorted(set(clash.values())))}.py too: one file holds both")
        defined[name] = names
        if name == BUNDLED[-1]:
            opening = docstring
        parts += ["", "", RULE, f"# speechkit/inference/{name}.py", RULE, *lines]
    made = ["# Made by speechkit/inference/bundle.py (speechkit's deploy.py and serve.py) from the modules of",
            f"# speechkit/inference/ named below ({', '.join(f'{n}.py' for n in BUNDLED)}): edit those, not this file."]
    return "\n".join([*opening, *made, "", "from __future__ import annotations", *parts]) + "\n"


def write(folder) -> Path:
    """bundle() written to `folder`/inference.py; that path."""
    path = Path(folder) / FILE_NAME
    path.write_text(bundle())
    return path


def load(folder: Optional[str] = None) -> ModuleType:
    """The handler as shipped: bundle() written to `folder`/inference.py and imported from there as the module
    `inference`. With no `folder`, a temporary one, removed once the module is imported (a process stopped by a
    signal, as serve.py is, runs no exit hooks), the file's lines kept for tracebacks."""
    if folder is not None:
        return imported(write(folder))
    with tempfile.TemporaryDirectory(prefix="speechkit-handler-") as temporary:
        path = write(temporary)
        module = imported(path)
        text = path.read_text()
        linecache.cache[str(path)] = (len(text), None, text.splitlines(keepends=True), str(path))
    return module


def imported(path) -> ModuleType:
    """The handler file at `path` (bundle()'s, or a code/inference.py unpacked from a model.tar.gz) imported as the
    module `inference`, as the container imports it; not entered in sys.modules."""
    spec = importlib.util.spec_from_file_location(FILE_NAME[:-3], str(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
