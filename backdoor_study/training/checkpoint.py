"""Per-epoch training checkpoints: their layout, atomic writing, safe loading and rotation.

A checkpoint is ``checkpoint_epoch_{N}.pt`` (N = completed epochs, 1-based) holding only tensors and
plain Python values, so it always loads with ``torch.load(..., weights_only=True)``: this module
never unpickles arbitrary objects and never falls back to ``weights_only=False``. Files are
written atomically (temp file in the same directory, fsync, ``os.replace``), so a crash leaves
either the previous file set or the complete new file, never a torn one.

The trainer decides what goes into a checkpoint; this module checks its shape and owns the disk.
"""

from __future__ import annotations

import io
import re
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from backdoor_study.utils import atomic_write_bytes

FORMAT_VERSION = 1
CHECKPOINT_GLOB = "checkpoint_epoch_*.pt"
_NAME_RE = re.compile(r"^checkpoint_epoch_(\d+)\.pt$")

# Keys every training checkpoint holds; resuming refuses a file missing any of them.
TRAINING_KEYS = (
    "format_version",
    "epoch",
    "model_state",
    "optimizer_state",
    "scheduler_state",
    "best",
    "history",
    "stopped_early",
    "rng",
    "trainer",
    "metadata",
)
BEST_KEYS = ("epoch", "val_auroc", "model_state", "epochs_without_improvement")
# What any weights file of this format holds (final_model.pt as well as checkpoints).
MODEL_KEYS = ("model_state",)

_PLAIN_SCALARS = (bool, int, float, str, type(None))
_PLAIN_MAPPINGS = (dict, OrderedDict)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: unreadable, unsafe, of another format, or incomplete."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot use checkpoint {self.path}: {reason}")


