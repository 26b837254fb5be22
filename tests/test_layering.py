"""The house's layering, read from the source: no import circles in speechkit/ (counting imports inside functions
too), no two modules of one name in different roles, the light modules validation uses import no torch, the SageMaker
handler (speechkit/inference/ bundled into code/inference.py) imports nothing of speechkit and runs where speechkit is
not installed, and nothing but deploy.py and the SageMaker launcher imports speechkit/sagemaker/."""

import ast
import re
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
    """code/inference.py in model.tar.gz runs where speechkit is not installed: the modules bundled into it import
    speechkit only as their siblings bundled before them, at their top level (where the bundle removes the import),
    and numpy and the standard library alone at their top level (torch, transformers, onnxruntime inside functions)."""
    from speechkit.inference.bundle import BUNDLED

    known = modules()
    light = set(sys.stdlib_module_names) | {"numpy"}
    for i, name in enumerate(BUNDLED):
        path = PACKAGE / "inference" / f"{name}.py"
        before = {f"speechkit.inference.{sibling}" for sibling in BUNDLED[:i]}
        assert imports(path, known) <= before, name
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        anywhere = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert _roots(top) <= light | {"speechkit", "__future__"}, name
        assert "speechkit" not in _roots([n for n in anywhere if n not in top]), name


def _roots(nodes) -> set:
    """The top-level packages import statements `nodes` import (a relative import: "")."""
    return {a.name.split(".")[0] for n in nodes if isinstance(n, ast.Import) for a in n.names} | \
        {(n.module or "").split(".")[0] if not n.level else "" for n in nodes if isinstance(n, ast.ImportFrom)}


def test_the_bundled_handler_imports_where_speechkit_is_not(tmp_path):
    """The bundle (what deploy.py ships as code/inference.py), copied alone into a folder and imported from there as
    `inference` in an isolated interpreter where speechkit cannot be imported (as in the endpoint's container),
    imports and answers a JSON request's parsing, with no torch imported; its text holds no import of speechkit."""
    from speechkit.inference.bundle import bundle, write

    tree = ast.parse(bundle())
    assert not {n for n in ast.walk(tree) if isinstance(n, ast.Import) and
                any(a.name.split(".")[0] == "speechkit" for a in n.names)}
    assert not {n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and
                (n.level or (n.module or "").split(".")[0] == "speechkit")}
    folder = tmp_path / "code"
    folder.mkdir()
    write(folder)
    code = ("import sys\n"
            "class NoSpeechkit:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'speechkit':\n"
            "            raise ImportError(f'No module named {name!r} (not installed in the container)')\n"
            "sys.meta_path.insert(0, NoSpeechkit())\n"
            f"sys.path.insert(0, {str(folder)!r})\n"
            "import inference\n"
            "body = '{\"speech_array\": [0.0, 0.5], \"sampling_rate\": 16000}'\n"
            "clip = inference.input_fn(body, 'application/json')\n"
            "assert clip['array'].tolist() == [0.0, 0.5] and clip['sampling_rate'] == 16000\n"
            "print(inference.output_fn({'text': 'ok', 'duration_s': 0.0}, 'application/json'))\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'speechkit', 'torch', 'transformers'}))\n"
            "print(inference.__file__, sorted(head for head in inference.HEADS))\n")
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    answer, loaded, where = done.stdout.strip().splitlines()
    assert answer == '{"text": "ok", "duration_s": 0.0}' and loaded == "[]"
    assert where.startswith(str(folder / "inference.py")) and "'frames'" in where


def test_the_bundle_refuses_what_would_not_work_in_one_file(tmp_path, monkeypatch):
    """A bundling mistake is named, not shipped: an import of speechkit that is not a sibling's (or inside a
    function), a sibling's name renamed or one it does not define, a name two modules define."""
    import pytest

    from speechkit.inference import bundle

    cases = {
        "from speechkit.config import ConfigError\n": "imports speechkit.config",
        "def f():\n    from speechkit.inference.one import A\n": "imports speechkit where the bundle cannot",
        "from speechkit.inference.one import A as B\n": "A as B from one.py",
        "from speechkit.inference.one import C\n": "C from one.py",
        "from speechkit.inference.two import A\n": "imports speechkit.inference.two",
        "A = 2\n": "defines A, defined by one.py too",
        "from . import one\n": "imports .",
    }
    monkeypatch.setattr(bundle, "HERE", tmp_path)
    monkeypatch.setattr(bundle, "BUNDLED", ("one", "two"))
    (tmp_path / "one.py").write_text('"""One."""\n\nfrom __future__ import annotations\n\nA = 1\n')
    (tmp_path / "two.py").write_text('"""Two."""\n\nfrom speechkit.inference.one import A\n\nB = A + 1\n')
    joined = bundle.bundle()
    assert joined.startswith('"""Two."""\n') and "speechkit.inference" not in joined.replace("# speechkit/", "")
    namespace = {}
    exec(compile(joined, "inference.py", "exec"), namespace)
    assert namespace["B"] == 2
    for source, said in cases.items():
        (tmp_path / "two.py").write_text(source)
        with pytest.raises(bundle.BundleError, match=f"two.py.*{re.escape(said)}"):
            bundle.bundle()


def test_nothing_but_deploy_and_the_launcher_imports_sagemaker():
    """speechkit/sagemaker/ is the SageMaker launcher (training jobs), what runs in its training container and the
    endpoint deploy.py makes: the inference runtime is speechkit/inference/, so serve.py, export.py, evaluate.py,
    transcribe.py and onnx_export.py import nothing of sagemaker/; deploy.py takes its endpoint.py, train.py's
    hw=sagemaker its launch.py (images, requirements, the job)."""
    known = modules()
    sagemaker = {name for name in known if name.split(".")[:2] == ["speechkit", "sagemaker"]}
    users = {name: imports(path, known) & sagemaker for name, path in known.items() if name not in sagemaker}
    users = {name: used for name, used in users.items() if used}
    assert users == {"speechkit.commands.deploy": {"speechkit.sagemaker.endpoint"},
                     "speechkit.commands.train": {"speechkit.sagemaker.launch"}}


def test_no_command_imports_another():
    """speechkit/commands/ parse, call and print: the engines they use live in the library, so no command imports
    another (imports inside functions counted)."""
    known = modules()
    commands = {name for name in known if name.startswith("speechkit.commands.")}
    crossing = {name: imports(known[name], known) & (commands - {name}) for name in commands}
    assert not {name: used for name, used in crossing.items() if used}

