"""The config reference, read from the code: every config group, option and key with its type, default, allowed values
or range and its line of help, for the docs site (docs/hooks.py renders it at build time) and for the test that every
key has help.

One source of truth: the types and defaults are the schemas' (speechkit/config.py), the help is the comment beside or
above each field there (and a group's docstring), the ranges are the checks of speechkit/validation.py (RANGES, whose
texts say what a value may be), the options are the files under conf/<group>/ (their opening comment says what each
is). Nothing here is written by hand, so the reference cannot drift from what the code accepts.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import html
import inspect
import io
import os
import re
import tokenize
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import MISSING

from speechkit import config as C

CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")

# The groups of train.py (conf/<group>/), in the order train.yaml composes them, each with its schema (None: an
# overlay of the others, no schema of its own; the task group: one schema per option).
GROUPS: Dict[str, Any] = {"task": None, "dataset": C.DatasetConfig, "model": C.ModelConfig, "hw": C.HardwareConfig,
                          "trainer": C.TrainerConfig, "augment": C.AugmentConfig, "logger": C.LoggerConfig,
                          "paths": C.PathsConfig, "experiment": None, "hparams_search": None, "debug": None}
# Blocks of train.py's config that are no group of options: set on the command line or in an experiment.
BLOCKS = {"sagemaker": C.SageMakerConfig, "hub": C.HubConfig}
# Each script's primary schema (speechkit/cli.py registers them), and the groups it composes (documented above).
SCRIPTS = {"train.py": C.TrainConfig, "evaluate.py": C.EvaluateConfig, "inspect_data.py": C.InspectConfig,
           "transcribe.py": C.TranscribeConfig, "diarize.py": C.DiarizeConfig, "export.py": C.ExportConfig,
           "serve.py": C.ServeConfig, "deploy.py": C.DeployConfig}
SHARED = {"task", "dataset", "model", "hw", "trainer", "augment", "logger", "paths", "sagemaker", "hub"}


@dataclass
class Key:
    """One key of a config, as the reference shows it."""

    path: str  # dotted, from the script's root: trainer.learning_rate
    type: str  # as people read it: "float or null", "one of ..."
    default: str  # the schema's default, as YAML would write it; "required" for ??? (an option or the command sets it)
    allowed: str  # Enum members, or the range check's text (validation.RANGES); "" when anything of the type goes
    help: str  # the comment beside or above the field in speechkit/config.py
    owner: str = ""  # the schema class that declares it
    members: Dict[str, str] = field(default_factory=dict)  # Enum members and their help


# ------------------------------------------------------------------------------------- comments of config.py
@lru_cache(maxsize=None)
def _comments(path: str) -> Tuple[Dict[str, Dict[str, str]], Dict[str, str]]:
    """{class name: {field or member: help}} and {class name: docstring} of the module at `path`: a field's help is
    the block of comment lines right above it joined with the comment on its own line(s)."""
    source = open(path, encoding="utf-8").read()
    inline: Dict[int, str] = {}  # line -> a comment after code on that line
    block: Dict[int, str] = {}  # line -> a comment alone on its line
    code_lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            (inline if tok.start[0] in code_lines else block)[tok.start[0]] = text
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    helps: Dict[str, Dict[str, str]] = {}
    docs: Dict[str, str] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        docs[node.name] = ast.get_docstring(node) or ""
        helps[node.name] = {}
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                name = stmt.target.id
            elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                name = stmt.targets[0].id
            else:
                continue
            above, line = [], stmt.lineno - 1
            while line in block:
                above.insert(0, block[line])
                line -= 1
            beside = [inline[n] for n in range(stmt.lineno, stmt.end_lineno + 1) if n in inline]
            helps[node.name][name] = " ".join(above + beside).strip()
    return helps, docs


def field_help(cls) -> Dict[str, str]:
    """{field: its help} of a schema class (or {member: help} of an Enum), from its source's comments; a field it
    inherits has the help its base class gives it."""
    found: Dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__ == cls.__module__:
            helps, _ = _comments(inspect.getsourcefile(klass))
            found.update(helps.get(klass.__name__, {}))
    return found


def class_doc(cls) -> str:
    """A schema's docstring as one paragraph (what the group or block is)."""
    _, docs = _comments(inspect.getsourcefile(cls))
    return " ".join(docs.get(cls.__name__, "").split())


# ------------------------------------------------------------------------------------------- the keys
def _strip_optional(hint) -> Tuple[Any, bool]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        return args[0], True
    return hint, False