def checkpoint_path(directory: str | Path, epoch: int) -> Path:
    """Where the checkpoint written after ``epoch`` completed epochs lives."""
    return Path(directory) / f"checkpoint_epoch_{epoch}.pt"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every checkpoint in ``directory``, oldest epoch first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.glob(CHECKPOINT_GLOB):
        m = _NAME_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint with the highest epoch in ``directory``, or None when there is none."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError naming the key if ``obj`` holds anything but tensors and plain values.

    Plain values are dict or OrderedDict (what ``state_dict()`` returns) with str/int keys, list,
    tuple, int, float, str, bool and None, by exact type (``np.float64`` subclasses float but is
    pickled as a NumPy object): exactly what ``torch.load(weights_only=True)`` reads without an
    allowlist.
    """
    if isinstance(obj, torch.Tensor) or type(obj) in _PLAIN_SCALARS:
        return
    if type(obj) in _PLAIN_MAPPINGS:
        for k, v in obj.items():
            if type(k) not in (str, int):
                raise TypeError(f"{where} has a key of type {type(k).__name__}: {k!r}")
            check_plain(v, f"{where}[{k!r}]")
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__name__} ({obj!r:.80}); checkpoints hold only tensors and "
        "plain values (dict/list/tuple/int/float/str/bool/None): convert it first"
    )


def write_plain_state(path: str | Path, state: dict[str, Any]) -> Path:
    """``state`` (tensors and plain values only, checked) with ``format_version``, written atomically.

    Checkpoints and ``final_model.pt`` both go through here, so :func:`load_checkpoint` reads
    either with ``weights_only=True``.
    """
    check_plain(state, "checkpoint")
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def save_checkpoint(state: dict[str, Any], directory: str | Path, keep_last: int | None) -> Path:
    """Write ``state`` atomically as the checkpoint of ``state['epoch']``, then rotate.

    ``state`` must pass :func:`check_plain` (TypeError naming the key otherwise), so whatever is
    written can be read back by :func:`load_checkpoint`. ``keep_last=k`` deletes checkpoints of earlier epochs beyond the newest ``k``, only after the
    new file is in place. Checkpoints of later epochs (left by an earlier run) are not touched.
    """
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last={keep_last!r} is invalid: expected None or an integer >= 1")
    epoch = int(state["epoch"])
    path = write_plain_state(checkpoint_path(directory, epoch), state)
    if keep_last is not None:
        older = [p for e, p in list_checkpoints(directory) if e <= epoch]
        for stale in older[:-keep_last]:
            stale.unlink(missing_ok=True)
    return path


def _snapshot(obj: Any, memo: dict[int, torch.Tensor] | None = None) -> Any:
    """A copy of ``obj`` whose tensors are fresh CPU copies; tensors shared in ``obj`` stay shared.

    Dicts keep their type and a ``state_dict``'s ``_metadata`` (module versions
    ``load_state_dict`` reads).
    """
    memo = {} if memo is None else memo
    if isinstance(obj, torch.Tensor):
        if id(obj) not in memo:
            memo[id(obj)] = obj.detach().to("cpu", copy=True)
        return memo[id(obj)]
    if type(obj) in _PLAIN_MAPPINGS:
        out = type(obj)((k, _snapshot(v, memo)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata
        return out
    if type(obj) in (list, tuple):
        return type(obj)(_snapshot(v, memo) for v in obj)
    return obj  # anything else is left for check_plain to name


class CheckpointWriter:
    """Writes checkpoints on one background thread, so serialising and ``fsync`` overlap training.

    :meth:`submit` snapshots the state at once (training may change the tensors afterwards),
    waits for the previous write (so writes land in order and a failed write stops training at
    the next epoch), then queues this one. Leaving the ``with`` block waits for the last write and
    re-raises its error, unless another exception is already on its way out. Each write is
    :func:`save_checkpoint`, so what reaches disk is atomic either way.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending: Future[Path] | None = None

    def submit(self, state: dict[str, Any], directory: str | Path, keep_last: int | None) -> Path:
        """Queue ``state`` as the checkpoint of ``state['epoch']``; returns its future path."""
        snapshot = _snapshot(state)
        self.wait()
        self._pending = self._executor.submit(save_checkpoint, snapshot, directory, keep_last)
        return checkpoint_path(directory, int(state["epoch"]))

    def wait(self) -> None:
        """Block until the queued write (if any) is on disk; re-raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.wait()
        except BaseException:
            if exc_type is None:
                raise  # the write failed: that is the error to report
            # otherwise the exception already leaving the block is the one to report
        finally:
            self._executor.shutdown(wait=True)


def _load_failure(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in our words. PyTorch's own message suggests
    retrying with ``weights_only=False``, which is never the fix here: it is not repeated."""
    text = str(error)
    unsafe = _UNSUPPORTED_GLOBAL.search(text)
    if unsafe:
        return (
            f"it holds pickled objects other than tensors and plain values ({unsafe.group(1)}), "
            "which are never loaded (weights_only=True); re-create the file with this package"
        )
    detail = _UNPICKLER_DETAIL.search(text)
    what = " ".join(detail.group(1).split()) if detail else type(error).__name__
    return (
        "not a valid checkpoint: truncated or corrupt, or not written by torch.save "
        f"({what}); use another checkpoint or train again"
    )


_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
_UNPICKLER_DETAIL = re.compile(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", re.S)


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    *,
    required: Sequence[str] = MODEL_KEYS,
) -> dict[str, Any]:
    """Read a weights file with ``weights_only=True`` and check it; CheckpointError if unusable.

    Refused: a missing, truncated or corrupt file; a file holding pickled objects other than
    tensors and plain values; another ``format_version``; a missing key of ``required``. The
    default asks only for ``model_state`` (so ``final_model.pt`` loads too); resuming asks for
    :data:`TRAINING_KEYS`, and with them the keys of ``best``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointError(path, _load_failure(e)) from e
    if not isinstance(state, dict):
        raise CheckpointError(
            path, f"expected a dict at the top level, found {type(state).__name__}"
        )
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            path, f"format_version={version!r}, this code reads format_version={FORMAT_VERSION}"
        )
    missing = [k for k in required if k not in state]
    if not missing and "best" in required and isinstance(state["best"], dict):
        missing = [f"best.{k}" for k in BEST_KEYS if k not in state["best"]]
    if missing:
        raise CheckpointError(path, f"missing keys {missing}")
    return state
