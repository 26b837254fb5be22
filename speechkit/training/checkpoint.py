"""Checkpoints: written whole into a hidden folder, then renamed into place (a rename is atomic), so a run
killed mid-save leaves at worst a `.tmp-*` folder that resume never looks at.

A checkpoint is what `accelerate` saves (model, optimizer, grad scaler, RNG states, registered objects such as
the LR scheduler) plus `trainer_state.json` (step, position in the epoch, best WER), written last.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from typing import List, Optional

import torch
from accelerate import Accelerator

from speechkit.config import RunError

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.json"
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
    """trainer.resume: null (start fresh), "auto" (newest complete checkpoint, if any) or a checkpoint path."""
    if not resume:
        return None
    if resume == "auto":
        found = complete_checkpoints(root)
        return found[-1] if found else None
    path = os.path.expanduser(resume)
    if not os.path.isfile(os.path.join(path, STATE_FILE)):
        raise FileNotFoundError(f"trainer.resume: {path} is not a complete checkpoint (no {STATE_FILE})")
    return path


def save(accelerator: Accelerator, root: str, step: int, state: dict, keep: Optional[int]) -> str:
    final = os.path.join(root, f"step-{step}")
    tmp = os.path.join(root, f".tmp-step-{step}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(root, exist_ok=True)
    accelerator.wait_for_everyone()
    failure = None
    try:
        accelerator.save_state(tmp)  # every process writes its own files (its RNG states) into tmp
        if accelerator.is_main_process:
            _write_json(os.path.join(tmp, STATE_FILE), state)  # last: its presence marks the folder complete
    except Exception as err:  # a full disk, a quota (safetensors reports it as its own error, not an OSError)
        failure = err
    # All processes learn whether any of them failed (this is also the barrier before the rename): one failing
    # alone must not leave the others waiting.
    failed = torch.tensor([failure is not None], dtype=torch.float32, device=accelerator.device)
    if accelerator.num_processes > 1:
        failed = accelerator.reduce(failed, "sum")
    if failed.item():
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # the half-written folder goes, the previous checkpoint stays
        previous = complete_checkpoints(root)
        why = (getattr(failure, "strerror", None) or str(failure).strip().splitlines()[0][:200]) if failure \
            else "it failed in another process"
        raise RunError(f"checkpoint step-{step} could not be written to {root} ({why}); the newest "
                       f"complete checkpoint, {os.path.basename(previous[-1]) if previous else 'none'}, is intact: "
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


def replace_dir(src_writer, final: str) -> None:
    """Write a directory through `src_writer(tmp_path)`, then move it into place in one rename."""
    tmp = os.path.join(os.path.dirname(final), ".tmp-" + os.path.basename(final))
    shutil.rmtree(tmp, ignore_errors=True)
    src_writer(tmp)
    old = None
    if os.path.isdir(final):
        old = final + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    if old:
        shutil.rmtree(old)
