"""What the top-level scripts share: the one set-up path from a composed config to the work.

Required values and every value's range are checked first, before the work's module (and with it torch, datasets
and transformers) is imported, so a config that cannot work is refused in about a second; it, or one that only the
data can reveal as wrong, ends the program with its one-line message and exit status 2, no traceback.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from omegaconf import DictConfig

from speechkit.config import ConfigError, RunError, check_required


def run_or_exit(module: str, cfg: DictConfig) -> Any:
    """Check `cfg`, then import `module` (e.g. "speechkit.commands.train") and return its run(cfg)."""
    from speechkit.validation import check_values

    try:
        check_required(cfg)
        check_values(cfg)
        return importlib.import_module(module).run(cfg)
    except ConfigError as err:  # say what to change; exit status 2, as for a bad command line
        print(f"speechkit: config error: {err}", file=sys.stderr)
        sys.exit(2)
    except RunError as err:  # say what happened and what to do; exit status 1
        print(f"speechkit: error: {err}", file=sys.stderr)
        sys.exit(1)
