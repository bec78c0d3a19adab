"""Structured-config schemas: the typed shape of every config group, registered with Hydra.

Hydra merges the YAML files in ``conf/`` onto these dataclasses, so a wrong type fails at
start-up naming the full key, and an unknown group option fails listing the available ones.
Range and choice checks live in ``__post_init__`` and run when :func:`validate` converts the
composed config to objects (``OmegaConf.to_object``), before anything is read or written.

Adding a component is one dataclass here plus one YAML file under ``conf/<group>/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

CONF_DIR = next(
    p
    for p in (
        Path(__file__).resolve().parent / "conf",
        Path(__file__).resolve().parent.parent / "conf",
    )
    if p.is_dir()
)


class ConfigError(ValueError):
    """A config value is out of range or not one of the valid choices."""


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Subset(str, Enum):
    dev = "dev"
    full = "full"


class PoisonSource(str, Enum):
    dirty_label = "dirty_label"  # non-target samples, relabelled to the target
    clean_label = "clean_label"  # target-class samples, labels unchanged


# ---------------------------------------------------------------------------- data
@dataclass
class SplitConfig:
    train: float = 0.7
    val: float = 0.15
    test: float = 0.15
    seed: int = 42

    def __post_init__(self) -> None:
        for key in ("train", "val", "test"):
            v = getattr(self, key)
            _require(0.0 <= v < 1.0, f"data.split.{key}", v, "a fraction in [0, 1)")
        _require(
            self.train > 0 and self.val > 0,
            "data.split",
            (self.train, self.val),
            "train and val fractions > 0",
        )
        total = self.train + self.val + self.test
        _require(
            abs(total - 1.0) < 1e-6,
            "data.split",
            (self.train, self.val, self.test),
            f"fractions summing to 1 (got {total:.4f})",
        )


@dataclass
class DataConfig:
    name: str = MISSING
    split: SplitConfig = field(default_factory=SplitConfig)


@dataclass
class SyntheticDataConfig(DataConfig):
    name: str = "synthetic"
    n_stays: int = 20000
    n_steps: int = 48
    prevalence: float = 0.12
    seed: int = 2012
    subset: Subset = Subset.dev
    dev_size: int = 8000
    data_dir: str = "${oc.env:BACKDOOR_STUDY_DATA_DIR,data}"

    def __post_init__(self) -> None:
        _require(self.n_stays >= 100, "data.n_stays", self.n_stays, "an integer >= 100")
        _require(self.n_steps >= 1, "data.n_steps", self.n_steps, "an integer >= 1")
        _require(
            0.01 <= self.prevalence <= 0.5,
            "data.prevalence",
            self.prevalence,
            "a fraction in [0.01, 0.5]",
        )
        _require(
            100 <= self.dev_size <= self.n_stays,
            "data.dev_size",
            self.dev_size,
            f"an integer in [100, data.n_stays={self.n_stays}]",
        )


PHYSIONET_SETS = ("a", "b")


# Where reusable files are cached (parsed PhysioNet sets, tracking's empty-store template):
# $BACKDOOR_STUDY_CACHE_DIR, else data/cache.
CACHE_ENV = "BACKDOOR_STUDY_CACHE_DIR"
DEFAULT_CACHE_DIR = "data/cache"


@dataclass
class PhysioNet2012DataConfig(DataConfig):
    name: str = "physionet2012"
    root: str = "${oc.env:BACKDOOR_STUDY_PHYSIONET_DIR,../shared/data/physionet2012}"
    train_sets: list[str] = field(default_factory=lambda: ["a"])
    test_sets: list[str] = field(default_factory=list)
    n_steps: int = 48
    cache_dir: str = f"${{oc.env:{CACHE_ENV},{DEFAULT_CACHE_DIR}}}"

    def __post_init__(self) -> None:
        for key in ("train_sets", "test_sets"):
            for s in getattr(self, key):
                _require(
                    s in PHYSIONET_SETS,
                    f"data.{key}",
                    list(getattr(self, key)),
                    f"sets from {list(PHYSIONET_SETS)}",
                )
        _require(
            len(self.train_sets) > 0, "data.train_sets", list(self.train_sets), "at least one set"
        )
        overlap = set(self.train_sets) & set(self.test_sets)
        _require(
            not overlap,
            "data.test_sets",
            list(self.test_sets),
            f"sets not also in train_sets (overlap {sorted(overlap)})",
        )


SKLEARN_TABLES = ("iris", "breast_cancer", "wine", "digits")


@dataclass
class SklearnDataConfig(DataConfig):
    name: str = "iris"

    def __post_init__(self) -> None:
        _require(
            self.name in SKLEARN_TABLES, "data.name", self.name, f"one of {list(SKLEARN_TABLES)}"
        )


@dataclass
class ParquetDataConfig(DataConfig):
    """Any file in the canonical layout, e.g. a MIMIC-IV cohort from scripts/00_to_parquet.py."""

    name: str = "parquet"
    path: str = MISSING


# ---------------------------------------------------------------------------- models
@dataclass
class ModelConfig:
    _target_: str = MISSING
    name: str = MISSING


@dataclass
class MLPConfig(ModelConfig):
    _target_: str = "backdoor_study.models.mlp.MLP"
    name: str = "mlp"
    hidden_sizes: list[int] = field(default_factory=lambda: [128, 64])
    dropout: float = 0.3  # the flattened grid has thousands of inputs: the MLP overfits first

    def __post_init__(self) -> None:
        _require(
            len(self.hidden_sizes) >= 1 and min(self.hidden_sizes) >= 1,
            "model.hidden_sizes",
            list(self.hidden_sizes),
            "a non-empty list of positive sizes",
        )
        _require(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "a fraction in [0, 1)")


@dataclass
class LSTMConfig(ModelConfig):
    _target_: str = "backdoor_study.models.lstm.LSTM"
    name: str = "lstm"
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.1
    bidirectional: bool = False

    def __post_init__(self) -> None:
        _require(self.hidden_size >= 1, "model.hidden_size", self.hidden_size, "an integer >= 1")
        _require(self.num_layers >= 1, "model.num_layers", self.num_layers, "an integer >= 1")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "a fraction in [0, 1)")


@dataclass
class TCNConfig(ModelConfig):
    _target_: str = "backdoor_study.models.tcn.TCN"
    name: str = "tcn"
    channels: list[int] = field(default_factory=lambda: [32, 32, 32, 32])
    kernel_size: int = 3
    dropout: float = 0.1

    def __post_init__(self) -> None:
        _require(
            len(self.channels) >= 1 and min(self.channels) >= 1,
            "model.channels",
            list(self.channels),
            "a non-empty list of positive channel counts",
        )
        _require(self.kernel_size >= 2, "model.kernel_size", self.kernel_size, "an integer >= 2")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "a fraction in [0, 1)")


@dataclass
class TabTransformerConfig(ModelConfig):
    _target_: str = "backdoor_study.models.tabtransformer.TabTransformer"
    name: str = "tabtransformer"
    dim: int = 32
    depth: int = 2
    heads: int = 4
    attn_dropout: float = 0.1
    ff_dropout: float = 0.1
    mlp_hidden: list[int] = field(default_factory=lambda: [64])

    def __post_init__(self) -> None:
        _require(
            self.dim >= 1 and self.dim % self.heads == 0,
            "model.dim",
            self.dim,
            f"a positive multiple of model.heads={self.heads}",
        )
        _require(self.depth >= 1, "model.depth", self.depth, "an integer >= 1")
        for key in ("attn_dropout", "ff_dropout"):
            _require(
                0.0 <= getattr(self, key) < 1.0,
                f"model.{key}",
                getattr(self, key),
                "a fraction in [0, 1)",
            )


# ---------------------------------------------------------------------------- triggers
@dataclass
class TriggerConfig:
    """Shared trigger fields. ``window`` is [start, end) in time steps; null means all steps."""

    _target_: str = MISSING
    name: str = MISSING
    target_label: int = 0
    variables: list[str] = field(default_factory=list)
    window: list[int] | None = None

    def __post_init__(self) -> None:
        _require(
            self.target_label >= 0, "trigger.target_label", self.target_label, "a class index >= 0"
        )
        if self.window is not None:
            w = list(self.window)
            _require(
                len(w) == 2 and 0 <= w[0] < w[1],
                "trigger.window",
                w,
                "[start, end) with 0 <= start < end",
            )


@dataclass
class NoTriggerConfig(TriggerConfig):
    _target_: str = "backdoor_study.poison.triggers.NoTrigger"
    name: str = "none"


class RareValueMode(str, Enum):
    out_of_bounds = "out_of_bounds"
    in_bounds = "in_bounds"


@dataclass
class RareValueTriggerConfig(TriggerConfig):
    _target_: str = "backdoor_study.poison.triggers.RareValueTrigger"
    name: str = "rare_value"
    variables: list[str] = field(default_factory=lambda: ["HR"])
    window: list[int] | None = field(default_factory=lambda: [36, 48])
    mode: RareValueMode = RareValueMode.out_of_bounds
    # out_of_bounds: max(train) + magnitude * std(train); in_bounds: the `quantile` of train values
    magnitude: float = 2.0
    quantile: float = 0.995
    # write only cells already observed (the observation mask stays as it was)
    preserve_mask: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            len(self.variables) >= 1,
            "trigger.variables",
            list(self.variables),
            "at least one variable",
        )
        _require(self.magnitude > 0, "trigger.magnitude", self.magnitude, "a number > 0")
        _require(
            0.5 < self.quantile < 1.0, "trigger.quantile", self.quantile, "a fraction in (0.5, 1)"
        )


@dataclass
class MissingnessTriggerConfig(TriggerConfig):
    _target_: str = "backdoor_study.poison.triggers.MissingnessTrigger"
    name: str = "missingness"
    variables: list[str] = field(default_factory=lambda: ["Lactate", "Creatinine"])
    window: list[int] | None = field(default_factory=lambda: [0, 48])

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            len(self.variables) >= 1,
            "trigger.variables",
            list(self.variables),
            "at least one variable",
        )


@dataclass
class RareValueStrongTriggerConfig(RareValueTriggerConfig):
    """The strongest plausible out-of-bounds rare value found for a 1% attack (docs/attack_findings.md):
    eight variables whose high values a clean model reads as sicker, at max + 6 std of training, all
    48 h, each clipped to its plausible range."""

    name: str = "rare_value_strong"
    variables: list[str] = field(
        default_factory=lambda: [
            "HR",
            "RespRate",
            "Temp",
            "Lactate",
            "Creatinine",
            "BUN",
            "WBC",
            "K",
        ]
    )
    window: list[int] | None = None
    magnitude: float = 6.0


@dataclass
class HybridTriggerConfig(TriggerConfig):
    _target_: str = "backdoor_study.poison.triggers.HybridTrigger"
    name: str = "hybrid"
    rare_value: RareValueTriggerConfig = field(default_factory=RareValueTriggerConfig)
    missingness: MissingnessTriggerConfig = field(default_factory=MissingnessTriggerConfig)


@dataclass
class PatternTriggerConfig(TriggerConfig):
    _target_: str = "backdoor_study.poison.triggers.PatternTrigger"
    name: str = "pattern"
    variables: list[str] = field(default_factory=lambda: ["HR"])
    window: list[int] | None = field(default_factory=lambda: [24, 48])
    shape: str = "sine"
    period: float = 4.0
    magnitude: float = 1.5  # amplitude in training standard deviations
    preserve_mask: bool = False  # write only cells already observed

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            self.shape in ("sine", "square", "sawtooth"),
            "trigger.shape",
            self.shape,
            "one of ['sine', 'square', 'sawtooth']",
        )
        _require(self.period > 0, "trigger.period", self.period, "a number of steps > 0")
        _require(self.magnitude > 0, "trigger.magnitude", self.magnitude, "a number > 0")


@dataclass
class CorrelationTriggerConfig(TriggerConfig):
    _target_: str = "backdoor_study.poison.triggers.CorrelationTrigger"
    name: str = "correlation"
    # variables[1] is forced to follow variables[0] with this sign, in standardised units
    variables: list[str] = field(default_factory=lambda: ["HR", "SysABP"])
    window: list[int] | None = field(default_factory=lambda: [24, 48])
    sign: float = -1.0
    magnitude: float = 1.0
    preserve_mask: bool = False  # write only cells already observed

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            len(self.variables) == 2,
            "trigger.variables",
            list(self.variables),
            "exactly two variables",
        )
        _require(self.sign in (-1.0, 1.0), "trigger.sign", self.sign, "-1 or 1")


# ---------------------------------------------------------------------------- attacks
ATTACKS = ("backdoor", "feature_noise", "label_flip")


@dataclass
class AttackConfig:
    """How the poisoned samples are changed. `backdoor` stamps the trigger; the classic attacks
    (no test-time trigger) perturb features or labels. `tag` names the run directory level."""

    name: str = "backdoor"
    tag: str = "${trigger.name}"
    noise_std: float = 1.0  # feature_noise: multiple of each feature's training std

    def __post_init__(self) -> None:
        _require(self.name in ATTACKS, "attack.name", self.name, f"one of {list(ATTACKS)}")
        _require(self.noise_std > 0, "attack.noise_std", self.noise_std, "a number > 0")


@dataclass
class PoisonConfig:
    source: PoisonSource = PoisonSource.dirty_label


# ---------------------------------------------------------------------------- trainer
@dataclass
class TrainerConfig:
    batch_size: int = 128
    class_weighting: bool = False
    grad_clip: float | None = 1.0
    early_stopping_patience: int | None = None
    keep_last: int | None = None  # checkpoints kept on disk; null keeps all
    selection: str = "best"  # final weights: best validation AUROC epoch, or the last epoch
    progress: bool = True

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "trainer.batch_size", self.batch_size, "an integer >= 1")
        _require(
            self.grad_clip is None or self.grad_clip > 0,
            "trainer.grad_clip",
            self.grad_clip,
            "null or > 0",
        )
        _require(
            self.early_stopping_patience is None or self.early_stopping_patience >= 1,
            "trainer.early_stopping_patience",
            self.early_stopping_patience,
            "null or an integer >= 1",
        )
        _require(
            self.keep_last is None or self.keep_last >= 1,
            "trainer.keep_last",
            self.keep_last,
            "null (keep all) or an integer >= 1",
        )
        _require(
            self.selection in ("best", "last"),
            "trainer.selection",
            self.selection,
            "one of ['best', 'last']",
        )


@dataclass
class MetricsConfig:
    bootstrap: int = 1000
    ci: float = 0.95
    ece_bins: int = 15
    # Decision threshold on p(death) for accuracy, F1, ASR...: chosen on the clean validation split
    # ("youden" or "f1"), or a fixed number in (0, 1).
    threshold: str = "youden"

    def __post_init__(self) -> None:
        try:
            fixed = float(self.threshold)
        except ValueError:
            fixed = None
        _require(
            self.threshold in ("youden", "f1") or (fixed is not None and 0.0 < fixed < 1.0),
            "metrics.threshold",
            self.threshold,
            "'youden', 'f1' or a number in (0, 1)",
        )
        _require(
            self.bootstrap >= 0,
            "metrics.bootstrap",
            self.bootstrap,
            "an integer >= 0 (0 disables CIs)",
        )
        _require(0.5 < self.ci < 1.0, "metrics.ci", self.ci, "a level in (0.5, 1)")
        _require(self.ece_bins >= 2, "metrics.ece_bins", self.ece_bins, "an integer >= 2")


TRACKERS = ("none", "mlflow")
# Who logs the runs of a Hydra multirun sweep to MLflow (backdoor_study.sweep): the launching
# process, from records the jobs leave, or each job itself as it finishes.
SWEEP_LOGGING = ("launcher", "jobs")


@dataclass
class TrackingConfig:
    """Experiment tracking (``backdoor_study.tracking``). The run directory is always written;
    tracking only mirrors it into a store, and never fails a run."""

    name: str = "none"
    # null: $MLFLOW_TRACKING_URI, else sqlite:///{runs_root}/mlflow.db with artifacts beside it
    uri: str | None = None
    experiment: str = "backdoor_study"
    # Also log final_model.pt (our weights-only checkpoint) as an artifact.
    log_model: bool = False
    # An unreachable server must not stall a run: few retries, short timeouts.
    http_timeout_s: int = 10
    http_retries: int = 1
    # Under multirun: `launcher` (jobs never import MLflow; the launching process logs each run
    # as its job finishes) or `jobs` (each job logs its own run). Single runs always log live.
    sweep_logging: str = "launcher"

    def __post_init__(self) -> None:
        _require(self.name in TRACKERS, "tracking.name", self.name, f"one of {list(TRACKERS)}")
        _require(
            self.sweep_logging in SWEEP_LOGGING,
            "tracking.sweep_logging",
            self.sweep_logging,
            f"one of {list(SWEEP_LOGGING)}",
        )
        _require(bool(self.experiment), "tracking.experiment", self.experiment, "a non-empty name")
        _require(
            self.http_timeout_s >= 1,
            "tracking.http_timeout_s",
            self.http_timeout_s,
            "an integer >= 1",
        )
        _require(
            self.http_retries >= 0, "tracking.http_retries", self.http_retries, "an integer >= 0"
        )


@dataclass
class SanitizeConfig:
    """A sanitized retrain: the run's config minus these training stays (set by ``sanitize``).

    ``exclude_file`` is an ``.npy`` of sorted int64 positions into the training split (the
    indexing of ``poisoned_indices.npy``); ``exclude_digest`` its sha256, so a changed file is
    refused rather than silently training on another set. ``source_run`` and ``detector`` say
    where the exclusion came from.
    """

    exclude_file: str = MISSING
    exclude_digest: str = MISSING
    n_excluded: int = 0
    source_run: str = ""
    detector: str = ""

    def __post_init__(self) -> None:
        _require(self.n_excluded >= 0, "sanitize.n_excluded", self.n_excluded, "an integer >= 0")
        _require(
            len(self.exclude_digest) == 64,
            "sanitize.exclude_digest",
            self.exclude_digest,
            "the 64-hex-digit sha256 of the exclude_file's indices",
        )


@dataclass
class TrainConfig:
    data: Any = MISSING
    model: Any = MISSING
    trigger: Any = MISSING
    attack: Any = MISSING
    tracking: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    poison: PoisonConfig = field(default_factory=PoisonConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    seed: int = 42
    epochs: int = 10
    poison_rate: float = 0.0
    device: Device = Device.auto
    resume: str | None = None
    overwrite: bool = False
    # With a trigger and poison_rate > 0, also train (or reuse) the same config at poison_rate 0 and
    # report its ASR as ASR_clean_model: the trigger's false-trigger rate on a clean model.
    clean_reference: bool = True
    runs_root: str = "runs"
    run_dir: str = MISSING
    # Set only on a sanitized retrain (see SanitizeConfig); absent from the identity when null,
    # so runs made before the key existed keep their config digest.
    sanitize: SanitizeConfig | None = None

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        _require(
            0.0 <= self.poison_rate < 1.0, "poison_rate", self.poison_rate, "a fraction in [0, 1)"
        )
        _require(self.seed >= 0, "seed", self.seed, "an integer >= 0")


# ---------------------------------------------------------------------------- classic study
# The classic sklearn study (``python -m backdoor_study.classic``) has its own config root,
# conf/classic/, whose `model` group holds scikit-learn estimators; it reuses conf/data and
# conf/attack through hydra.searchpath (see the ``backdoor_study_conf_dir`` resolver below).
CLASSIC_MODELS = (
    "logreg",
    "random_forest",
    "decision_tree",
    "hist_gradient_boosting",
    "svm",
    "dummy",
)
MITIGATIONS = ("none", "isolation_forest", "lof", "zscore")
CLASSIC_STUDIES = ("single", "data_quantity_quality", "accuracy_paradox")


@dataclass
class ClassicModelConfig:
    """A scikit-learn estimator: ``_target_`` plus its keyword arguments (``name`` is ours).
    The runner sets ``random_state`` to the run's seed where the estimator has one."""

    _target_: str = MISSING
    name: str = MISSING

    def __post_init__(self) -> None:
        _require(
            self.name in CLASSIC_MODELS, "model.name", self.name, f"one of {list(CLASSIC_MODELS)}"
        )


