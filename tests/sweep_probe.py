"""A Hydra callback for the sweep tests: each job records, as it ends, which of MLflow and
matplotlib the process that ran it has imported. Added to a sweep from the command line:
``+hydra.callbacks.probe._target_=tests.sweep_probe.ModulesProbe +hydra.callbacks.probe.out=DIR``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback

WATCHED = ("mlflow", "matplotlib")


class ModulesProbe(Callback):
    def __init__(self, out: str) -> None:
        self.out = out

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        record = {
            "pid": os.getpid(),
            "imported": [m for m in WATCHED if m in sys.modules],
        }
        path = Path(self.out) / f"job_{HydraConfig.get().job.num}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))


def probed(out: Path) -> list[str]:
    """The overrides that add the probe, writing to ``out``."""
    return [
        "+hydra.callbacks.probe._target_=tests.sweep_probe.ModulesProbe",
        f"+hydra.callbacks.probe.out={out}",
    ]


def imported(out: Path) -> dict[int, list[str]]:
    """Job number -> the watched modules its process had imported when it ended."""
    return {
        int(p.stem.split("_")[1]): json.loads(p.read_text())["imported"]
        for p in sorted(out.glob("job_*.json"))
    }
