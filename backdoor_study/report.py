"""``python -m backdoor_study.report runs_root=...``: figures, statistics and one HTML page for a runs tree.

Summarizes ``runs_root`` first (:mod:`backdoor_study.summarize`), then writes under ``out_dir``
(default ``{runs_root}/report/``):

- ``figures/*.png`` and ``*.svg`` (matplotlib, Okabe-Ito palette with distinct markers and line
  styles, so they read in greyscale print too);
- ``stats.csv`` and ``stats.md`` (:mod:`backdoor_study.stats`: mean, SD, bootstrap CI per config
  over seeds; each poisoned config against its clean baseline, paired by seed, Holm-corrected);
- ``index.html``: one self-contained page (figures embedded as base64, no network access) with KPI
  tiles first, then the figures, the statistics and every run with a link to its directory.

Each run kind has a section builder (:data:`SECTIONS`); another kind of run (e.g. the classic
scikit-learn study) adds its own with :func:`register_section` and appears in the page with no
change here. Figures read only what runs wrote: ``summary``, ``predictions.parquet``,
``history.csv`` and the detectors' outputs.
"""

from __future__ import annotations

import base64
import html
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from backdoor_study import stats as study_stats  # noqa: E402
from backdoor_study import summarize  # noqa: E402
from backdoor_study.config import validate  # noqa: E402
from backdoor_study.metrics import predict  # noqa: E402
from backdoor_study.utils import atomic_write_bytes, atomic_write_text  # noqa: E402

log = logging.getLogger("backdoor_study.report")

# Okabe & Ito (2008): distinguishable with every common colour-vision deficiency.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")
STYLE = {
    "axes.prop_cycle": matplotlib.cycler(color=OKABE_ITO),
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 10,
    "axes.titlesize": 11,
    "legend.fontsize": 9,
    "figure.dpi": 110,
    "savefig.bbox": "tight",
    "svg.fonttype": "none",
}
MAX_PANELS = 8  # per-run figures show at most this many representative runs


# --------------------------------------------------------------------------------------- context
@dataclass
class Section:
    """One part of the page: a heading, a lead sentence, figures (names under figures/) and HTML."""

    title: str
    lead: str = ""
    figures: list[str] = field(default_factory=list)
    html: str = ""


@dataclass
class ReportContext:
    """What section builders get: the summary, the statistics and where figures go."""

    summary: pd.DataFrame
    stats: pd.DataFrame
    out_dir: Path
    asr_success: float = 0.9
    progress: bool = True
    figures: dict[str, Path] = field(default_factory=dict)  # name -> PNG path
    captions: dict[str, str] = field(default_factory=dict)  # name -> what it shows, where needed

    def runs(self, kind: str) -> pd.DataFrame:
        if "kind" not in self.summary.columns:
            return self.summary.iloc[0:0]
        return self.summary[self.summary["kind"] == kind]

    def save(self, name: str, fig: Figure) -> str:
        """Write ``fig`` as ``figures/{name}.png`` and ``.svg``; returns ``name``."""
        import io

        for ext in ("png", "svg"):
            buf = io.BytesIO()
            fig.savefig(buf, format=ext)
            atomic_write_bytes(self.out_dir / "figures" / f"{name}.{ext}", buf.getvalue())
        plt.close(fig)
        self.figures[name] = self.out_dir / "figures" / f"{name}.png"
        return name


SectionBuilder = Callable[[ReportContext], list[Section]]
SECTIONS: dict[str, SectionBuilder] = {}


def register_section(kind: str) -> Callable[[SectionBuilder], SectionBuilder]:
    """Register the section builder for runs of ``kind`` (the summary's ``kind`` column)."""

    def deco(builder: SectionBuilder) -> SectionBuilder:
        SECTIONS[kind] = builder
        return builder

    return deco


# --------------------------------------------------------------------------------------- helpers
def _stat(ctx: ReportContext, metric: str) -> pd.DataFrame:
    s = ctx.stats
    return s[s["metric"] == metric] if not s.empty else s


def _style(i: int) -> dict[str, Any]:
    return {
        "color": OKABE_ITO[i % len(OKABE_ITO)],
        "marker": MARKERS[i % len(MARKERS)],
        "linestyle": LINESTYLES[i % len(LINESTYLES)],
    }


