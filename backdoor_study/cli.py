"""The one wrapper every Hydra entry point runs under: :func:`hydra_entry`.

A user's mistake at run time (a refused run directory, data that changed, an unusable checkpoint,
a missing file) is reported as one line naming the problem and the exit status is 1; Hydra's
"Error executing job" banner and the traceback are for bugs. ``HYDRA_FULL_ERROR=1`` (or
``BACKDOOR_STUDY_DEBUG=1``) re-raises, so the full traceback is there when it is wanted.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from backdoor_study.config import CONF_DIR, ConfigError
from backdoor_study.data.schema import DataValidationError
from backdoor_study.rundir import RunDirError
from backdoor_study.training.checkpoint import CheckpointError

DEBUG_ENV = ("HYDRA_FULL_ERROR", "BACKDOOR_STUDY_DEBUG")

# Errors that describe bad input or a bad run directory, not a bug: one line, exit 1. Entry points
# add their own (eval's EvalError) through ``user_errors``.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    RunDirError,
    DataValidationError,
    CheckpointError,
    FileNotFoundError,
    PermissionError,
)


def debugging() -> bool:
    return any(os.environ.get(name, "") not in ("", "0") for name in DEBUG_ENV)


def one_line(error: BaseException) -> str:
    """``error`` as ``TypeName: message`` on a single line."""
    text = " ".join(str(error).split()) or "(no message)"
    return f"{type(error).__name__}: {text}"


# Entry points whose multiruns log from the launching process (conf/{name}.yaml registers
# sweep.SweepCallback): their sweep logger is forked before Hydra composes the sweep.
PREWARM_SWEEP_LOGGER = ("train",)


def hydra_entry(
    config_name: str,
    fn: Callable[[DictConfig], Any],
    *,
    user_errors: tuple[type[BaseException], ...] = (),
) -> None:
    """Run ``fn`` as a ``@hydra.main`` app of ``conf/{config_name}.yaml``; user errors -> one line
    on stderr and exit status 1 (full traceback with HYDRA_FULL_ERROR=1 or BACKDOOR_STUDY_DEBUG=1)."""
    import hydra

    caught = USER_ERRORS + tuple(user_errors)
    prog = f"backdoor_study.{config_name}"

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    def main(cfg: DictConfig) -> Any:
        try:
            return fn(cfg)  # a sweeper (hydra/sweeper=optuna) reads the job's return value
        except caught as e:
            if debugging():
                raise
            print(f"{prog}: error: {one_line(e)}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None

    if config_name in PREWARM_SWEEP_LOGGER:
        from backdoor_study import sweep

        sweep.prewarm(sys.argv[1:])
    main()