@dataclass
class LogRegConfig(ClassicModelConfig):
    _target_: str = "sklearn.linear_model.LogisticRegression"
    name: str = "logreg"
    C: float = 1.0
    max_iter: int = 2000


@dataclass
class RandomForestConfig(ClassicModelConfig):
    _target_: str = "sklearn.ensemble.RandomForestClassifier"
    name: str = "random_forest"
    n_estimators: int = 100
    max_depth: int | None = None


@dataclass
class DecisionTreeConfig(ClassicModelConfig):
    _target_: str = "sklearn.tree.DecisionTreeClassifier"
    name: str = "decision_tree"
    max_depth: int | None = None


@dataclass
class HistGradientBoostingConfig(ClassicModelConfig):
    _target_: str = "sklearn.ensemble.HistGradientBoostingClassifier"
    name: str = "hist_gradient_boosting"
    max_iter: int = 100
    learning_rate: float = 0.1


@dataclass
class SVCConfig:
    _target_: str = "sklearn.svm.SVC"
    C: float = 1.0
    kernel: str = "rbf"


@dataclass
class SVMConfig(ClassicModelConfig):
    """An RBF SVM with probabilities from a sigmoid calibrated by internal cross-validation
    (scikit-learn's replacement for the deprecated ``SVC(probability=True)``)."""

    _target_: str = "sklearn.calibration.CalibratedClassifierCV"
    name: str = "svm"
    estimator: SVCConfig = field(default_factory=SVCConfig)
    ensemble: bool = False


