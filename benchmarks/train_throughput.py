"""Training throughput: our Trainer (checkpoint every epoch) against a bare PyTorch loop.

For each model (built from the composed Hydra config, as ``train.py`` builds it), both loops run
on the same synthetic in-memory batches with the same initial weights, optimizer, scheduler,
gradient clipping, shuffle order and one validation forward pass per epoch. The bare loop writes
no checkpoints, keeps no history and shows no progress. The two are run alternately,
``--repeats`` times each, on one thread; the table gives the median samples/s of each and the
median of the per-repeat ratios (trainer / bare, adjacent runs), in wall-clock time and in this
process's CPU time (which other jobs on a shared machine disturb far less; it leaves out the
wait for ``fsync``, which the wall-clock ratio includes). The target is a ratio >= 0.9.
As a check that both do the same work, the bare loop's final weights must equal the Trainer's
last checkpoint bit for bit.

    python benchmarks/train_throughput.py [--models mlp lstm] [--n-train 4000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from backdoor_study.config import CONF_DIR
from backdoor_study.models import Batch, ClinicalModel, InputSpec, build_model
from backdoor_study.training import Trainer, load_checkpoint, seed_everything

MODELS = ("mlp", "lstm", "tcn", "tabtransformer")
SEED = 0


def synthetic_batches(
    n: int, n_steps: int, n_features: int, spec: InputSpec, seed: int
) -> tuple[Batch, torch.Tensor]:
    """Random tensors in the batch format with binary labels (about 12 % positive)."""
    g = torch.Generator().manual_seed(seed)
    batch = {
        "x": torch.randn(n, n_steps, n_features, generator=g),
        "mask": (torch.rand(n, n_steps, n_features, generator=g) < 0.7).float(),
        "static_num": torch.randn(n, spec.n_static_num, generator=g),
        "static_cat": torch.stack(
            [torch.randint(0, c, (n,), generator=g) for c in spec.static_cat_cardinalities], dim=1
        ),
    }
    y = (torch.rand(n, generator=g) < 0.12).long()
    return batch, y


def bare_loop(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    train: Batch,
    y_train: torch.Tensor,
    val: Batch,
    *,
    epochs: int,
    batch_size: int,
    grad_clip: float | None,
) -> None:
    """The least a training loop can do: shuffle, step, clip, one validation forward pass."""
    shuffle = torch.Generator().manual_seed(SEED)
    n, n_val = len(y_train), len(next(iter(val.values())))
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=shuffle)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            loss = F.cross_entropy(
                model({k: v.index_select(0, idx) for k, v in train.items()}), y_train[idx]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for start in range(0, n_val, batch_size):
                model({k: v[start : start + batch_size] for k, v in val.items()})
        if scheduler is not None:
            scheduler.step()


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Median samples/s of the Trainer and of the bare loop for one model."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={name}", f"epochs={args.epochs}"])
    spec = InputSpec(
        n_steps=args.n_steps,
        n_features=args.n_features,
        n_static_num=4,
        static_cat_cardinalities=(3, 5),
        n_classes=2,
    )
    train, y_train = synthetic_batches(args.n_train, args.n_steps, args.n_features, spec, seed=1)
    val, y_val = synthetic_batches(args.n_val, args.n_steps, args.n_features, spec, seed=2)
    batch_size, grad_clip = int(cfg.trainer.batch_size), cfg.trainer.grad_clip
    optimizer_factory = instantiate(cfg.optimizer)
    scheduler_factory = instantiate(cfg.scheduler) if cfg.scheduler else None

    def fresh_model() -> ClinicalModel:
        seed_everything(SEED)
        return build_model(cfg.model, spec)

    def run_trainer() -> tuple[float, float, dict[str, torch.Tensor]]:
        model = fresh_model()
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(
                model,
                optimizer_factory,
                scheduler_factory,
                epochs=args.epochs,
                batch_size=batch_size,
                seed=SEED,
                device="cpu",
                checkpoint_dir=Path(tmp),
                grad_clip=grad_clip,
                progress=False,
            )
            wall, cpu = time.perf_counter(), time.process_time()
            trainer.fit(train, y_train, val, y_val)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            last = load_checkpoint(trainer.last_checkpoint)["model_state"]
        return wall, cpu, last

    def run_bare(epochs: int = args.epochs) -> tuple[float, float, dict[str, torch.Tensor]]:
        model = fresh_model()
        optimizer = optimizer_factory(model.parameters())
        scheduler = scheduler_factory(optimizer) if scheduler_factory else None
        wall, cpu = time.perf_counter(), time.process_time()
        bare_loop(
            model,
            optimizer,
            scheduler,
            train,
            y_train,
            val,
            epochs=epochs,
            batch_size=batch_size,
            grad_clip=grad_clip,
        )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return wall, cpu, model.state_dict()

    run_bare(epochs=1)  # warm-up (allocator, lazy initialisation), not timed
    runners: dict[str, Callable[[], tuple[float, float, dict[str, torch.Tensor]]]] = {
        "trainer": run_trainer,
        "bare": run_bare,
    }
    wall: dict[str, list[float]] = {"trainer": [], "bare": []}
    cpu: dict[str, list[float]] = {"trainer": [], "bare": []}
    finals: dict[str, dict[str, torch.Tensor]] = {}
    for rep in range(args.repeats):
        for which in ("trainer", "bare") if rep % 2 == 0 else ("bare", "trainer"):
            w, c, finals[which] = runners[which]()
            wall[which].append(w)
            cpu[which].append(c)
    samples = args.epochs * args.n_train

    def paired_ratio(times: dict[str, list[float]]) -> float:
        # A repeat's two runs are adjacent in time, so their ratio cancels most machine load.
        return statistics.median(b / t for t, b in zip(times["trainer"], times["bare"]))

    return {
        "model": name,
        "trainer": samples / statistics.median(wall["trainer"]),
        "bare": samples / statistics.median(wall["bare"]),
        "ratio": paired_ratio(wall),
        "cpu_ratio": paired_ratio(cpu),
        "same_weights": all(
            torch.equal(v, finals["bare"][k]) for k, v in finals["trainer"].items()
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-val", type=int, default=800)
    parser.add_argument("--n-steps", type=int, default=48)
    parser.add_argument("--n-features", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(
        f"{args.n_train} train / {args.n_val} val samples x {args.n_steps} steps x "
        f"{args.n_features} features, {args.epochs} epochs, median of {args.repeats}, "
        f"{args.threads} thread(s), torch {torch.__version__}"
    )
    header = (
        f"{'model':<16}{'trainer samples/s':>19}{'bare samples/s':>16}{'ratio':>8}"
        f"{'cpu ratio':>11}  same weights"
    )
    print(header)
    print("-" * len(header))
    for name in args.models:
        r = measure(name, args)
        print(
            f"{r['model']:<16}{r['trainer']:>19.0f}{r['bare']:>16.0f}{r['ratio']:>8.3f}"
            f"{r['cpu_ratio']:>11.3f}  {'yes' if r['same_weights'] else 'NO'}"
        )


if __name__ == "__main__":
    main()