def _panels(n: int, *, width: float = 4.2, height: float = 3.4, rows: int = 1):
    fig, axes = plt.subplots(
        rows, n, figsize=(width * n, height * rows), squeeze=False, layout="constrained"
    )
    return fig, axes


def _rate_lines(ax, rows: pd.DataFrame, label: str, i: int, *, dashed: bool = False) -> None:
    rows = rows.sort_values("poison_rate")
    x = rows["poison_rate"].to_numpy(dtype=float) * 100
    st = _style(i)
    if dashed:
        st = {**st, "linestyle": ":", "marker": "x"}
    ax.plot(x, rows["mean"], label=label, **st)
    lo, hi = rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float)
    if np.isfinite(lo).any():
        ax.fill_between(x, lo, hi, color=st["color"], alpha=0.18, linewidth=0)


def _representative_runs(train: pd.DataFrame) -> pd.DataFrame:
    """Per (model, trigger): the run at the highest poison rate, lowest seed (at most MAX_PANELS)."""
    if train.empty:
        return train
    poisoned = train[train["trigger"] != "none"] if "trigger" in train else train
    poisoned = poisoned if not poisoned.empty else train
    picked = (
        poisoned.sort_values(["poison_rate", "seed"], ascending=[False, True])
        .groupby(["model", "trigger"], sort=True)
        .head(1)
    )
    return picked.head(MAX_PANELS)


def _predictions(run_dir: str) -> pd.DataFrame | None:
    path = Path(run_dir) / "predictions.parquet"
    return pd.read_parquet(path) if path.exists() else None


def _triggered_proba(pred: pd.DataFrame) -> np.ndarray | None:
    """p(death) on the triggered test set: the trigger on every stay whose label is not the target."""
    if "prob_triggered_1" not in pred:
        return None
    return np.where(pred["triggered"], pred["prob_triggered_1"], pred["prob_1"])


def _title(row: pd.Series) -> str:
    return f"{row['model']} · {row['trigger']} · {row['poison_rate'] * 100:g}% · seed {row['seed']}"


# --------------------------------------------------------------------------------------- train figures
def fig_asr_vs_rate(ctx: ReportContext) -> Figure | None:
    asr = _stat(ctx, "ASR")
    if asr.empty:
        return None
    flip = _stat(ctx, "ASR_flip")
    triggers = sorted(t for t in asr["trigger"].unique() if t != "none")
    if not triggers:
        return None
    fig, axes = _panels(len(triggers))
    for ax, trig in zip(axes[0], triggers):
        for i, model in enumerate(sorted(asr["model"].unique())):
            sel = asr[(asr["trigger"] == trig) & (asr["model"] == model)]
            if not sel.empty:
                _rate_lines(ax, sel, model, i)
            sel_f = (
                flip[(flip["trigger"] == trig) & (flip["model"] == model)]
                if not flip.empty
                else flip
            )
            if not sel_f.empty:
                _rate_lines(ax, sel_f, f"{model} (ASR_flip)", i, dashed=True)
        ax.axhline(ctx.asr_success, color="grey", linewidth=0.8, linestyle="--")
        ax.set(
            title=f"trigger: {trig}",
            xlabel="poison rate (%)",
            ylabel="attack success rate",
            ylim=(-0.02, 1.02),
        )
        ax.legend(loc="lower right")
    fig.suptitle("Attack success rate vs poison rate (mean over seeds, 95% bootstrap CI)")
    return fig


def fig_stealth(ctx: ReportContext) -> Figure | None:
    """Clean AUROC vs poison rate (the stealth cost), and the clean model's ASR (false triggers)."""
    auc = _stat(ctx, "auroc_clean")
    asr = _stat(ctx, "ASR")
    if auc.empty:
        return None
    triggers = sorted(auc["trigger"].unique())
    fig, axes = _panels(len(triggers), rows=2)
    for col, trig in enumerate(triggers):
        ax = axes[0][col]
        for i, model in enumerate(sorted(auc["model"].unique())):
            sel = auc[(auc["trigger"] == trig) & (auc["model"] == model)]
            if not sel.empty:
                _rate_lines(ax, sel, model, i)
        ax.set(title=f"trigger: {trig}", xlabel="poison rate (%)", ylabel="clean test AUROC")
        ax.legend(loc="lower left")
        ax = axes[1][col]
        clean = asr[(asr["trigger"] == trig) & (asr["poison_rate"] == 0)] if not asr.empty else asr
        if clean.empty:
            ax.set_axis_off()
            continue
        clean = clean.sort_values("model")
        x = np.arange(len(clean))
        err = np.vstack([clean["mean"] - clean["ci_low"], clean["ci_high"] - clean["mean"]])
        ax.bar(
            x,
            clean["mean"],
            color=[OKABE_ITO[i % 8] for i in range(len(clean))],
            hatch="//",
            edgecolor="black",
        )
        if np.isfinite(err).all():
            ax.errorbar(x, clean["mean"], yerr=err, fmt="none", ecolor="black", capsize=4)
        ax.set_xticks(x, clean["model"])
        ax.set(
            ylim=(0, 1), ylabel="ASR of the clean model", title="false-trigger rate (poison rate 0)"
        )
    fig.suptitle("Stealth: clean AUROC vs poison rate, and the trigger on a clean model")
    return fig