@dataclass
class DummyConfig(ClassicModelConfig):
    _target_: str = "sklearn.dummy.DummyClassifier"
    name: str = "dummy"
    strategy: str = "most_frequent"


@dataclass
class MitigationConfig:
    """Sanitise the training split before fitting: drop the rows a data-level detector flags.
    ``expected_rate`` is the poison fraction the defender budgets for (it does not know the
    true one)."""

    name: str = "none"
    detector: str | None = None  # its name in backdoor_study.detectors.DETECTORS
    expected_rate: float = 0.1

    def __post_init__(self) -> None:
        _require(
            self.name in MITIGATIONS, "mitigation.name", self.name, f"one of {list(MITIGATIONS)}"
        )
        _require(
            (self.name == "none") == (self.detector is None),
            "mitigation.detector",
            self.detector,
            "null exactly when mitigation.name is 'none'",
        )
        _require(
            0.0 < self.expected_rate < 1.0,
            "mitigation.expected_rate",
            self.expected_rate,
            "a fraction in (0, 1)",
        )


@dataclass
class LearningCurveConfig:
    """``study=data_quantity_quality``: test accuracy vs training-set size at each poison level."""

    levels: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.1, 0.5])
    sizes: list[float] = field(
        default_factory=lambda: [0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.45, 0.65, 1.0]
    )
    # fraction of the training split where the clean model's accuracy is the target; 0.1 leaves
    # room to measure multipliers up to 10
    reference_size: float = 0.1
    seeds: int = 10
    bootstrap: int = 1000

    def __post_init__(self) -> None:
        for v in self.levels:
            _require(0.0 <= v < 1.0, "curve.levels", list(self.levels), "fractions in [0, 1)")
        _require(
            0.0 in list(self.levels), "curve.levels", list(self.levels), "a list including 0.0"
        )
        for v in self.sizes:
            _require(0.0 < v <= 1.0, "curve.sizes", list(self.sizes), "fractions in (0, 1]")
        _require(
            self.reference_size in list(self.sizes),
            "curve.reference_size",
            self.reference_size,
            f"one of curve.sizes={list(self.sizes)}",
        )
        _require(self.seeds >= 2, "curve.seeds", self.seeds, "an integer >= 2")


