"""What the top-level scripts share: the one set-up path from a command line to the work.

`prepare()` runs when a script is started: the schemas are registered with Hydra (speechkit/config.py, the tasks'
from their registry) and a command line that still uses a key from before the per-task configs is refused with the
key's new name. Hydra composes the config; `run_or_exit` checks required values and every value's range before the
work's module (and with it torch, datasets and transformers) is imported, so a config that cannot work is refused in
about a second; it, or one that only the data can reveal as wrong, ends the program with its one-line message and
exit status 2, no traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from typing import Any, List, Optional

from omegaconf import DictConfig

from speechkit import hub_access
from speechkit.config import ConfigError, RunError, check_required

# Keys the per-task configs moved (old key, or prefix of keys -> new one). Typed on a command line, the old one is
# refused naming the new one.
MOVED = {
    "vocab": "task.vocab",
    "decoder": "task.decoder",
    "model.ctc_loss_reduction": "task.ctc_loss_reduction",
    "model.ctc_zero_infinity": "task.ctc_zero_infinity",
    "dataset.audio_column": "dataset.columns.audio",
    "dataset.file_column": "dataset.columns.file",
    "dataset.text_column": "dataset.columns.text",
    "dataset.label_column": "dataset.columns.label",
    "dataset.rttm_column": "dataset.columns.rttm",
    "dataset.segment_columns": "dataset.columns.segments",
}


def register_configs() -> None:
    """Every primary config's schema, and each task's schema in the `task` group (conf/task/<name>.yaml composes onto
    <name>_schema)."""
    from hydra.core.config_store import ConfigStore

    from speechkit import config as C
    from speechkit.tasks import TASKS

    # conf/hydra/launcher/submitit_slurm.yaml shadows the submitit plugin's config of that name on purpose, and Hydra
    # checks it against the plugin's schema ("automatic schema matching"), with a deprecation notice each time.
    warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/submitit_slurm' is validated against ConfigStore")
    cs = ConfigStore.instance()
    for name, schema in (("train", C.TrainConfig), ("evaluate", C.EvaluateConfig), ("inspect", C.InspectConfig),
                         ("transcribe", C.TranscribeConfig), ("diarize", C.DiarizeConfig), ("deploy", C.DeployConfig),
                         ("serve", C.ServeConfig), ("export", C.ExportConfig)):
        cs.store(name=f"{name}_schema", node=schema)
    for name, entry in TASKS.items():
        cs.store(group="task", name=f"{name}_schema", node=entry.schema)


def moved(argv: List[str]) -> Optional[str]:
    """The refusal of the first command-line argument that uses a moved key, or None."""
    for arg in argv:
        if arg.startswith("-"):
            continue
        key, is_set, value = arg.lstrip("+~").partition("=")
        for old, new in MOVED.items():
            if key != old and not key.startswith(old + "."):
                continue
            if key == "decoder":  # the group decoder=greedy|kenlm became a key
                return f"{arg}: the decoder is the speech-recognition task's own now; write task.decoder.type={value}"
            if key == "vocab":
                return f"{arg}: the vocab is the speech-recognition task's own now (task.vocab.*); leave vocab= out"
            return f"{arg}: {key} is {new + key[len(old):]} now; write {new + key[len(old):]}{is_set}{value}"
    return None


SCRIPTS = {"train.py": "TrainConfig", "evaluate.py": "EvaluateConfig", "inspect_data.py": "InspectConfig",
           "transcribe.py": "TranscribeConfig", "diarize.py": "DiarizeConfig", "deploy.py": "DeployConfig",
           "serve.py": "ServeConfig", "export.py": "ExportConfig"}  # each script's primary schema (speechkit/config.py)


def unknown_key(argv: List[str], schema) -> Optional[str]:
    """The refusal of the first `key=value` whose key no schema has, with the closest keys it may have meant, or
    whose key takes one of a few names (an Enum) and the value is none of them; or None. Only what is certain is
    refused: a key under a free-form mapping (model.architecture.*), a task key any task's schema has, `+key=` (an
    addition), Hydra's own keys and group choices are left to Hydra."""
    import dataclasses
    import difflib
    import enum
    import typing

    from speechkit.tasks import TASKS

    def fields_of(cls) -> Optional[dict]:
        """A schema's fields and their types, or None for a free-form value (a dict, Any, a list)."""
        if isinstance(cls, list):  # the task group: any task's schema
            merged = {}
            for c in cls:
                merged.update(fields_of(c))
            return merged
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    def inner(hint):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return inner(args[0]) if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint

    def resolves(node, rest) -> bool:
        """Whether the key parts `rest` exist below the schema `node` (anything does below a free-form value)."""
        for part in rest:
            known = fields_of(node)
            if known is None:
                return True
            if part not in known:
                return False
            node = inner(known[part])
        return True

    tasks = [entry.schema for entry in TASKS.values()]
    for arg in argv:
        if arg.startswith(("-", "+", "~")) or "=" not in arg:
            continue
        key = arg.split("=", 1)[0]
        parts = key.split(".")
        if len(parts) < 2 and parts[0] in GROUPS:  # a group choice: model=whisper_small
            continue
        if parts[0].split("/")[0] == "hydra" or "/" in key:  # Hydra's own, or a group by path (hydra/launcher=...)
            continue
        node, path = schema, []
        for part in parts:
            known = fields_of(node)
            if known is None:  # below a free-form value: anything goes
                break
            if part not in known:
                where = ".".join(path)
                rest = parts[len(path) + 1:]
                near = [".".join([*path, n, *rest]) for n in difflib.get_close_matches(part, list(known), 3, 0.6)
                        if resolves(inner(known[n]), rest)]  # a key that exists, whole: not adapter.path
                hint = f"; did you mean {' or '.join(near)}?" if near \
                    else f" ({where or 'the config'} has {', '.join(sorted(known))})"
                return f"{arg}: {key} is not a key{hint}"
            path.append(part)
            node = tasks if path == ["task"] and node is schema else inner(known[part])
        value = arg.split("=", 1)[1]
        if isinstance(node, type) and issubclass(node, enum.Enum) and path == parts \
                and value not in {m.value for m in node} and value not in ("null", "") and "${" not in value:
            return f"{arg}: {key} is one of {', '.join(m.value for m in node)}"
    return None