def fig_reliability(ctx: ReportContext, picked: pd.DataFrame) -> Figure | None:
    panels = []
    for _, row in picked.iterrows():
        pred = _predictions(row["run_dir"])
        if pred is not None and "prob_1" in pred:
            panels.append((row, pred))
    if not panels:
        return None
    fig, axes = _panels(len(panels), width=3.6, height=3.6)
    for ax, (row, pred) in zip(axes[0], panels):
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
        y = pred["y_true"].to_numpy()
        curves = [("clean test", pred["prob_1"].to_numpy(), 0)]
        p_t = _triggered_proba(pred)
        if p_t is not None:
            curves.append(("triggered test", p_t, 3))
        for label, p, i in curves:
            frac, mean_p = calibration_curve(y, p, n_bins=10, strategy="quantile")
            ax.plot(mean_p, frac, label=label, **_style(i))
        ax.set(
            title=_title(row),
            xlabel="predicted p(death)",
            ylabel="observed death rate",
            xlim=(0, 1),
            ylim=(0, 1),
        )
        ax.legend(loc="upper left")
    fig.suptitle("Reliability: clean vs triggered test set (deciles of predicted risk)")
    return fig


def fig_confusion(ctx: ReportContext, picked: pd.DataFrame) -> Figure | None:
    panels = []
    for _, row in picked.iterrows():
        pred = _predictions(row["run_dir"])
        if pred is None:
            continue
        thr = row.get("decision_threshold", 0.5)
        thr = 0.5 if pd.isna(thr) else float(thr)
        y = pred["y_true"].to_numpy()
        panels.append((row, "clean", confusion_matrix(y, pred["pred"], labels=[0, 1])))
        p_t = _triggered_proba(pred)
        if p_t is not None:
            pred_t = predict(np.column_stack([1 - p_t, p_t]), thr)
            panels.append((row, "triggered", confusion_matrix(y, pred_t, labels=[0, 1])))
    if not panels:
        return None
    n_cols = min(len(panels), 4)
    n_rows = math.ceil(len(panels) / n_cols)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(3.3 * n_cols, 3.1 * n_rows), squeeze=False, layout="constrained"
    )
    for ax in axes.ravel()[len(panels) :]:
        ax.set_axis_off()
    for ax, (row, which, cm) in zip(axes.ravel(), panels):
        ConfusionMatrixDisplay(cm, display_labels=["survived", "died"]).plot(
            ax=ax, cmap="cividis", colorbar=False, values_format="d"
        )
        ax.set_title(f"{_title(row)}\n{which} test", fontsize=9)
        ax.grid(False)
    fig.suptitle("Confusion matrices at the decision threshold (rows: true, columns: predicted)")
    return fig


