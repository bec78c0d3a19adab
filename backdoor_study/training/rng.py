"""Seeding, device choice, and every random-number-generator state a resumed run must restore.

This module owns the process-wide RNGs (Python ``random``, NumPy's legacy global state, torch's
CPU and CUDA generators) plus any ``torch.Generator`` the trainer hands it. States are captured
as tensors and plain Python values only, so a checkpoint holding them loads with
``torch.load(..., weights_only=True)`` and no allowlisting. It must not create RNGs of its own.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

# cuBLAS needs this to be deterministic; it only takes effect if set before cuBLAS starts.
_CUBLAS_WORKSPACE = ":4096:8"


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, NumPy's global RNG and torch (CPU and every CUDA device).

    Turns on ``torch.use_deterministic_algorithms``: strictly on CPU-only machines; with
    ``warn_only=True`` where CUDA is present, since a few CUDA kernels have no deterministic
    version and should warn rather than stop a run.
    """
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed={seed!r} is invalid: expected an integer in [0, 2**32)")
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - the legacy global state is what third-party code reads
    torch.manual_seed(seed)  # also seeds every CUDA device
    cuda = torch.cuda.is_available()
    if cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", _CUBLAS_WORKSPACE)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=cuda)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is an error."""
    name = str(getattr(name, "value", name))  # accept the config's Device enum as well as str
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device={name!r} was requested but CUDA is not available in this environment "
                f"(torch {torch.__version__}); use device=auto or device=cpu"
            )
        return torch.device(name)
    raise ValueError(f"device={name!r} is invalid: expected one of ['auto', 'cpu', 'cuda']")


def capture_rng_state(
    generators: dict[str, torch.Generator] | None = None, *, cuda: bool | None = None
) -> dict[str, Any]:
    """Every global RNG state, plus ``generators`` by name, as tensors and plain values.

    ``cuda`` (default: whether CUDA is initialised) adds ``torch.cuda.get_rng_state_all()``.
    """
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()  # noqa: NPY002
    if cuda is None:
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return {
        "python": {
            "version": int(py_version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if cuda else None,
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }


def restore_rng_state(
    state: dict[str, Any], generators: dict[str, torch.Generator] | None = None
) -> None:
    """Put back what :func:`capture_rng_state` captured, including the named ``generators``."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            npy["kind"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) != torch.cuda.device_count():
            raise RuntimeError(
                f"the saved RNG state covers {len(cuda_states)} CUDA devices but "
                f"{torch.cuda.device_count()} are visible; resume on the same devices"
            )
        torch.cuda.set_rng_state_all(cuda_states)
    saved = state.get("generators", {})
    for name, g in (generators or {}).items():
        if name not in saved:
            raise KeyError(f"no saved state for generator {name!r} (saved: {sorted(saved)})")
        g.set_state(saved[name])
