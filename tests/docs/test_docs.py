"""The docs are true to the code: the site builds in strict mode, every config key has its help, every command shown
is composed through the real configs (and the marked ones run), the run-dir names, paths and defaults the pages
state are the code's. The conventions the pages follow are in docs/contributing.md ("The docs")."""

import ast
import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import open_dict

from conftest import CONF, REPO, SMALL_DEMO, TINY, run_cli, speak
from speechkit import cli, reference
from speechkit.config import check_required
from speechkit.rundir import RunDir
from speechkit.validation import RANGES, check_values

PAGES = sorted((REPO / "docs").rglob("*.md")) + [REPO / "README.md"]
SCRIPTS = {"train.py": "train", "evaluate.py": "evaluate", "inspect_data.py": "inspect", "transcribe.py": "transcribe",
           "diarize.py": "diarize", "export.py": "export", "serve.py": "serve", "deploy.py": "deploy"}
MKDOCS_ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about its successor, on every build


# --------------------------------------------------------------------------------------------- the site
def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          cwd=config.parent, capture_output=True, text=True, timeout=300, env=MKDOCS_ENV)


def test_the_site_builds_in_strict_mode_with_the_pages_made_from_the_code(tmp_path):
    done = build(REPO / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    config_page = (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
    help_text = reference.field_help(reference.C.CarveConfig)["from_split"]
    assert 'id="dataset.carve.from_split"' in config_page and help_text in config_page
    for option in reference.options("model") + reference.options("experiment"):
        assert f"<code>{option}</code>" in config_page, option
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "speechkit.rundir" in api and "The run dir: every file and folder a run leaves behind" in api
    assert not (REPO / "site").exists()  # built where it was told


def test_a_broken_link_fails_the_build(tmp_path):
    """Strict mode is what makes the build a check: a link to an anchor no page has stops it, naming the link."""
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    with open(tmp_path / "docs" / "index.md", "a") as f:
        f.write("\nSee [the trainer's keys](reference/config.md#trainer.no_such_key).\n")
    done = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0 and "#trainer.no_such_key" in done.stderr


# -------------------------------------------------------------------------------------- the config reference
def test_every_schema_key_has_its_help():
    missing = [f"{k.owner}.{k.path.rsplit('.', 1)[-1]} ({k.path})" for k in reference.every_key() if not k.help]
    assert not missing, f"add a comment beside each in speechkit/config.py: {missing}"
    schemas = [s for s in [*reference.GROUPS.values(), *reference.BLOCKS.values(), *reference.SCRIPTS.values(),
                           *reference.task_schemas().values()] if s is not None]
    assert not [s.__name__ for s in schemas if not reference.class_doc(s)]


def test_a_key_without_a_comment_has_no_help(tmp_path, monkeypatch):
    """The check above can fail: the help is read from the comments themselves, and a field with none has none."""
    (tmp_path / "schemas_under_test.py").write_text(
        "from dataclasses import dataclass\n\n\n@dataclass\nclass Knobs:\n    \"\"\"Some knobs.\"\"\"\n\n"
        "    # the first knob's help,\n    # over two lines\n    first: int = 1\n    second: float = 0.5  # beside it\n"
        "    third: str = 'x'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import schemas_under_test

    assert reference.field_help(schemas_under_test.Knobs) == {"first": "the first knob's help, over two lines",
                                                              "second": "beside it", "third": ""}
    assert reference.class_doc(schemas_under_test.Knobs) == "Some knobs."


def test_the_reference_states_each_key_as_the_code_has_it():
    keys = {k.path: k for k in reference.every_key()}
    batch = keys["trainer.batch_size"]
    assert (batch.type, batch.default, batch.allowed) == ("int", "8", RANGES["trainer.batch_size"][1])
    assert batch.help == "clips per batch, per device (when batch_duration_s is null)"
    assert keys["trainer.max_steps"].type == "int or null" and keys["dataset.path"].default == "required"
    assert keys["trainer.optimizer"].members["adafactor"].startswith("torch.optim.Adafactor")
    assert keys["serve.py" and "inference.runtime"].help == "what runs the model"  # inherited from RuntimeConfig
    # every range check is shown beside a key the reference has (validation.RANGES is keyed from a script's root)
    assert not set(RANGES) - set(keys), set(RANGES) - set(keys)


def test_every_option_of_every_group_is_in_the_reference():
    page = reference.markdown()
    for group in reference.GROUPS:
        for option in reference.options(group):
            assert f"| <code>{option}</code> |" in page, (group, option)
            assert reference.option_text(group, option), f"conf/{group}/{option}.yaml: say what it is, first thing"


# ---------------------------------------------------------------------------------------- the commands shown
def blocks(path: Path):
    """(language, marker, lines, line number) of every fenced code block; the marker is an `<!-- check: ... -->`
    comment on the line before the fence."""
    lines = path.read_text().splitlines()
    out, k = [], 0
    while k < len(lines):
        fence = re.match(r"^```(\w*)", lines[k])
        if fence:
            marker = re.match(r"<!-- check: (\w+) -->", lines[k - 1]) if k else None
            end = next(j for j in range(k + 1, len(lines)) if lines[j].startswith("```"))
            out.append((fence.group(1), marker.group(1) if marker else None, lines[k + 1:end], k + 1))
            k = end
        k += 1
    return out


def commands(block_lines):
    """The shell commands of a block's lines: continuations joined, comments cut, `&&` chains split."""
    joined, current = [], ""
    for line in block_lines:
        current += line
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        joined.append(current)
        current = ""
    out = []
    for line in joined:
        line = re.sub(r"\s+#\s.*$", "", line).strip()
        out += [part.strip() for part in line.split("&&") if part.strip()]
    return out


PLACEHOLDERS = [(r"<asr run>|<run>|outputs/train/2026-11-22/10-00-00", "{run}"), (r"<owner>/<name>", "owner/name"),
                (r"/my/[a-z]+|/big/corpus", "{folder}"), (r"<recordings>|<a file, a folder, or a glob>", "{folder}")]


def speechkit_command(command: str, run: str, folder: str):
    """(script, its arguments) of a command that runs a speechkit script (placeholders filled in), or None."""
    for pattern, value in PLACEHOLDERS:
        command = re.sub(pattern, value.format(run=run, folder=folder), command)
    command = re.sub(r"\[([^\]\s]+=[^\]\s]+)\]", r"\1", command)  # [port=8080]: an optional argument, given
    if not re.search(r"\b(%s)\b" % "|".join(re.escape(s) for s in SCRIPTS), command):
        return None  # another program (curl, aws, docker run's image arguments, a python -c snippet ...)
    words = shlex.split(command)
    if words[0] in ("docker", "pip", "curl", "aws", "./install.sh"):
        return None
    for k, word in enumerate(words):
        if Path(word).name in SCRIPTS and (k == 0 or "python" in words[k - 1] or words[0] == "accelerate"):
            return Path(word).name, [w for w in words[k + 1:] if w != "..."]
    return None


def overrides(args):
    """A command line's overrides as Hydra composes them: flags left out (`-m`, `--cfg job`), a sweep's first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, out, skip = OverridesParser.create(), [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg.startswith("-"):
            skip = arg in ("--cfg", "-c", "--package", "-p")
            continue
        parsed = parser.parse_overrides([arg])[0]
        out.append(f"{parsed.get_key_element()}={next(parsed.sweep_string_iterator())}"
                   if parsed.is_sweep_override() else arg)
    return out


def all_commands():
    found = []
    for page in PAGES:
        for language, marker, lines, number in blocks(page):
            if language == "bash":
                found += [(page.relative_to(REPO), number, c, marker) for c in commands(lines)]
    return found


def test_the_pages_show_commands_of_every_script():
    scripts = {speechkit_command(c, "r", "f")[0] for _, _, c, _ in all_commands() if speechkit_command(c, "r", "f")}
    assert scripts == set(SCRIPTS), set(SCRIPTS) - scripts


def make_stand_ins(root: Path) -> Path:
    """Real folders for the placeholders: a run dir with a saved model's config, and an empty data folder."""
    (root / "run" / "model").mkdir(parents=True)
    (root / "run" / "model" / "config.json").write_text('{"model_type": "wav2vec2"}')
    (root / "run" / "vocab.json").write_text('{"a": 0, "|": 1, "[UNK]": 2, "[PAD]": 3}')
    (root / "data").mkdir()
    return root


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    return make_stand_ins(tmp_path_factory.mktemp("stand_ins"))


def composed(script: str, args, stand_ins: Path):
    """The command's config as the script composes and checks it before any work (the Hub's access check aside:
    composing needs no network)."""
    assert cli.moved(args) is None, cli.moved(args)
    schema = getattr(reference.C, cli.SCRIPTS[script])
    assert cli.unknown_key(args, schema) is None, cli.unknown_key(args, schema)
    given = overrides(args)
    if "run_dir" in {f.name for f in dataclasses.fields(schema)}:
        given.append(f"run_dir={stand_ins / 'out'}")
    hydra = any(o.startswith("hydra") for o in given)
    from hydra import compose as hydra_compose, initialize_config_dir

    cli.register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name=SCRIPTS[script], overrides=given, return_hydra_config=hydra)
    if hydra:
        with open_dict(cfg):
            del cfg["hydra"]
    check_required(cfg)
    check_values(cfg)
    return cfg


@pytest.mark.parametrize("page,line,command", [(str(p), n, c) for p, n, c, _ in all_commands()])
def test_every_command_shown_composes_through_the_real_configs(page, line, command, stand_ins):
    found = speechkit_command(command, str(stand_ins / "run"), str(stand_ins / "data"))
    if found is None:
        benchmark = re.match(r"(?:\S*python) (benchmarks/\w+\.py)(.*)", command)
        if benchmark:  # a benchmark's flags are its own
            source = (REPO / benchmark.group(1)).read_text()
            for flag in re.findall(r"(--[a-z][a-z-]*)", benchmark.group(2)):
                assert f'"{flag}"' in source, f"{page}:{line}: {benchmark.group(1)} has no {flag}"
        return
    script, args = found
    composed(script, args, stand_ins)


def test_benchmark_commands_in_the_prose_name_real_flags():
    """`python benchmarks/<name>.py --flag ...` in the text (inline code) too."""
    for page in PAGES:
        for script, flags in re.findall(r"`python (benchmarks/\w+\.py)([^`]*)`", page.read_text()):
            source = (REPO / script).read_text()
            for flag in re.findall(r"(--[a-z][a-z-]*)", flags):
                assert f'"{flag}"' in source, f"{page.name}: {script} has no {flag}"


def test_a_stale_override_in_a_command_is_caught(stand_ins):
    """What the check above catches: a moved key, a misspelt one, an option that is gone, a value out of range."""
    for command in ("python train.py experiment=demo decoder=kenlm", "python train.py trainer.learning_rat=1e-3",
                    "python train.py model=wav2vec3", "python train.py trainer.warmup_steps=-1",
                    "python evaluate.py model_dir=/no/such/run/model"):
        script, args = speechkit_command(command, str(stand_ins / "run"), str(stand_ins / "data"))
        with pytest.raises(BaseException):
            composed(script, args, stand_ins)


def output_blocks():
    for page in PAGES:
        for language, marker, lines, number in blocks(page):
            if marker == "output":
                assert language == "console" and lines[0].startswith("$ "), f"{page}:{number}"
                yield str(page.relative_to(REPO)), number, lines[0][2:], lines[1:]


@pytest.mark.parametrize("page,line,command,expected", list(output_blocks()))
def test_a_command_prints_what_the_page_shows(page, line, command, expected, tmp_path):
    words = shlex.split(command)
    assert words[0] == "python" and words[1] in SCRIPTS
    done = run_cli(words[1], *words[2:], f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert (done.stdout + done.stderr).strip().splitlines() == expected


# ---------------------------------------------------------------------------------- the marked blocks, run
def run_blocks():
    for page in PAGES:
        for language, marker, lines, number in blocks(page):
            if marker == "run":
                yield pytest.param(str(page.relative_to(REPO)), number, commands(lines), id=f"{page.name}:{number}")


# What a command of a run block gets appended, so that it runs in seconds on the tests' small corpus and model
TINY_RUN = {"train.py": [*SMALL_DEMO, *TINY, "trainer.batch_size=4", "trainer.eval_batch_size=4",
                         "trainer.warmup_steps=1", "trainer.logging_steps=1", "trainer.progress_bar=false",
                         "trainer.max_steps=2", "trainer.save_steps=2"],
            "evaluate.py": SMALL_DEMO, "inspect_data.py": SMALL_DEMO, "transcribe.py": ["progress_bar=false"],
            "diarize.py": ["progress_bar=false"], "export.py": [], "serve.py": [], "deploy.py": []}


@pytest.mark.slow
@pytest.mark.parametrize("page,line,block", list(run_blocks()))
def test_the_marked_blocks_run_as_written(page, line, block, tmp_path):
    """Each command of a `check: run` block, in order, for real: training makes <run>, the others use it; their
    outputs land where the pages say (outputs/<script>/<date>/<time>/, under a temporary paths.root)."""
    run, recordings = tmp_path / "run", tmp_path / "recordings"
    recordings.mkdir()
    speak("the quick brown fox jumps over the lazy dog", recordings / "fox.wav")
    root = tmp_path / "outputs"
    for command in block:
        script, args = speechkit_command(command, str(run), str(recordings))
        where = [f"hydra.run.dir={run}"] if script == "train.py" else \
            [f"paths.root={root}"] if script in ("evaluate.py", "inspect_data.py") else []
        done = run_cli(script, *args, *TINY_RUN[script], *where, cwd=tmp_path)
        assert done.returncode == 0, f"{page}:{line}: {command}\n{done.stderr[-3000:]}"
    if any(c.startswith("python evaluate.py") for c in block):
        (report,) = root.glob("evaluate/*/*/report.html")
        assert "<audio " in report.read_text() and list(report.parent.glob("clips/*.flac"))
    if any(c.startswith("python inspect_data.py") for c in block):  # the folder and files data.md names
        (summary,) = root.glob("inspect_data/*/*/summary.json")
        for name in ("summary.json", "labels.csv", "drop_report.jsonl", "durations.png"):
            assert (summary.parent / name).exists(), name
    if any(c.startswith("python transcribe.py") for c in block):
        assert {p.name for p in recordings.iterdir()} >= {"fox.txt", "fox.json", "fox.srt", "fox.vtt"}


# ----------------------------------------------------------------------------- names, paths and defaults stated
def run_dir_names():
    """Every file and folder name RunDir gives, relative to the run dir."""
    run = RunDir("R")
    return {os.path.relpath(getattr(run, name), "R") for name, value in vars(RunDir).items()
            if isinstance(value, property)}


def test_the_run_dir_listing_is_the_one_rundir_names():
    """runs.md's listing of a training run dir holds the names speechkit/rundir.py gives, and no other."""
    listing = next(lines for language, _, lines, _ in blocks(REPO / "docs" / "runs.md")
                   if lines and lines[0].startswith("config.yaml"))
    listed = set()
    for line in listing:
        name = line.split()[0] if line[:1].strip() else ""
        if name:
            stem, _, more = name.rstrip("/").partition("/.")  # confusion.csv/.png: two files
            listed |= {stem} | ({stem.rsplit(".", 1)[0] + "." + more} if more else set())
    listed = {"checkpoints" if n == "checkpoints/step-N" else n for n in listed}
    inspection = {"durations.png", "characters.csv", "labels.csv", "summary.json"}  # inspect_data.py's, data.md
    assert listed == run_dir_names() - inspection, listed ^ (run_dir_names() - inspection)
    data = (REPO / "docs" / "data.md").read_text()
    assert all(f"`{name}`" in data for name in inspection)


def test_every_outputs_path_names_a_scripts_run_dir():
    """`outputs/<name>/` in the pages is a script's run dir: Hydra names it after the script (conf/hydra)."""
    allowed = {Path(s).stem for s in SCRIPTS} | {Path(s).stem + "-multirun" for s in SCRIPTS}
    for page in PAGES:
        for name in re.findall(r"outputs/([A-Za-z_-]+)/", page.read_text()):
            assert name in allowed, f"{page.name}: outputs/{name}/ is no script's run dir"


def test_inspect_data_writes_where_the_pages_say():
    """The README once said outputs/inspect/...: the run dir inspect_data.py really gets, resolved by Hydra."""
    done = run_cli("inspect_data.py", "--cfg", "all", "--resolve", "-p", "hydra.run.dir")
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.fullmatch(r"outputs/inspect_data/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d", done.stdout.strip()), done.stdout
    for page in (REPO / "docs" / "data.md", REPO / "README.md"):
        text = page.read_text()
        assert "outputs/inspect/" not in text and ("outputs/inspect_data/<date>/<time>/" in text
                                                   or page.name == "README.md")


def stated_defaults():
    """(page, key, value) for each default a page states beside a key: `key` (value) or `key` (default value)."""
    keys = {}
    for k in reference.every_key():  # a script's own key may have another default in another script (batch_size)
        keys.setdefault(k.path, []).append(k.default)
    for page in PAGES:
        text = re.sub(r"\s+", " ", page.read_text())
        for key, value in re.findall(r"`([a-z_]+(?:\.[a-z_0-9]+)*)` \((?:default )?([-+0-9.e]+|true|false|null)"
                                     r"(?: (?:s|MB|seconds))?[,)]", text):
            if key in keys:
                yield page.name, key, value, keys[key]


def test_the_defaults_the_pages_state_are_the_schemas():
    found = list(stated_defaults())
    assert len(found) >= 10  # the pages do state defaults this way; each must be the schema's
    for page, key, value, defaults in found:
        assert yaml.safe_load(value) in [yaml.safe_load(d) for d in defaults], \
            f"{page}: `{key}` ({value}) but its default is {' or '.join(defaults)}"


def test_the_versions_the_docs_state_are_the_pins():
    """contributing.md's "Versions": each `name x.y[.z]` it states is what pyproject.toml pins."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for spec in project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]:
        if "==" in spec:
            name, version = spec.split("==")
            pins[name.split("[")[0].lower()] = version
    text = (REPO / "docs" / "contributing.md").read_text().split("## Versions")[1]
    stated = re.findall(r"([a-z][a-z0-9_.-]*) \(?(\d+\.\d+(?:\.\d+)?)\b", re.sub(r"\s+", " ", text))
    checked = [(name, version) for name, version in stated if name.lower() in pins]
    assert len(checked) >= 20, checked
    for name, version in checked:
        assert (pins[name.lower()] + ".").startswith(version + "."), f"{name} {version}: pinned {pins[name.lower()]}"


def test_the_docs_hook_reads_nothing_but_the_code():
    """docs/hooks.py adds the generated pages in memory: it writes no file into docs/."""
    source = (REPO / "docs" / "hooks.py").read_text()
    tree = ast.parse(source)
    calls = {node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
             for node in ast.walk(tree) if isinstance(node, ast.Call)}
    assert "open" not in calls and "write_text" not in calls and "generated" in calls
