"""Failure patterns of one `capnet eval` report in the dashboard: plots and a table over ``capnet.failures``.

Per-class precision-recall curves, the classes most often present in each class's highest-scored
negatives and lowest-scored positives, and a reliability diagram by class group; each for every class or
for one group (the tail, typically).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from app import text
from app.dashboard import Run
from app.graph_view import GROUP_COLOURS
from app.limits import CONFUSION_K, CURVE_POINTS, MAX_PR_CLASSES
from capnet.failures import EvalScores, calibration_error, confusions, pr_curves, reliability, scores_from

ALL = "all classes"
FILTERS = (ALL, "head", "medium", "tail")
CONFUSION_COLUMNS = [
    "class",
    "group",
    "AP",
    "in its highest-scored negatives",
    "in its lowest-scored positives",
]


def eval_scores(run: Run) -> EvalScores:
    """The run's probabilities and labels (ValueError, one line, when its scores.csv cannot give them)."""
    if run.scores is None:
        raise ValueError((run.scores_note or "no scores.csv").replace(", so no gallery", ""))
    return scores_from(run.report, run.scores)


def group_of(choice: str | None) -> str | None:
    return None if choice in (None, ALL) else choice


def _thin(curve: pd.DataFrame) -> pd.DataFrame:
    """At most CURVE_POINTS points of one curve, its two ends always kept."""
    if len(curve) <= CURVE_POINTS:
        return curve
    keep = np.unique(np.linspace(0, len(curve) - 1, CURVE_POINTS).round().astype(int))
    return curve.iloc[keep]


def pr_figure(scores: EvalScores, group: str | None) -> go.Figure:
    """One precision-recall curve per class, coloured by group; the lowest-AP classes when there are many."""
    curves = pr_curves(scores, group=group)
    ap = curves.groupby("class", sort=False)["ap"].first().sort_values(kind="stable")
    drawn = list(ap.index[:MAX_PR_CLASSES])
    fig = go.Figure()
    for name in drawn:
        curve = _thin(curves[curves["class"] == name])
        label = text.plot(f"{name} (AP {100 * ap[name]:.1f})")
        fig.add_trace(
            go.Scatter(
                x=curve.recall,
                y=curve.precision,
                mode="lines",
                line=dict(color=GROUP_COLOURS.get(curve.group.iloc[0], "#7f7f7f"), width=1.5),
                name=label,
                hovertemplate=label + "<br>recall %{x:.2f}, precision %{y:.2f}<extra></extra>",
            )
        )
    shown = (
        f"the {len(drawn)} lowest-AP of {len(ap)} classes" if len(ap) > len(drawn) else f"{len(ap)} classes"
    )
    fig.update_layout(
        title=f"precision-recall per class ({shown}; colour: group)",
        xaxis=dict(title="recall", range=[0, 1.02]),
        yaxis=dict(title="precision", range=[0, 1.02]),
        height=420,
        margin=dict(l=10, r=10, t=40, b=10),
    )
    return fig


def reliability_figure(scores: EvalScores, group: str | None) -> go.Figure:
    """Mean probability against observed frequency per bin, one line per group, the diagonal for reference."""
    table = reliability(scores, 10, group=group)
    errors = calibration_error(table) if not table.empty else pd.Series(dtype=float)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="#999999"), name="calibrated"
        )
    )
    for name, part in table.groupby("group", sort=False):
        fig.add_trace(
            go.Scatter(
                x=part.mean_probability,
                y=part.observed_frequency,
                mode="lines+markers",
                marker=dict(size=6 + 14 * np.sqrt(part["count"] / table["count"].max())),
                line=dict(color=GROUP_COLOURS.get(name, "#7f7f7f")),
                name=f"{name} (ECE {errors[name]:.3f})",
                customdata=part["count"],
                hovertemplate="mean p %{x:.2f}, observed %{y:.2f}, %{customdata} scores<extra></extra>",
            )
        )
    fig.update_layout(
        title="reliability by class group (marker size: scores in the bin)",
        xaxis=dict(title="mean predicted probability", range=[0, 1]),
        yaxis=dict(title="observed frequency", range=[0, 1.02]),
        height=420,
        margin=dict(l=10, r=10, t=40, b=10),
    )
    return fig


def confusion_table(scores: EvalScores, group: str | None, k: int = CONFUSION_K) -> pd.DataFrame:
    """One row per class, lowest AP first: the classes most often present in its k highest-scored
    negatives (what it is confused with) and in its k lowest-scored positives (what its misses show)."""
    table = confusions(scores, k, group=group, top=3)
    ap = pr_curves(scores, group=group).groupby("class")["ap"].first()
    rows = []
    for c in scores.classes_in(group):
        name = scores.class_names[c]
        row = {
            "class": name,
            "group": scores.groups[c],
            "AP": round(100 * ap[name], 1) if name in ap else None,
        }
        for kind, column in (("negatives", CONFUSION_COLUMNS[3]), ("positives", CONFUSION_COLUMNS[4])):
            part = table[(table["class"] == name) & (table.kind == kind)]
            row[column] = ", ".join(f"{o} {n}/{m}" for o, n, m in zip(part.other, part["count"], part.images))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=CONFUSION_COLUMNS)
    return frame.sort_values("AP", na_position="last", kind="stable").reset_index(drop=True)


def patterns(
    run: Run | None, choice: str | None
) -> tuple[str, go.Figure | None, go.Figure | None, pd.DataFrame]:
    """(note, PR curves, reliability diagram, confusion table) of one run, for every class or one group."""
    empty = pd.DataFrame(columns=CONFUSION_COLUMNS)
    if run is None:
        return "", None, None, empty
    who = f"**{text.md(run.name)}**"
    try:
        scores = eval_scores(run)
    except ValueError as exc:
        return f"{who}: no failure patterns ({text.md(exc)})", None, None, empty
    group = group_of(choice)
    if not scores.classes_in(group):
        return f"{who}: no {text.md(group)} class in this report", None, None, empty
    note = (
        f"{who}: {len(scores.image_ids)} test images, {len(scores.classes_in(group))} classes "
        f"({text.md(choice or ALL)}); confusions over each class's {CONFUSION_K} highest-scored negatives "
        f'and {CONFUSION_K} lowest-scored positives ("horse 7/10": horse is in 7 of the 10).'
    )
    return note, pr_figure(scores, group), reliability_figure(scores, group), confusion_table(scores, group)