def type_name(hint) -> str:
    """A type as people read it: float, list of str, mapping, one of the names below; `or null` when it may be."""
    inner, optional = _strip_optional(hint)
    origin = typing.get_origin(inner)
    if origin in (list, List):
        (item,) = typing.get_args(inner) or (Any,)
        text = f"list of {type_name(item)}"
    elif origin in (dict, Dict):
        text = "mapping"
    elif inner is Any:
        text = "any"
    elif isinstance(inner, type) and issubclass(inner, enum.Enum):
        text = "one of the names"
    elif isinstance(inner, type):
        text = {"str": "string", "bool": "true or false"}.get(inner.__name__, inner.__name__)
    else:
        text = str(inner)
    return f"{text} or null" if optional else text


def yaml_value(value) -> str:
    """A default as it would be typed in YAML or on the command line."""
    if value is MISSING or value == "???":
        return "required"
    if value is None:
        return "null"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return MISSING


def _is_schema(hint) -> bool:
    inner, _ = _strip_optional(hint)
    return dataclasses.is_dataclass(inner)


def keys(schema, prefix: str = "", ranges_prefix: Optional[str] = None, skip=()) -> List[Key]:
    """Every key of `schema` (a dataclass), nested blocks expanded, their paths starting with `prefix`; the range
    check of each is looked up as `ranges_prefix` + its path below the schema (validation.RANGES is keyed from a
    script's root). Fields named in `skip` are left out (the groups a script composes, documented on their own)."""
    from speechkit.validation import RANGES

    ranges_prefix = prefix if ranges_prefix is None else ranges_prefix
    hints = typing.get_type_hints(schema)
    helps = field_help(schema)
    out: List[Key] = []
    for f in dataclasses.fields(schema):
        if f.name in skip:
            continue
        hint = hints[f.name]
        inner, _ = _strip_optional(hint)
        path = prefix + f.name
        if _is_schema(hint):
            out += keys(inner, path + ".", ranges_prefix + f.name + ".")
            continue
        members: Dict[str, str] = {}
        allowed = ""
        if isinstance(inner, type) and issubclass(inner, enum.Enum):
            member_help = field_help(inner)
            members = {m.value: member_help.get(m.name, "") for m in inner}
            allowed = ", ".join(members)
        check = RANGES.get(ranges_prefix + f.name)
        if check is not None:
            allowed = check[1]
        out.append(Key(path=path, type=type_name(hint), default=yaml_value(_default(f)), allowed=allowed,
                       help=helps.get(f.name, ""), owner=schema.__name__, members=members))
    return out


def task_schemas() -> Dict[str, Any]:
    """Each option of conf/task and its schema (the tasks' registry)."""
    from speechkit.tasks import TASKS

    return {name: entry.schema for name, entry in TASKS.items()}


def every_key() -> List[Key]:
    """Every key of every schema the scripts compose: the groups, the blocks, each task's, and each script's own."""
    found = []
    for group, schema in GROUPS.items():
        if schema is not None:
            found += keys(schema, group + ".")
    for name, schema in task_schemas().items():
        found += keys(schema, "task.")
    for name, schema in BLOCKS.items():
        found += keys(schema, name + ".")
    for script, schema in SCRIPTS.items():
        found += keys(schema, "", skip=SHARED)
    return found


# ------------------------------------------------------------------------------------------- the options
def options(group: str) -> List[str]:
    """The options of a group: conf/<group>/*.yaml."""
    folder = os.path.join(CONF, group)
    return sorted(n[:-5] for n in os.listdir(folder) if n.endswith(".yaml")) if os.path.isdir(folder) else []


def option_text(group: str, option: str) -> str:
    """What an option is: the opening comment of its YAML file (the `# @package` line and command lines left out)."""
    lines = []
    with open(os.path.join(CONF, group, option + ".yaml"), encoding="utf-8") as f:
        for line in f:
            if not line.startswith("#"):
                break
            text = line[1:].strip()
            if text.startswith("@package"):
                continue
            lines.append(text)
    paragraph = []
    for text in lines:
        if text.startswith(("python ", "accelerate ")):  # an example command, not a description
            break
        paragraph.append(text)
    return " ".join(paragraph).strip()