def fig_training_curves(ctx: ReportContext, train: pd.DataFrame) -> Figure | None:
    models = sorted(train["model"].unique())
    rates = sorted(train["poison_rate"].unique())
    fig, axes = _panels(len(models), rows=2)
    drawn = False
    for col, model in enumerate(models):
        runs = train[train["model"] == model]
        for _, row in tqdm(
            runs.iterrows(),
            total=len(runs),
            desc=f"history {model}",
            unit="run",
            disable=not ctx.progress,
            leave=False,
        ):
            path = Path(row["run_dir"]) / "history.csv"
            if not path.exists():
                continue
            h = pd.read_csv(path)
            i = rates.index(row["poison_rate"])
            st = _style(i)
            for r, metric in enumerate(("train_loss", "val_auroc")):
                if metric in h:
                    axes[r][col].plot(
                        h["epoch"],
                        h[metric],
                        color=st["color"],
                        linestyle=st["linestyle"],
                        alpha=0.7,
                        linewidth=1,
                    )
                    drawn = True
        axes[0][col].set(title=f"model: {model}", ylabel="training loss")
        axes[1][col].set(xlabel="epoch", ylabel="validation AUROC (clean)")
    if not drawn:
        plt.close(fig)
        return None
    handles = [
        matplotlib.lines.Line2D(
            [],
            [],
            color=_style(i)["color"],
            linestyle=_style(i)["linestyle"],
            label=f"{r * 100:g}%",
        )
        for i, r in enumerate(rates)
    ]
    fig.legend(handles=handles, title="poison rate", loc="outside right center")
    fig.suptitle("Training curves (one line per run)")
    return fig


@register_section("train")
def train_sections(ctx: ReportContext) -> list[Section]:
    train = ctx.runs("train")
    if train.empty:
        return []
    out = [
        Section(
            "Attack success",
            "How often a trigger flips a death into a predicted survival, by poison rate. "
            f"The dashed line is the success bar (ASR ≥ {ctx.asr_success:g}).",
        ),
        Section(
            "Stealth",
            "What poisoning costs on clean data (AUROC), and how often the same trigger fools a model "
            "trained on clean data (a trigger that is merely out of distribution).",
        ),
    ]
    for section, builder in ((out[0], fig_asr_vs_rate), (out[1], fig_stealth)):
        fig = builder(ctx)
        if fig is not None:
            section.figures.append(ctx.save(builder.__name__.removeprefix("fig_"), fig))
    picked = _representative_runs(train)
    per_run = Section(
        "Calibration and errors",
        "Representative runs (per model and trigger: the highest poison rate, lowest seed).",
    )
    for name, builder in (("reliability", fig_reliability), ("confusion", fig_confusion)):
        fig = builder(ctx, picked)
        if fig is not None:
            per_run.figures.append(ctx.save(name, fig))
    curves = Section(
        "Training", "Loss and clean validation AUROC per epoch, coloured by poison rate."
    )
    fig = fig_training_curves(ctx, train)
    if fig is not None:
        curves.figures.append(ctx.save("training_curves", fig))
    return [s for s in (*out, per_run, curves) if s.figures]


# --------------------------------------------------------------------------------------- detect / sanitize
DETECTION_AUROC = "detection_auroc"
# the detection table's columns (summary.csv has them all)
DETECTION_TABLE = (
    DETECTION_AUROC,
    "detection_auprc",
    "detection_tpr_at_fpr_0.05",
    "detection_precision",
    "detection_recall",
    "detection_auroc_target",
    "detection_wall_s",
)


def fig_detection_heatmap(ctx: ReportContext, detect: pd.DataFrame) -> Figure | None:
    if DETECTION_AUROC not in detect or detect[DETECTION_AUROC].isna().all():
        return None
    rates = sorted(r for r in detect["poison_rate"].unique() if r > 0) or sorted(
        detect["poison_rate"].unique()
    )
    fig, axes = _panels(len(rates), width=4.0, height=3.2)
    for ax, rate in zip(axes[0], rates):
        grid = detect[detect["poison_rate"] == rate].pivot_table(
            index="detector", columns="trigger", values=DETECTION_AUROC, aggfunc="mean"
        )
        im = ax.imshow(
            grid.to_numpy(dtype=float), vmin=0.0, vmax=1.0, cmap="cividis", aspect="auto"
        )
        ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=30, ha="right")
        ax.set_yticks(range(grid.shape[0]), grid.index)
        ax.grid(False)
        for (r, c), v in np.ndenumerate(grid.to_numpy(dtype=float)):
            if np.isfinite(v):
                ax.text(
                    c,
                    r,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    color="white" if v < 0.6 else "black",
                )
        ax.set_title(f"poison rate {rate * 100:g}%")
    fig.colorbar(im, ax=axes[0].tolist(), label="detection AUROC (poisoned vs clean samples)")
    fig.suptitle(
        "Detectors: AUROC of flagging poisoned training samples (mean over models and seeds)"
    )
    return fig