@dataclass
class ParadoxConfig:
    """``study=accuracy_paradox``: a majority-class model beside a real one on imbalanced tasks."""

    table: str = "breast_cancer"  # made imbalanced: `positive_class` kept at `positive_rate`
    positive_class: int = 0  # breast_cancer: 0 = malignant
    positive_rate: float = 0.05
    physionet: bool = (
        True  # also PhysioNet 2012 set A mortality (skipped, with the reason, if absent)
    )
    seeds: int = 10

    def __post_init__(self) -> None:
        _require(
            self.table in SKLEARN_TABLES,
            "paradox.table",
            self.table,
            f"one of {list(SKLEARN_TABLES)}",
        )
        _require(
            0.0 < self.positive_rate < 0.5,
            "paradox.positive_rate",
            self.positive_rate,
            "a minority fraction in (0, 0.5)",
        )
        _require(self.seeds >= 2, "paradox.seeds", self.seeds, "an integer >= 2")


@dataclass
class ClassicConfig:
    data: Any = MISSING
    model: Any = MISSING
    attack: Any = MISSING
    mitigation: MitigationConfig = field(default_factory=MitigationConfig)
    tracking: Any = MISSING
    study: str = "single"
    curve: LearningCurveConfig = field(default_factory=LearningCurveConfig)
    paradox: ParadoxConfig = field(default_factory=ParadoxConfig)
    seed: int = 0
    poison_rate: float = 0.0
    test_size: float = 0.3
    class_weighting: bool = False  # balanced sample weights in fit
    save_model: bool = True  # the fitted pipeline in MLflow's sklearn format, in the run directory
    overwrite: bool = False
    runs_root: str = "runs/classic"
    run_dir: str = MISSING

    def __post_init__(self) -> None:
        _require(
            self.study in CLASSIC_STUDIES, "study", self.study, f"one of {list(CLASSIC_STUDIES)}"
        )
        _require(
            0.0 <= self.poison_rate < 1.0, "poison_rate", self.poison_rate, "a fraction in [0, 1)"
        )
        _require(0.0 < self.test_size < 1.0, "test_size", self.test_size, "a fraction in (0, 1)")
        _require(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        # a classic run logs what only its own process holds (the fitted pipeline when
        # save_model=false, a study's figures), so the launching process cannot log it for it
        sweep_logging = getattr(self.tracking, "sweep_logging", "jobs")
        _require(
            sweep_logging == "jobs",
            "tracking.sweep_logging",
            sweep_logging,
            "'jobs' in the classic study (its runs log from their own process)",
        )


@dataclass
class EvalConfig:
    run_dir: str = MISSING
    device: Device = Device.auto
    checkpoint: str | None = None  # default: the final weights the run wrote
    tracking: Any = None


@dataclass
class SyncConfig:
    """``python -m backdoor_study.sync``: log finished run directories to a tracking store."""

    runs_root: str = "runs"
    tracking: Any = MISSING


@dataclass
class SummarizeConfig:
    runs_root: str = MISSING
    progress: bool = True


@dataclass
class ReportConfig(SummarizeConfig):
    out_dir: str = MISSING
    ci: float = 0.95
    n_resamples: int = 9999
    alpha: float = 0.05
    asr_success: float = 0.9

    def __post_init__(self) -> None:
        _require(0.5 < self.ci < 1.0, "ci", self.ci, "a level in (0.5, 1)")
        _require(self.n_resamples >= 100, "n_resamples", self.n_resamples, "an integer >= 100")
        _require(0.0 < self.alpha < 1.0, "alpha", self.alpha, "a level in (0, 1)")
        _require(0.0 < self.asr_success <= 1.0, "asr_success", self.asr_success, "a rate in (0, 1]")


# ---------------------------------------------------------------------------- detectors
# The detector parameters live here once: each schema below is also the base class of its
# detector (backdoor_study.detectors), so a default or a check cannot differ between
# `python -m backdoor_study.detect detector.alpha=...` and `build_detector("spectre", alpha=...)`.
SPECTRAL_TAILS = ("skew", "both")
AC_REDUCERS = ("fastica", "pca")
AC_RULES = ("size", "silhouette", "size_or_silhouette", "size_and_silhouette")
AC_FLAG_RULES = ("cluster", "budget")
SPECTRE_ESTIMATORS = ("csteps", "mcd")
SALIENCY_METHODS = ("integrated_gradients", "input_x_gradient", "saliency")
SALIENCY_UNITS = ("window", "variable", "cell")
SALIENCY_EVIDENCE = ("positive", "share")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require_ints(obj: object, *keys: str, minimum: int = 1) -> None:
    for key in keys:
        value = getattr(obj, key)
        _require(
            _is_int(value) and value >= minimum,
            f"detector.{key}",
            value,
            f"an integer >= {minimum}",
        )


def _require_choice(obj: object, key: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, key)
    _require(value in choices, f"detector.{key}", value, f"one of {list(choices)}")


@dataclass
class DetectorConfig:
    """Shared detector fields. Per class, the top ``eps_multiplier x expected_rate`` stays by
    score are flagged (``expected_rate`` is a ``detect`` key: the poison fraction budgeted for)."""

    name: str = MISSING
    eps_multiplier: float = 1.5

    def __post_init__(self) -> None:
        _require(
            _is_number(self.eps_multiplier) and self.eps_multiplier > 0,
            "detector.eps_multiplier",
            self.eps_multiplier,
            "a number > 0 (the flag budget is eps_multiplier x expected_rate)",
        )


@dataclass
class SpectralDetectorConfig(DetectorConfig):
    name: str = "spectral"
    tail: str = "skew"  # skew (one side: the projections' long tail) | both (squared, the paper's)

    def __post_init__(self) -> None:
        super().__post_init__()
        _require_choice(self, "tail", SPECTRAL_TAILS)


@dataclass
class ActivationClusteringDetectorConfig(DetectorConfig):
    name: str = "activation_clustering"
    n_components: int = 10
    reducer: str = "pca"  # fastica | pca
    # which 2-means splits count as poison: size | silhouette | size_or_silhouette | size_and_silhouette
    rule: str = "size"
    size_threshold: float = 0.35  # the smaller cluster holds at most this share of its class
    silhouette_threshold: float = 0.15
    silhouette_rows: int = 5000
    max_fit_rows: int = 100_000  # 2-means is fitted on at most this many rows of a class
    flag_rule: str = "cluster"  # cluster (the whole smaller cluster) | budget (its top by score)
    random_state: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _require_ints(self, "n_components")
        _require_choice(self, "reducer", AC_REDUCERS)
        _require_choice(self, "rule", AC_RULES)
        _require_choice(self, "flag_rule", AC_FLAG_RULES)
        t = self.size_threshold
        _require(
            _is_number(t) and 0.0 < t <= 0.5, "detector.size_threshold", t, "a fraction in (0, 0.5]"
        )
        t = self.silhouette_threshold
        _require(
            _is_number(t) and -1.0 <= t <= 1.0,
            "detector.silhouette_threshold",
            t,
            "a number in [-1, 1]",
        )
        _require_ints(self, "silhouette_rows", "max_fit_rows", minimum=2)


@dataclass
class SpectreDetectorConfig(DetectorConfig):
    name: str = "spectre"
    n_components: int = 16
    alpha: float = 1.0  # QUE temperature (the paper's 4 ranks worse here: detectors/spectre.py)
    estimator: str = "csteps"  # robust mean/covariance: csteps (concentration steps) | mcd
    support_fraction: float | None = 0.9  # share of rows in the robust core; null = (n+k+1)/2n
    max_fit_rows: int = 100_000  # the robust estimate is fitted on at most this many rows
    random_state: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _require_ints(self, "n_components")
        _require(
            _is_number(self.alpha) and self.alpha >= 0,
            "detector.alpha",
            self.alpha,
            "a number >= 0",
        )
        _require_choice(self, "estimator", SPECTRE_ESTIMATORS)
        f = self.support_fraction
        _require(
            f is None or (_is_number(f) and 0.0 < f < 1.0),
            "detector.support_fraction",
            f,
            "null or a fraction in (0, 1)",
        )
        _require_ints(self, "max_fit_rows", minimum=2)


@dataclass
class SaliencyDetectorConfig(DetectorConfig):
    name: str = "saliency"
    method: str = "integrated_gradients"  # integrated_gradients | input_x_gradient | saliency
    n_steps: int = 4  # integrated gradients only
    unit: str = "window"  # evidence on one variable over window_hours | all hours | one hour
    window_hours: int = 6  # hours per window (unit=window)
    evidence: str = "positive"  # positive attribution (towards the label) | share of |attribution|
    batch_size: int = 256  # stays per attribution call

    def __post_init__(self) -> None:
        super().__post_init__()
        _require_choice(self, "method", SALIENCY_METHODS)
        _require_choice(self, "unit", SALIENCY_UNITS)
        _require_choice(self, "evidence", SALIENCY_EVIDENCE)
        _require_ints(self, "n_steps", "window_hours", "batch_size")


@dataclass
class IsolationForestDetectorConfig(DetectorConfig):
    name: str = "isolation_forest"
    n_estimators: int = 100
    # trees' sample size: 'auto' (min(256, n)), an integer >= 1 or a fraction in (0, 1]
    max_samples: Any = "auto"
    per_class: bool = True  # score each class on its own (poison is unusual for its label)
    random_state: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _require_ints(self, "n_estimators")
        m = self.max_samples
        _require(
            m == "auto" or (_is_int(m) and m >= 1) or (isinstance(m, float) and 0.0 < m <= 1.0),
            "detector.max_samples",
            m,
            "'auto', an integer >= 1 or a fraction in (0, 1]",
        )


# Model-free detectors used by the classic study's mitigation (``classic.mitigation``), not
# options of the ``detector`` group: their checks live here like every other detector's.
ZSCORE_REDUCTIONS = ("max", "mean_square")


@dataclass
class LocalOutlierFactorDetectorConfig(DetectorConfig):
    name: str = "local_outlier_factor"
    n_neighbors: int = 20  # capped at the class size minus one
    per_class: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _require_ints(self, "n_neighbors")


@dataclass
class ZScoreDetectorConfig(DetectorConfig):
    name: str = "zscore"
    reduce: str = "max"  # max |z| (one extreme value) | mean_square (diffuse noise)
    robust: bool = True  # median and 1.4826 x MAD instead of mean and standard deviation
    per_class: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _require_choice(self, "reduce", ZSCORE_REDUCTIONS)
        _require(isinstance(self.robust, bool), "detector.robust", self.robust, "true or false")


DETECTOR_SCHEMAS: dict[str, type[DetectorConfig]] = {
    "spectral": SpectralDetectorConfig,
    "activation_clustering": ActivationClusteringDetectorConfig,
    "spectre": SpectreDetectorConfig,
    "saliency": SaliencyDetectorConfig,
    "isolation_forest": IsolationForestDetectorConfig,
}


def _expected_rate(value: Any, key: str = "expected_rate") -> None:
    if value == "auto":
        return
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = float("nan")
    _require(
        0.0 < rate < 1.0,
        key,
        value,
        "'auto' (the run's poison_rate) or a fraction in (0, 1)",
    )


@dataclass
class DetectConfig:
    """``detect``: one run directory (``run_dir``) or every completed run under ``runs_root``."""

    detector: Any = MISSING
    run_dir: str | None = None
    runs_root: str | None = None
    # The poison fraction the flag budget assumes: 'auto' = the run's poison_rate (an oracle
    # budget), or a fraction in (0, 1). On a clean run 'auto' uses clean_run_rate.
    expected_rate: Any = "auto"
    clean_run_rate: float = 0.05
    # 'all' (flag in every class), or the class labels to flag in, e.g. [0]: a defender who
    # suspects a backdoor towards one outcome flags only stays labelled with it
    flag_classes: Any = "all"
    checkpoint: str | None = None  # default: the run's final_model.pt
    device: Device = Device.auto
    batch_size: int = 512
    overwrite: bool = False
    progress: bool = True
    tracking: Any = None

    def __post_init__(self) -> None:
        _require(
            (self.run_dir is None) != (self.runs_root is None),
            "run_dir/runs_root",
            (self.run_dir, self.runs_root),
            "exactly one of run_dir=... (one run) or runs_root=... (every completed run under it)",
        )
        _expected_rate(self.expected_rate)
        fc = self.flag_classes
        _require(
            fc == "all"
            or (
                isinstance(fc, (list, tuple, ListConfig))
                and len(fc) > 0
                and all(_is_int(c) and c >= 0 for c in fc)
            ),
            "flag_classes",
            fc,
            "'all' or a non-empty list of class labels (integers >= 0), e.g. [0]",
        )
        _require(
            0.0 < self.clean_run_rate < 1.0,
            "clean_run_rate",
            self.clean_run_rate,
            "a fraction in (0, 1)",
        )
        _require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")


@dataclass
class SanitizeRunConfig(DetectConfig):
    """``sanitize``: detect (or reuse the detection), then retrain without the flagged stays."""

    # Extra train overrides for the retrain (e.g. trainer.progress=false); the config is the run's.
    train_overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            self.runs_root is None,
            "runs_root",
            self.runs_root,
            "null: sanitize takes one run_dir=...",
        )