# Groups chosen by name on a command line (conf/<group>/<option>.yaml), not keys of a schema.
GROUPS = {"task", "dataset", "model", "hw", "trainer", "logger", "experiment", "debug", "hparams_search", "paths"}


def prepare(argv: Optional[List[str]] = None) -> None:
    """At the start of every script: the schemas registered; a moved key, or a key no schema has, refused (exit
    status 2)."""
    from speechkit import config as C

    register_configs()
    args = sys.argv[1:] if argv is None else argv
    refusal = moved(args)
    script = os.path.basename(sys.argv[0])
    if refusal is None and script in SCRIPTS:
        refusal = unknown_key(args, getattr(C, SCRIPTS[script]))
    if refusal:
        print(f"speechkit: config error: {refusal}", file=sys.stderr)
        sys.exit(2)


def run_or_exit(module: str, cfg: DictConfig) -> Any:
    """Check `cfg`, then import `module` (e.g. "speechkit.commands.train") and return its run(cfg)."""
    from speechkit.validation import check_values

    try:
        check_required(cfg)
        check_values(cfg)
        hub_access.check(cfg)  # a Hub repo out of reach, mistyped or gated: said now, not after loading the rest
        return importlib.import_module(module).run(cfg)
    except ConfigError as err:  # say what to change; exit status 2, as for a bad command line
        print(f"speechkit: config error: {err}", file=sys.stderr)
        sys.exit(2)
    except RunError as err:  # say what happened and what to do; exit status 1
        print(f"speechkit: error: {err}", file=sys.stderr)
        sys.exit(1)