def saliency_images(ctx: ReportContext, detect: pd.DataFrame) -> list[str]:
    """The saliency detector's attribution map(s): a PNG it wrote is embedded as is; an attribution
    array (variables x hours, ``*attribution*.npy``) is drawn as a heatmap."""
    if "detector" not in detect:
        return []
    names = []
    sal = detect[detect["detector"] == "saliency"]
    # one map per trigger (the representative run of the first model): where each trigger sits
    for _, row in _representative_runs(sal).groupby("trigger", sort=True).head(1).iterrows():
        d = Path(row["run_dir"])
        pngs = sorted(d.glob("attribution*.png"))
        if pngs:
            name = f"saliency_{len(names)}"
            atomic_write_bytes(ctx.out_dir / "figures" / f"{name}.png", pngs[0].read_bytes())
            ctx.figures[name] = ctx.out_dir / "figures" / f"{name}.png"
            ctx.captions[name] = f"Saliency attribution map from the detector: {_title(row)}."
            names.append(name)
            continue
        arrays = sorted(d.glob("*attribution*.npy"))
        if not arrays:
            continue
        attr = np.load(arrays[0])
        if attr.ndim != 2:
            continue
        fig, ax = plt.subplots(figsize=(7, 0.25 * attr.shape[0] + 1.5), layout="constrained")
        im = ax.imshow(attr, aspect="auto", cmap="cividis")
        ax.set(xlabel="hour", ylabel="variable", title=f"saliency attribution: {_title(row)}")
        ax.grid(False)
        fig.colorbar(im, ax=ax, label="mean |attribution|")
        names.append(ctx.save(f"saliency_{len(names)}", fig))
    return names


@register_section("detect")
def detect_sections(ctx: ReportContext) -> list[Section]:
    detect = ctx.runs("detect")
    if detect.empty:
        return []
    sec = Section(
        "Detection",
        "How well each detector separates the poisoned training samples from the clean ones.",
    )
    fig = fig_detection_heatmap(ctx, detect)
    if fig is not None:
        sec.figures.append(ctx.save("detection_heatmap", fig))
    sec.figures += saliency_images(ctx, detect)
    shown = [c for c in DETECTION_TABLE if c in detect.columns]
    table = detect.groupby(["detector", "trigger", "poison_rate"])[shown].mean(numeric_only=True)
    sec.html = table.round(3).to_html(classes="data", border=0)
    return [sec]


def asr_before_after(ctx: ReportContext) -> pd.DataFrame:
    """Per sanitize run: the training run's ASR (before) and the retrained model's (after)."""
    san = ctx.runs("sanitize")
    train = ctx.summary[ctx.summary["kind"] == "train"]
    after_col = "ASR" if "ASR" in san else "ASR_after" if "ASR_after" in san else None
    if san.empty or after_col is None or "ASR" not in train:
        return pd.DataFrame()
    before = train.set_index("run_dir")["ASR"]
    out = san[["model", "trigger", "poison_rate", "seed", "detector", "train_run_dir"]].copy()
    out["ASR_before"] = out["train_run_dir"].map(before)
    out["ASR_after"] = san[after_col].to_numpy()
    return out


def fig_sanitize(ctx: ReportContext, table: pd.DataFrame) -> Figure | None:
    if table.empty:
        return None
    g = (
        table.groupby(["model", "trigger", "poison_rate", "detector"], sort=True)[
            ["ASR_before", "ASR_after"]
        ]
        .mean()
        .reset_index()
    )
    labels = [
        f"{r.model}\n{r.trigger}\n{r.poison_rate * 100:g}% · {r.detector}" for r in g.itertuples()
    ]
    x = np.arange(len(g))
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(g)), 3.8), layout="constrained")
    ax.bar(
        x - 0.2,
        g["ASR_before"],
        0.4,
        label="before (poisoned model)",
        color=OKABE_ITO[3],
        hatch="//",
        edgecolor="black",
    )
    ax.bar(
        x + 0.2,
        g["ASR_after"],
        0.4,
        label="after sanitize + retrain",
        color=OKABE_ITO[0],
        edgecolor="black",
    )
    ax.set_xticks(x, labels, fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="attack success rate")
    ax.legend()
    ax.set_title("ASR before and after removing the flagged samples (mean over seeds)")
    return fig


