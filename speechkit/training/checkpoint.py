"""Checkpoints: written whole into a hidden folder, then renamed into place (a rename is atomic), so a run
killed mid-save leaves at worst a `.tmp-*` folder that resume never looks at.

A checkpoint is what `accelerate` saves (model, optimizer, grad scaler, RNG states, registered objects such as
the LR scheduler), `manifest.json` (each of those files' size and SHA-256) and `trainer_state.json` (step, position
in the epoch, best WER, the schedule it was made for), written last. A checkpoint is complete when its state file
is there, intact when every file matches the manifest: a copy or sync cut short, or a bit flipped on disk, is found
at resume (which then takes the newest intact one and names the damaged ones), not as a traceback halfway through
loading it.

Trust: accelerate keeps the scheduler, the sampler and the random states as pickles, and loading a pickle can run
code. A checkpoint folder (or the S3 prefix a SageMaker job resumes from) is therefore code: resume only from
folders you or your own jobs wrote. The manifest detects damage, not tampering (whoever can write the pickles can
write the manifest). The weights speechkit ships (model/, checkpoints/best/) are safetensors and load without
unpickling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from typing import Callable, Dict, List, Optional

import torch
from accelerate import Accelerator

from speechkit.config import RunError, first_line

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
_NAME = re.compile(r"^step-(\d+)$")


def complete_checkpoints(root: str) -> List[str]:
    """Complete checkpoints under `root`, oldest first."""
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = _NAME.match(name)
        if m and os.path.isfile(os.path.join(root, name, STATE_FILE)):
            found.append((int(m.group(1)), os.path.join(root, name)))
    return [path for _, path in sorted(found)]


def resolve_resume(resume: Optional[str], root: str) -> Optional[str]:
    """trainer.resume: null (start fresh), "auto" (newest intact checkpoint, if any; damaged newer ones are named
    and skipped) or a checkpoint path (refused in one line when incomplete or damaged)."""
    if not resume:
        return None
    if resume == "auto":
        found = complete_checkpoints(root)
        damaged = []
        for path in reversed(found):
            problem = damage(path)
            if problem is None:
                for name, why in damaged:
                    log.warning("trainer.resume=auto: checkpoint %s is damaged (%s); skipped for %s, the newest "
                                "intact one (the damaged folder is left as it is)", name, why, os.path.basename(path))
                return path
            damaged.append((os.path.basename(path), problem))
        if damaged:
            raise RunError(f"trainer.resume=auto: no intact checkpoint in {root}: "
                           + "; ".join(f"{name} is damaged ({why})" for name, why in damaged)
                           + ". Copy them again from where they came from, or start fresh with trainer.resume=null")
        return None
    path = os.path.expanduser(resume)
    if not os.path.isfile(os.path.join(path, STATE_FILE)):
        raise RunError(f"trainer.resume: {path} is not a complete checkpoint (no {STATE_FILE}); give a "
                       "checkpoints/step-N folder, or trainer.resume=auto for the newest one in the run dir")
    problem = damage(path)
    if problem:
        raise RunError(f"trainer.resume: checkpoint {path} is damaged ({problem}); copy it again, or give "
                       "another checkpoint")
    return path


def newest_intact(root: str) -> Optional[str]:
    """The name of the newest checkpoint under `root` that matches its manifest (what a resume would take)."""
    return next((os.path.basename(p) for p in reversed(complete_checkpoints(root)) if damage(p) is None), None)


def damage(path: str) -> Optional[str]:
    """What is wrong with the checkpoint at `path` (a file missing, cut short or changed, an unreadable state
    file), or None when it is intact. A checkpoint of an earlier release has no manifest: its state file is read,
    its files are taken as they are."""
    try:
        load_state(path)
    except (OSError, ValueError) as err:
        return f"{STATE_FILE} unreadable: {err}"
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        return None
    try:
        with open(manifest_path) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError) as err:
        return f"{MANIFEST} unreadable: {err}"
    for name, want in sorted(files.items()):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            return f"{name} is missing"
        size = os.path.getsize(file)
        if size != want["size"]:
            return f"{name} has {size} bytes of {want['size']}"
        if _sha256(file) != want["sha256"]:
            return f"{name} does not match its checksum"
    return None


def _manifest(folder: str) -> Dict[str, dict]:
    """Size and SHA-256 of every file under `folder` (the state file and the manifest aside)."""
    files = {}
    for base, _, names in os.walk(folder):
        for name in names:
            file = os.path.join(base, name)
            rel = os.path.relpath(file, folder)
            if rel not in (STATE_FILE, MANIFEST):
                files[rel] = {"size": os.path.getsize(file), "sha256": _sha256(file)}
    return files


def _sha256(file: str) -> str:
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save(accelerator: Accelerator, root: str, step: int, state: dict, keep: Optional[int],
         extra: Optional[Callable[[str], None]] = None) -> str:
    final = os.path.join(root, f"step-{step}")
    tmp = os.path.join(root, f".tmp-step-{step}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(root, exist_ok=True)
    accelerator.wait_for_everyone()
    failure = None
    try:
        accelerator.save_state(tmp)  # every process writes its own files (its RNG states) into tmp
        if extra is not None and accelerator.is_main_process:
            extra(tmp)  # what the trainer keeps beside accelerate's state (the weight average)
    except Exception as err:  # a full disk, a quota (safetensors reports it as its own error, not an OSError)
        failure = err
    # All processes learn whether any of them failed (this is also the barrier before the manifest and the rename,
    # so every process's files are there): one failing alone must not leave the others waiting.
    failed = _any_failed(accelerator, failure)
    if not failed and accelerator.is_main_process:
        try:
            _write_json(os.path.join(tmp, MANIFEST), {"files": _manifest(tmp)})
            _write_json(os.path.join(tmp, STATE_FILE), state)  # last: its presence marks the folder complete
        except Exception as err:
            failure = err
    if not failed:
        failed = _any_failed(accelerator, failure)
    if failed:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # the half-written folder goes, the previous checkpoint stays
        why = _why(failure, "it failed in another process")
        raise RunError(f"checkpoint step-{step} could not be written to {root} ({why}); the newest "
                       f"complete checkpoint, {newest_intact(root) or 'none'}, is intact: "
                       "free some space, then continue with trainer.resume=auto") from failure
    if accelerator.is_main_process:
        if os.path.isdir(final):  # the same step saved again after a resume
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        if keep is not None:
            for old in complete_checkpoints(root)[:-keep] if keep > 0 else complete_checkpoints(root):
                if old != final:
                    shutil.rmtree(old)
        log.info("Saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def _why(failure: Optional[BaseException], elsewhere: str) -> str:
    """What went wrong writing, in a few words: the OS's reason (e.g. "File too large"), or the error's first line;
    `elsewhere` when this process's write went fine and another's did not."""
    if failure is None:
        return elsewhere
    return getattr(failure, "strerror", None) or first_line(failure)


def _any_failed(accelerator: Accelerator, failure: Optional[BaseException]) -> bool:
    failed = torch.tensor([failure is not None], dtype=torch.float32, device=accelerator.device)
    if accelerator.num_processes > 1:
        failed = accelerator.reduce(failed, "sum")
    return bool(failed.item())


def load_state(path: str) -> dict:
    with open(os.path.join(path, STATE_FILE)) as f:
        return json.load(f)


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_dir(accelerator: Accelerator, src_writer, final: str, checkpoints: str) -> None:
    """`final` (checkpoints/best/, model/) written whole by the main process through `src_writer(tmp_path)` and
    renamed into place. A failure (a full disk) leaves the previous folder as it was, stops every process (none
    left waiting for another) with one line, and names the newest checkpoint to continue from."""
    failure = None
    if accelerator.is_main_process:
        try:
            replace_dir(src_writer, final)
        except Exception as err:  # OSError, or safetensors' own error for a full disk
            failure = err
    if _any_failed(accelerator, failure):
        why = _why(failure, "it failed in the main process")
        raise RunError(f"{final} could not be written ({why}); the newest intact checkpoint is "
                       f"{newest_intact(checkpoints) or 'none'}: free some space, then continue with "
                       "trainer.resume=auto, which writes it") from failure


def replace_dir(src_writer, final: str) -> None:
    """Write a directory through `src_writer(tmp_path)`, then move it into place in one rename; a failed write
    leaves no temporary folder and the previous `final` untouched."""
    tmp = os.path.join(os.path.dirname(final), ".tmp-" + os.path.basename(final))
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        src_writer(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.isdir(final):
        old = final + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    if old:
        shutil.rmtree(old)
