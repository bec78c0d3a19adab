"""The classic study's part of the report (``python -m backdoor_study.report runs_root=runs/classic``).

Section builders registered with ``backdoor_study.report.register_section`` for the summary's
classic run kinds (``backdoor_study.summarize.CLASSIC_KINDS``); each returns figures, a table and
a short text written from the numbers, never by hand:

- ``classic``: validation outcomes (mean and 95% CI of test accuracy per data set, model, attack
  and poison level over seeds; each level against level 0, paired by seed, Holm-corrected; where
  the spread over seeds grows) and mitigation (accuracy recovered, detection precision / recall
  per method and level);
- ``classic_data_quantity``: learning curves and data multipliers;
- ``classic_paradox``: accuracy beside balanced accuracy, AUPRC and the confusion matrix.

Statistics come from ``backdoor_study.stats`` (seed CIs, paired tests, Holm); this module only
arranges them. It reads the summary and the files the runs wrote, and writes figures only through
the report context.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from backdoor_study import stats as study_stats
from backdoor_study.classic.curves import (
    CURVES_FILE,
    MULTIPLIERS_FILE,
    curve_summary,
)
from backdoor_study.report import (
    ReportContext,
    Section,
    _panels,
    _rate_lines,
    _style,
    register_section,
)

CONFIG = ["data", "model", "attack"]
SPREAD_GROWTH = 2.0  # "variance grows": the SD over seeds at least doubles from level 0


def _table(frame: pd.DataFrame, digits: int = 3) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.{digits}f}", border=0)


def validation_stats(
    runs: pd.DataFrame, *, n_resamples: int = 9999, alpha: float = 0.05
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(described, tests) of ``acc_test`` for the unmitigated runs: mean, SD and bootstrap CI per
    (data, model, attack, level), and every level > 0 against level 0 paired by seed (Holm)."""
    plain = runs[runs["mitigation"] == "none"]
    described = study_stats.describe_over_seeds(
        plain, ["acc_test"], by=[*CONFIG, "poison_rate"], n_resamples=n_resamples
    )
    tests = study_stats.compare_to_clean(plain, ["acc_test"], by=CONFIG, alpha=alpha)
    return described, tests


def _seed_range(tests: pd.DataFrame) -> str:
    lo, hi = int(tests["n_pairs"].min()), int(tests["n_pairs"].max())
    return str(lo) if lo == hi else f"{lo}-{hi}"


def validation_text(described: pd.DataFrame, tests: pd.DataFrame) -> str:
    """What the numbers say: significant drops, significant gains, where the spread grows."""
    if tests.empty:
        return "No poisoned configuration with a level-0 baseline to compare against."
    sig = tests[tests["significant"]]
    drops = sig[sig["mean_diff"] < 0]
    gains = sig[sig["mean_diff"] > 0]
    lines = [
        f"{len(sig)} of {len(tests)} poisoned configurations differ significantly from level 0 "
        f"(paired t-test over {_seed_range(tests)} seeds, "
        "Holm-corrected): "
        f"{len(drops)} lower, {len(gains)} higher test accuracy."
    ]
    for attack, g in tests.groupby("attack"):
        first = (
            g[g["significant"] & (g["mean_diff"] < 0)]
            .groupby(["data", "model"])["poison_rate"]
            .min()
        )
        never = len(g.groupby(["data", "model"])) - len(first)
        if not len(first):
            lines.append(f"{attack}: no level gives a significant drop for any data x model pair.")
        else:
            lowest = first.value_counts().sort_index()
            where = ", ".join(f"{r:.0%} in {n}" for r, n in lowest.items())
            lines.append(
                f"{attack}: the lowest level with a significant drop is {where} "
                f"(data x model pairs); {never} pair(s) show none."
            )
        worst = g.loc[g["mean_diff"].idxmin()]
        lines.append(
            f"{attack}: largest mean drop {-worst['mean_diff']:.3f} "
            f"({worst['data']}, {worst['model']}, {worst['poison_rate']:.0%})."
        )
    if len(gains):
        g = gains.iloc[0]
        lines.append(
            f"A single-seed 'improvement' is not what this shows: the significant gains "
            f"(e.g. {g['data']}, {g['model']}, {g['attack']} at {g['poison_rate']:.0%}, "
            f"+{g['mean_diff']:.3f}) are listed below."
        )
    else:
        lines.append("No poisoning level improves accuracy significantly anywhere.")
    spread = described.pivot_table(index=CONFIG, columns="poison_rate", values="std")
    if 0.0 in spread.columns:
        base = spread[0.0].replace(0.0, np.nan)
        grown = spread.drop(columns=0.0).div(base, axis=0) >= SPREAD_GROWTH
        n_grown = int(grown.to_numpy().sum())
        cells = [
            f"{'/'.join(map(str, idx))} at {rate:.0%}"
            for idx, row in grown.iterrows()
            for rate, flag in row.items()
            if flag
        ]
        lines.append(
            f"The SD over seeds at least doubles from level 0 in {n_grown} of "
            f"{grown.size} (configuration, level) cells"
            + (f", e.g. {', '.join(cells[:4])}." if cells else ".")
        )
    return " ".join(lines)