@register_section("sanitize")
def sanitize_sections(ctx: ReportContext) -> list[Section]:
    table = asr_before_after(ctx)
    if table.empty:
        return []
    sec = Section(
        "Sanitization",
        "Does removing what the detector flagged and retraining remove the backdoor?",
    )
    fig = fig_sanitize(ctx, table)
    if fig is not None:
        sec.figures.append(ctx.save("sanitize_asr", fig))
    return [sec]


# --------------------------------------------------------------------------------------- KPIs
def kpis(ctx: ReportContext) -> dict[str, Any]:
    """The page's headline numbers: best clean AUROC, lowest poison rate with ASR >= the success
    bar per (trigger, model), best detector."""
    out: dict[str, Any] = {}
    auc = _stat(ctx, "auroc_clean")
    clean = auc[auc["poison_rate"] == 0] if not auc.empty else auc
    if not clean.empty:
        best = clean.loc[clean["mean"].idxmax()]
        out["best_clean_auroc"] = {"value": best["mean"], "model": best["model"], "n": best["n"]}
    asr = _stat(ctx, "ASR")
    if not asr.empty:
        lowest = []
        for (trig, model), g in asr[asr["poison_rate"] > 0].groupby(["trigger", "model"]):
            hit = g[g["mean"] >= ctx.asr_success].sort_values("poison_rate")
            lowest.append(
                {
                    "trigger": trig,
                    "model": model,
                    "rate": float(hit["poison_rate"].iloc[0]) if not hit.empty else None,
                    "asr": float(hit["mean"].iloc[0]) if not hit.empty else float(g["mean"].max()),
                }
            )
        out["lowest_rate"] = lowest
    detect = ctx.runs("detect")
    if DETECTION_AUROC in detect and detect[DETECTION_AUROC].notna().any():
        means = detect.groupby("detector")[DETECTION_AUROC].mean()
        out["best_detector"] = {"detector": means.idxmax(), "value": float(means.max())}
    return out


def _kpi_html(k: dict[str, Any], ctx: ReportContext) -> str:
    tiles = []
    if "best_clean_auroc" in k:
        b = k["best_clean_auroc"]
        tiles.append(
            _tile(
                "Best clean AUROC",
                f"{b['value']:.3f}",
                f"{b['model']}, no poisoning, {b['n']} seeds",
            )
        )
    if "lowest_rate" in k:
        items = "".join(
            f"<tr><td>{html.escape(str(r['trigger']))}</td><td>{html.escape(str(r['model']))}</td>"
            + (
                f"<td class='hit'>{r['rate'] * 100:g}%</td><td>{r['asr']:.2f}</td>"
                if r["rate"] is not None
                else f"<td class='miss'>not reached</td><td>max {r['asr']:.2f}</td>"
            )
            + "</tr>"
            for r in k["lowest_rate"]
        )
        tiles.append(
            "<div class='tile wide'><div class='label'>Lowest poison rate reaching "
            f"ASR ≥ {ctx.asr_success:g}</div><table class='kpi'><tr><th>trigger</th><th>model</th>"
            f"<th>rate</th><th>ASR</th></tr>{items}</table></div>"
        )
    if "best_detector" in k:
        b = k["best_detector"]
        tiles.append(
            _tile(
                "Best detector",
                html.escape(str(b["detector"])),
                f"mean detection AUROC {b['value']:.3f}",
            )
        )
    return "<div class='tiles'>" + "".join(tiles) + "</div>"


def _tile(label: str, value: str, note: str) -> str:
    return (
        f"<div class='tile'><div class='label'>{html.escape(label)}</div>"
        f"<div class='value'>{value}</div><div class='note'>{html.escape(note)}</div></div>"
    )


def headline(k: dict[str, Any], ctx: ReportContext) -> str:
    """One sentence with the study's answer."""
    parts = []
    hits = [r for r in k.get("lowest_rate", []) if r["rate"] is not None]
    if hits:
        r = min(hits, key=lambda r: r["rate"])
        parts.append(
            f"The backdoor works: {r['rate'] * 100:g}% poisoned training stays give the "
            f"{r['trigger']} trigger an ASR of {r['asr']:.2f} on {r['model']}"
        )
    elif k.get("lowest_rate"):
        parts.append(f"No trigger reached ASR ≥ {ctx.asr_success:g} at the poison rates studied")
    if "best_detector" in k:
        parts.append(
            f"{k['best_detector']['detector']} finds the poisoned samples best (AUROC {k['best_detector']['value']:.2f})"
        )
    return "; ".join(parts) + "." if parts else ""