def option_values(group: str, option: str) -> List[str]:
    """What an option sets, as `key=value` overrides (its defaults list as group choices; a model's architecture, a
    free-form mapping, summed up by its number of fields)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(os.path.join(CONF, group, option + ".yaml")), resolve=False)
    out = []
    for entry in cfg.pop("defaults", []) or []:
        if isinstance(entry, dict):  # an experiment's `override /dataset: demo_en`: a group choice
            out += [f"{k.replace('override', '').strip().lstrip('/')}={v}" for k, v in entry.items()]
        elif entry != "_self_" and not str(entry).endswith("_schema"):  # another option of this group, included
            out.append(f"{group}/{entry}")
    is_global = False
    with open(os.path.join(CONF, group, option + ".yaml"), encoding="utf-8") as f:
        is_global = "# @package _global_" in f.read(200)
    base = "" if is_global else group + "."

    def walk(node, path):
        for k, v in node.items():
            if isinstance(v, dict) and k in ("architecture", "config_overrides", "params") and v:
                out.append(f"{path}{k}: {len(v)} fields")
            elif isinstance(v, dict) and v:
                walk(v, f"{path}{k}.")
            else:
                out.append(f"{path}{k}={yaml_value(v)}")

    walk(cfg, base)
    return out


# ------------------------------------------------------------------------------------------- markdown
def _code(text: str) -> str:
    """Text as inline code inside a Markdown table cell (a `|` or a backtick in it cannot break the table)."""
    return "<code>" + html.escape(text).replace("|", "&#124;") + "</code>" if text != "" else ""


def _cell(text: str) -> str:
    text = html.escape(text, quote=False).replace("|", "&#124;")
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)  # the comments' `key` quoting, shown as code


def _key_table(found: List[Key]) -> List[str]:
    lines = ["| key | type | default | allowed | help |", "| --- | --- | --- | --- | --- |"]
    for k in found:
        allowed = _cell(k.allowed)
        if k.members:
            allowed = "<br>".join(_code(m) + (f": {_cell(h)}" if h else "") for m, h in k.members.items())
        lines.append(f"| <span id=\"{k.path}\"></span>{_code(k.path)} | {_cell(k.type)} | {_code(k.default)} | "
                     f"{allowed} | {_cell(k.help)} |")
    return lines


def _options_table(group: str) -> List[str]:
    lines = ["| option | what it is | what it sets |", "| --- | --- | --- |"]
    for option in options(group):
        sets = "<br>".join(_code(v) for v in option_values(group, option))
        lines.append(f"| {_code(option)} | {_cell(option_text(group, option))} | {sets} |")
    return lines


def markdown() -> str:
    """The config reference page (docs/reference/config.md, made at build time)."""
    out = ["---", "hide:", "  - navigation", "---", "",  # the page's wide tables get the room of the site's nav
           "# Config reference", "",
           "Every config group, option and key, generated when the site is built from the code itself: the types and "
           "defaults from the typed schemas (`speechkit/config.py`), each key's help from the comment beside it "
           "there, the allowed ranges from the checks every run makes before any work (`speechkit/validation.py`), "
           "and the options from the files under `conf/`. `python train.py --cfg job <overrides>` prints the values "
           "a command composes.", "",
           "A key is set on the command line as `key=value` (`trainer.learning_rate=3e-4`), an option as "
           "`group=option` (`model=xlsr_53`). *required* means the option or the command sets it (`???` in YAML); "
           "*null* means unset, with the meaning the help gives.", ""]
    out += ["## Groups of train.py", ""]
    for group, schema in GROUPS.items():
        out += [f"### {group}", ""]
        if group == "task":
            out += ["One schema per option: each task has its own knobs only (`conf/task/<option>.yaml` composes onto "
                    "its schema).", ""]
        elif schema is not None:
            out += [class_doc(schema) or "", ""]
        else:
            out += {"experiment": ["Named overlays of the groups above (`# @package _global_`): one command line "
                                   "for a whole recipe.", ""],
                    "hparams_search": ["A hyperparameter search (Hydra's sweepers); a multirun by itself.", ""],
                    "debug": ["Settings to check that a config runs at all.", ""]}[group]
        out += [f"Options (`conf/{group}/`, `{group}=<option>`):", ""] + _options_table(group) + [""]
        if group == "task":
            for name, task_schema in task_schemas().items():
                out += [f"#### task={name}", "", class_doc(task_schema), ""] + _key_table(keys(task_schema, "task."))
                out += [""]
        elif schema is not None:
            out += ["Keys:", ""] + _key_table(keys(schema, group + ".")) + [""]
    out += ["## Blocks of train.py", "", "Set on the command line or in an experiment; no options to choose from.", ""]
    for name, schema in BLOCKS.items():
        out += [f"### {name}", "", class_doc(schema), ""] + _key_table(keys(schema, name + ".")) + [""]
    out += ["## Each script's own keys", "",
            "Each script composes its own primary config (`conf/<script>.yaml`); the groups it shares with "
            "train.py (dataset, hw, paths, ...) are the ones above.", ""]
    for script, schema in SCRIPTS.items():
        shared = [f.name for f in dataclasses.fields(schema) if f.name in SHARED]
        own = keys(schema, "", skip=SHARED)
        out += [f"### {script}", "", class_doc(schema), ""]
        if shared:
            out += ["Composes: " + ", ".join(f"[{g}](#{g})" for g in shared) + ".", ""]
        out += (_key_table(own) if own else ["No keys of its own."]) + [""]
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # python -m speechkit.reference > reference.md
    print(markdown(), end="")