def fig_validation(ctx: ReportContext, described: pd.DataFrame, runs: pd.DataFrame):
    datasets = sorted(described["data"].unique())
    fig, axes = _panels(len(datasets), rows=2)
    for j, data in enumerate(datasets):
        ax, ax_sd = axes[0][j], axes[1][j]
        d = described[described["data"] == data]
        for i, ((model, attack), rows) in enumerate(d.groupby(["model", "attack"])):
            _rate_lines(ax, rows, f"{model} · {attack}", i)
            rows = rows.sort_values("poison_rate")
            ax_sd.plot(rows["poison_rate"] * 100, rows["std"], **_style(i))
        ax.set_title(data)
        ax.set_xlabel("poisoned training rows (%)")
        ax.set_ylabel("test accuracy (mean, 95% CI)")
        ax_sd.set_xlabel("poisoned training rows (%)")
        ax_sd.set_ylabel("SD over seeds")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    return ctx.save("classic_validation", fig)


def mitigation_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (data, attack, level, method): mean test accuracy, the accuracy recovered against no
    mitigation (same seeds), the share of the poisoning's loss recovered, detection precision and
    recall, rows removed."""
    none = runs[runs["mitigation"] == "none"]
    keys = [*CONFIG, "poison_rate", "seed"]
    base = none.set_index(keys)["acc_test"]
    clean = none[none["poison_rate"] == 0].set_index([*CONFIG, "seed"])["acc_test"]
    rows = []
    for (data, model, attack, rate, method), g in runs[runs["mitigation"] != "none"].groupby(
        [*CONFIG, "poison_rate", "mitigation"]
    ):
        idx = pd.MultiIndex.from_frame(g[keys])
        without = base.reindex(idx).to_numpy()
        acc = g["acc_test"].to_numpy()
        clean_acc = clean.reindex(pd.MultiIndex.from_frame(g[[*CONFIG, "seed"]])).to_numpy()
        lost = np.nanmean(clean_acc - without)
        recovered = np.nanmean(acc - without)
        rows.append(
            {
                "data": data,
                "model": model,
                "attack": attack,
                "poison_rate": rate,
                "mitigation": method,
                "n": len(g),
                "acc_test": float(np.mean(acc)),
                "acc_without": float(np.nanmean(without)),
                "acc_recovered": float(recovered),
                "share_of_loss_recovered": float(recovered / lost) if lost > 0.005 else np.nan,
                "detection_precision": float(g["detection_precision"].mean()),
                "detection_recall": float(g["detection_recall"].mean()),
                "n_removed": float(g["n_removed"].mean()),
            }
        )
    return pd.DataFrame(rows)


def mitigation_text(table: pd.DataFrame) -> str:
    if table.empty:
        return "No mitigated runs."
    poisoned = table[table["poison_rate"] > 0]
    lines = []
    for attack, g in poisoned.groupby("attack"):
        per = g.groupby("mitigation")[
            ["detection_precision", "detection_recall", "acc_recovered"]
        ].mean()
        best = per["acc_recovered"].idxmax()
        lines.append(
            f"{attack}: mean detection precision / recall over data sets and levels "
            + "; ".join(
                f"{m} {r.detection_precision:.2f}/{r.detection_recall:.2f}"
                for m, r in per.iterrows()
            )
            + f". Most accuracy recovered by {best} ({per.loc[best, 'acc_recovered']:+.3f} on "
            "average)."
        )
    clean = table[table["poison_rate"] == 0]
    if len(clean):
        lines.append(
            f"On clean data the mitigations cost {-clean['acc_recovered'].mean():.3f} accuracy "
            "on average (they remove clean rows)."
        )
    return " ".join(lines)


def fig_mitigation(ctx: ReportContext, table: pd.DataFrame):
    attacks = sorted(table["attack"].unique())
    fig, axes = _panels(len(attacks), rows=3, height=2.8)
    for j, attack in enumerate(attacks):
        t = table[(table["attack"] == attack) & (table["poison_rate"] > 0)]
        per = t.groupby(["mitigation", "poison_rate"])[
            ["detection_precision", "detection_recall", "acc_recovered"]
        ].mean()
        for i, method in enumerate(sorted(t["mitigation"].unique())):
            rows = per.loc[method]
            x = rows.index.to_numpy(dtype=float) * 100
            for r, col in enumerate(["detection_precision", "detection_recall", "acc_recovered"]):
                axes[r][j].plot(x, rows[col], label=method, **_style(i))
        levels = np.array(sorted(t["poison_rate"].unique()))
        axes[0][j].plot(levels * 100, levels, color="grey", ls=":", lw=1, label="chance")
        axes[0][j].set_title(attack)
        for r, label in enumerate(
            ["detection precision", "detection recall", "accuracy recovered"]
        ):
            axes[r][j].set_ylabel(label)
        axes[2][j].set_xlabel("poisoned training rows (%)")
        axes[2][j].axhline(0, color="grey", lw=0.8)
    axes[0][-1].legend(fontsize=7)
    return ctx.save("classic_mitigation", fig)


@register_section("classic")
def classic_sections(ctx: ReportContext) -> list[Section]:
    runs = ctx.runs("classic")
    described, tests = validation_stats(runs)
    sections = [
        Section(
            title="Classic study: validation outcomes",
            lead=validation_text(described, tests),
            figures=[fig_validation(ctx, described, runs)],
            html=(
                "<h3>Test accuracy over seeds</h3>"
                + _table(described.drop(columns=["metric"]))
                + "<h3>Each level against level 0 (paired by seed, Holm)</h3>"
                + (
                    _table(
                        tests[
                            [
                                *CONFIG,
                                "poison_rate",
                                "n_pairs",
                                "baseline_mean",
                                "mean_diff",
                                "p_ttest_holm",
                                "p_wilcoxon_holm",
                                "significant",
                            ]
                        ],
                        4,
                    )
                    if len(tests)
                    else ""
                )
            ),
        )
    ]
    table = mitigation_table(runs)
    if len(table):
        sections.append(
            Section(
                title="Classic study: mitigation",
                lead=mitigation_text(table),
                figures=[fig_mitigation(ctx, table)],
                html=_table(table),
            )
        )
    return sections


@register_section("classic_data_quantity")
def data_quantity_sections(ctx: ReportContext) -> list[Section]:
    sections = []
    for row in ctx.runs("classic_data_quantity").itertuples():
        run_dir = Path(row.run_dir)
        curves = pd.read_csv(run_dir / CURVES_FILE)
        mult = pd.read_csv(run_dir / MULTIPLIERS_FILE)
        summary = curve_summary(curves)
        fig, axes = _panels(1, width=6, height=4)
        ax = axes[0][0]
        for i, (level, g) in enumerate(summary.groupby("level")):
            st = _style(i)
            ax.plot(g["n_train"], g["mean"], label=f"{level:.0%} poisoned", **st)
            ax.fill_between(g["n_train"], g["ci_low"], g["ci_high"], color=st["color"], alpha=0.18)
        ax.axhline(mult["target_acc"].iloc[0], color="grey", ls="--", lw=1)
        ax.axvline(mult["reference_n"].iloc[0], color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("training rows")
        ax.set_ylabel("test accuracy (mean, 95% CI)")
        ax.legend(fontsize=8)
        name = ctx.save(f"classic_learning_curves_{row.data}_{row.model}_{row.attack}", fig)
        ref = mult.iloc[0]
        parts = []
        for m in mult.itertuples():
            if m.level == 0:
                continue
            value = f"x{m.multiplier:.2f}" if np.isfinite(m.multiplier) else "never reached"
            if not np.isfinite(m.ci_low):
                ci = "in no seed resample"
            else:
                high = f"{m.ci_high:.2f}" if np.isfinite(m.ci_high) else "beyond the measured sizes"
                ci = f"95% CI {m.ci_low:.2f} to {high}"
            parts.append(f"{m.level:.0%}: {value} ({ci})")
        lead = (
            f"{row.data}, {row.model}, {row.attack}: the clean model reaches "
            f"{ref.target_acc:.3f} test accuracy with {ref.reference_n:.0f} training rows. "
            "Data needed to match it, relative to the clean model: "
            + "; ".join(parts)
            + f". 'Never reached' means not within the measured sizes (up to "
            f"x{ref.max_measured_multiplier:.1f}); CIs resample seeds."
        )
        sections.append(
            Section(
                title=f"Data quantity vs quality ({row.data}, {row.model}, {row.attack})",
                lead=lead,
                figures=[name],
                html=_table(mult),
            )
        )
    return sections


@register_section("classic_paradox")
def paradox_sections(ctx: ReportContext) -> list[Section]:
    sections = []
    for row in ctx.runs("classic_paradox").itertuples():
        run_dir = Path(row.run_dir)
        summary = pd.read_csv(run_dir / "paradox_summary.csv")
        skipped = pd.read_json(run_dir / "paradox.json", typ="series").get("skipped", {})
        tasks = list(summary["task"].unique())
        fig, axes = _panels(len(tasks), width=5, height=3.6)
        metrics = ["acc_test", "balanced_acc_test", "auprc_test", "recall_test"]
        for j, task in enumerate(tasks):
            s = summary[summary["task"] == task]
            labels = [
                f"{m}{' (weighted)' if w else ''}" for m, w in zip(s["model"], s["class_weighting"])
            ]
            x = np.arange(len(labels))
            for i, metric in enumerate(metrics):
                ax = axes[0][j]
                ax.bar(
                    x + (i - 1.5) * 0.2,
                    s[metric],
                    width=0.2,
                    label=metric,
                    color=_style(i)["color"],
                )
            axes[0][j].set_xticks(x, labels, rotation=15, fontsize=8)
            axes[0][j].set_title(f"{task} ({s['prevalence'].iloc[0]:.1%} positive)")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=len(metrics), fontsize=8)
        name = ctx.save(f"classic_accuracy_paradox_{run_dir.name}", fig)
        lines = []
        for task in tasks:
            s = summary[summary["task"] == task].set_index(["model", "class_weighting"])
            dummy = s.loc[("majority_class", False)]
            real = s.loc[("logreg", False)]
            weighted = s.loc[("logreg", True)]
            lines.append(
                f"{task} ({dummy.prevalence:.1%} positive): the majority-class model scores "
                f"{dummy.acc_test:.3f} accuracy while finding no positive (recall "
                f"{dummy.recall_test:.2f}, balanced accuracy {dummy.balanced_acc_test:.2f}, AUPRC "
                f"{dummy.auprc_test:.3f} = the prevalence); logistic regression: accuracy "
                f"{real.acc_test:.3f}, balanced {real.balanced_acc_test:.3f}, AUPRC "
                f"{real.auprc_test:.3f}, recall {real.recall_test:.2f}; with class weights accuracy "
                f"{weighted.acc_test:.3f}, balanced {weighted.balanced_acc_test:.3f}, recall "
                f"{weighted.recall_test:.2f}."
            )
        for task, why in dict(skipped).items():
            lines.append(f"{task} skipped: {why}")
        cm = summary[["task", "model", "class_weighting", "tn", "fp", "fn", "tp"]]
        sections.append(
            Section(
                title="The accuracy paradox",
                lead=" ".join(lines),
                figures=[name],
                html="<h3>Means over seeds (95% CI in paradox_summary.csv); confusion matrices "
                "summed over seeds</h3>"
                + _table(summary[["task", "model", "class_weighting", *metrics]])
                + _table(cm)
                + f"<p>{html.escape(str(run_dir))}</p>",
            )
        )
    return sections