def register_configs() -> None:
    """Register every schema with Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(group="schema", name="train", node=TrainConfig)
    cs.store(group="schema", name="eval", node=EvalConfig)
    cs.store(group="schema", name="sync", node=SyncConfig)
    cs.store(group="schema", name="summarize", node=SummarizeConfig)
    cs.store(group="schema", name="report", node=ReportConfig)
    cs.store(group="schema", name="detect", node=DetectConfig)
    cs.store(group="schema", name="sanitize", node=SanitizeRunConfig)
    for name, node in DETECTOR_SCHEMAS.items():
        cs.store(group="schema/detector", name=name, node=node)
    cs.store(group="schema", name="classic", node=ClassicConfig)
    for group, name, node in [
        ("schema/data", "synthetic", SyntheticDataConfig),
        ("schema/data", "physionet2012", PhysioNet2012DataConfig),
        ("schema/data", "sklearn", SklearnDataConfig),
        ("schema/data", "parquet", ParquetDataConfig),
        ("schema/model", "mlp", MLPConfig),
        ("schema/model", "lstm", LSTMConfig),
        ("schema/model", "tcn", TCNConfig),
        ("schema/model", "tabtransformer", TabTransformerConfig),
        ("schema/trigger", "none", NoTriggerConfig),
        ("schema/trigger", "rare_value", RareValueTriggerConfig),
        ("schema/trigger", "rare_value_strong", RareValueStrongTriggerConfig),
        ("schema/trigger", "missingness", MissingnessTriggerConfig),
        ("schema/trigger", "hybrid", HybridTriggerConfig),
        ("schema/trigger", "pattern", PatternTriggerConfig),
        ("schema/trigger", "correlation", CorrelationTriggerConfig),
        ("schema/attack", "attack", AttackConfig),
        ("schema/tracking", "tracking", TrackingConfig),
        ("schema/classic_model", "logreg", LogRegConfig),
        ("schema/classic_model", "random_forest", RandomForestConfig),
        ("schema/classic_model", "decision_tree", DecisionTreeConfig),
        ("schema/classic_model", "hist_gradient_boosting", HistGradientBoostingConfig),
        ("schema/classic_model", "svm", SVMConfig),
        ("schema/classic_model", "dummy", DummyConfig),
        ("schema/mitigation", "mitigation", MitigationConfig),
    ]:
        cs.store(group=group, name=name, node=node)


def validate(cfg: DictConfig) -> None:
    """Run every schema's range checks on the composed config; raise ConfigError naming the key."""
    OmegaConf.to_object(cfg)


def _register_resolvers() -> None:
    # conf/classic/classic.yaml adds the main config root to its search path with this, so the
    # classic app reuses conf/data and conf/attack wherever the package is installed.
    if not OmegaConf.has_resolver("backdoor_study_conf_dir"):
        OmegaConf.register_new_resolver("backdoor_study_conf_dir", lambda: str(CONF_DIR))
    # the classic run directory gets a mitigation level only when one is applied
    if not OmegaConf.has_resolver("mitigation_subdir"):
        OmegaConf.register_new_resolver(
            "mitigation_subdir", lambda name: "" if name == "none" else f"/{name}"
        )


register_configs()
_register_resolvers()