# --------------------------------------------------------------------------------------- HTML
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1a1a1a;background:#fafafa}
header{background:#0b3d5c;color:#fff;padding:14px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85}main{padding:16px 28px;max-width:1400px;box-sizing:border-box}
.answer{font-size:17px;background:#fff;border-left:5px solid #E69F00;padding:10px 14px;margin:8px 0 14px}
.tiles{display:flex;flex-wrap:wrap;gap:12px}.tile{background:#fff;border:1px solid #ddd;border-radius:6px;
padding:10px 14px;min-width:190px}.tile.wide{min-width:340px}.label{font-size:12px;text-transform:uppercase;
color:#555;letter-spacing:.04em}.value{font-size:30px;font-weight:600;color:#0072B2}.note{font-size:12px;color:#555}
table{border-collapse:collapse;font-size:12px;background:#fff}td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f0f0f0}table.kpi{margin-top:4px}td.hit{color:#009E73;font-weight:600}td.miss{color:#D55E00}
section{margin-top:26px}section h2{border-bottom:2px solid #0072B2;padding-bottom:3px}
figure{margin:10px 0}figure img{max-width:100%;border:1px solid #eee;background:#fff}
nav a{margin-right:14px;color:#0072B2}.scroll{max-height:420px;overflow:auto}
"""


def _img(name: str, path: Path, caption: str = "") -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    vector = path.with_suffix(".svg")
    link = vector if vector.exists() else path
    return (
        f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{html.escape(caption)} <a href='figures/{html.escape(link.name)}'>"
        f"{html.escape(link.name)}</a></figcaption></figure>"
    )


def runs_table(summary: pd.DataFrame, out_dir: Path) -> str:
    cols = [
        c
        for c in (
            "kind",
            "model",
            "trigger",
            "poison_rate",
            "seed",
            "detector",
            "auroc_clean",
            "ASR",
            "detection_auroc",
        )
        if c in summary
    ]
    rows = []
    for _, r in summary.iterrows():
        href = os.path.relpath(r["run_dir"], out_dir)
        cells = "".join(f"<td>{html.escape(_cell(r[c]))}</td>" for c in cols)
        mlflow_id = r.get("mlflow_run_id")
        mlflow_id = "" if mlflow_id is None or pd.isna(mlflow_id) else str(mlflow_id)
        rows.append(
            f"<tr>{cells}<td style='text-align:left'><a href='{html.escape(href)}/'>{html.escape(href)}</a></td>"
            f"<td>{html.escape(mlflow_id)}</td></tr>"
        )
    head = "".join(f"<th>{c}</th>" for c in (*cols, "run directory", "MLflow run id"))
    return f"<div class='scroll'><table><tr>{head}</tr>{''.join(rows)}</table></div>"


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def render_html(ctx: ReportContext, sections: list[Section], title: str) -> str:
    k = kpis(ctx)
    n_kind = ctx.summary["kind"].value_counts().to_dict() if "kind" in ctx.summary else {}
    sub = ", ".join(f"{n} {kind}" for kind, n in n_kind.items())
    nav = "".join(f"<a href='#s{i}'>{html.escape(s.title)}</a>" for i, s in enumerate(sections))
    body = [
        f"<header><h1>{html.escape(title)}</h1><p>{len(ctx.summary)} runs ({html.escape(sub)})</p></header><main>",
        f"<div class='answer'>{html.escape(headline(k, ctx))}</div>" if headline(k, ctx) else "",
        _kpi_html(k, ctx),
        f"<nav style='margin-top:14px'>{nav}<a href='#stats'>Statistics</a><a href='#runs'>Runs</a></nav>",
    ]
    for i, s in enumerate(sections):
        figs = "".join(_img(n, ctx.figures[n], ctx.captions.get(n, "")) for n in s.figures)
        body.append(
            f"<section id='s{i}'><h2>{html.escape(s.title)}</h2><p>{html.escape(s.lead)}</p>{figs}<div class='scroll'>{s.html}</div></section>"
        )
    stats_html = _stats_html(ctx.stats)
    body.append(
        "<section id='stats'><h2>Statistics over seeds</h2><p>Mean and 95% bootstrap CI per config; "
        "each poisoned config against the same config at poison rate 0, paired by seed (t-test and "
        "Wilcoxon, Holm-corrected per metric). Also in <a href='stats.csv'>stats.csv</a> and "
        f"<a href='stats.md'>stats.md</a>.</p><div class='scroll'>{stats_html}</div></section>"
    )
    body.append(
        f"<section id='runs'><h2>Runs</h2>{runs_table(ctx.summary, ctx.out_dir)}</section></main>"
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )


def _stats_html(stats: pd.DataFrame) -> str:
    if stats.empty:
        return "<p>No statistics: no completed training runs.</p>"
    shown = stats[stats["metric"].isin(["ASR", "ASR_flip", "auroc_clean"])]
    cols = [c for c in study_stats.config_columns(shown) if shown[c].nunique() > 1]
    cols += [
        c
        for c in (
            "metric",
            "n",
            "mean",
            "ci_low",
            "ci_high",
            "mean_diff",
            "d_z",
            "p_ttest_holm",
            "p_wilcoxon_holm",
        )
        if c in shown
    ]
    return shown[cols].to_html(index=False, border=0, float_format=lambda v: f"{v:.3f}", na_rep="")


# --------------------------------------------------------------------------------------- entry
def write_stats(
    summary: pd.DataFrame,
    out_dir: str | Path,
    *,
    ci: float = 0.95,
    n_resamples: int = 9999,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """:func:`backdoor_study.stats.study_stats` of ``summary`` -> ``stats.csv`` and ``stats.md``."""
    out = Path(out_dir)
    st = (
        study_stats.study_stats(summary, ci=ci, n_resamples=n_resamples, alpha=alpha)
        if "poison_rate" in summary
        else pd.DataFrame()
    )
    atomic_write_text(out / "stats.csv", st.to_csv(index=False))
    atomic_write_text(out / "stats.md", study_stats.markdown_table(st))
    return st


def build_sections(ctx: ReportContext) -> list[Section]:
    """Every registered section builder whose run kind is in the summary (figures written)."""
    sections: list[Section] = []
    kinds = list(ctx.summary["kind"].unique()) if "kind" in ctx.summary else []
    with plt.style.context(STYLE):
        for kind in tqdm(list(SECTIONS), desc="report", unit="section", disable=not ctx.progress):
            if kind in kinds:
                sections += SECTIONS[kind](ctx)
    for kind in kinds:
        if kind not in SECTIONS and kind != "clean_reference":
            log.warning(
                "no report section for runs of kind %r: listed in the runs table only", kind
            )
    return sections


def build_report(
    summary: pd.DataFrame,
    out_dir: str | Path,
    *,
    ci: float = 0.95,
    n_resamples: int = 9999,
    alpha: float = 0.05,
    asr_success: float = 0.9,
    progress: bool = True,
    title: str = "Backdoor study report",
) -> Path:
    """Figures, statistics and ``index.html`` for ``summary`` under ``out_dir``; returns the page."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    st = write_stats(summary, out, ci=ci, n_resamples=n_resamples, alpha=alpha)
    ctx = ReportContext(
        summary=summary, stats=st, out_dir=out, asr_success=asr_success, progress=progress
    )
    sections = build_sections(ctx)
    return atomic_write_text(out / "index.html", render_html(ctx, sections, title))


def run(cfg: DictConfig) -> Path:
    """Summarize ``cfg.runs_root``, then build the report in ``cfg.out_dir``; returns index.html."""
    validate(cfg)
    table = summarize.run(cfg)
    return build_report(
        table,
        cfg.out_dir,
        ci=float(cfg.ci),
        n_resamples=int(cfg.n_resamples),
        alpha=float(cfg.alpha),
        asr_success=float(cfg.asr_success),
        progress=bool(cfg.progress),
        title=f"Backdoor study: {cfg.runs_root}",
    )


def main(cfg: DictConfig) -> None:
    page = run(cfg)
    print(f"report: {page.resolve()}")


def _main() -> None:
    from backdoor_study.cli import hydra_entry

    hydra_entry("report", main)


# Sections of other run kinds register themselves on import (here, after the registry exists).
from backdoor_study.classic import report as _classic_report  # noqa: E402, F401

if __name__ == "__main__":
    # Run the imported module's copy: its SECTIONS is the registry other modules extended
    # (under `python -m`, this file is also __main__, a second module object).
    from backdoor_study.report import _main as _registered_main

    _registered_main()
