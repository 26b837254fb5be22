"""What the top-level scripts share: a config that cannot work ends the program with its message, no traceback."""

from __future__ import annotations

import sys
from typing import Callable, TypeVar

from omegaconf import DictConfig

from speechkit.config import ConfigError

T = TypeVar("T")


def run_or_exit(run: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    try:
        return run(cfg)
    except ConfigError as err:  # say what to change; exit status 2, as for a bad command line
        print(f"speechkit: config error: {err}", file=sys.stderr)
        sys.exit(2)
