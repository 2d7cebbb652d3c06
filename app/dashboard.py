"""The head-vs-tail dashboard: `capnet eval` reports side by side, and a gallery of tail-class failures."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from app.graph_view import GROUP_COLOURS

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "assets" / "reports"
GROUP_ORDER = ("total", "head", "medium", "tail")
MAX_REPORT_BYTES = 20_000_000


@dataclass
class Run:
    name: str
    report: dict
    scores: pd.DataFrame | None
    base: Path  # where relative image paths may also be found

    @property
    def setting(self) -> str:
        return "tta" if "tta" in self.report["results"] else "single"

    def per_class(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.report["per_class"])
        frame.insert(0, "run", self.name)
        return frame


def _read_json(path: Path) -> dict:
    if path.stat().st_size > MAX_REPORT_BYTES:
        raise ValueError(f"{path.name} is larger than {MAX_REPORT_BYTES // 1_000_000} MB")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path.name} is not a JSON file") from None
    if not isinstance(report, dict) or not {"results", "per_class", "class_names"} <= set(report):
        raise ValueError(f"{path.name} is not a capnet eval report (no results / per_class / class_names)")
    return report


def load_run(report_path: Path, scores_path: Path | None = None, name: str | None = None) -> Run:
    """A report.json, with the scores.csv beside it (or the one given) for the failure gallery."""
    report = _read_json(report_path)
    scores_path = scores_path or report_path.with_name("scores.csv")
    scores = None
    if scores_path.is_file():
        try:
            scores = pd.read_csv(scores_path)
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError):
            raise ValueError(f"{scores_path.name} is not a readable CSV file") from None
    return Run(name or report.get("name") or report_path.parent.name, report, scores, report_path.parent)


def bundled_runs() -> list[Run]:
    return [load_run(p) for p in sorted(BUNDLED.glob("*/report.json"))]


def runs_from_uploads(paths: list[str]) -> tuple[list[Run], list[str]]:
    """Uploaded report.json files, each paired with an uploaded CSV of the same stem prefix if any."""
    runs, problems = [], []
    csvs = [Path(p) for p in paths if p.lower().endswith(".csv")]
    for raw in paths:
        path = Path(raw)
        if path.suffix.lower() == ".csv":
            continue
        try:
            scores = csvs.pop(0) if csvs else None
            runs.append(load_run(path, scores, name=None))
        except (ValueError, OSError) as exc:
            problems.append(str(exc))
    return runs, problems


def _dedupe(runs: list[Run]) -> list[Run]:
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.name] = seen.get(run.name, 0) + 1
        if seen[run.name] > 1:
            run.name = f"{run.name} ({seen[run.name]})"
    return runs


def group_bars(runs: list[Run]) -> go.Figure:
    fig = go.Figure()
    for run in _dedupe(runs):
        res = run.report["results"][run.setting]
        values = [None if res.get(g) is None else 100 * res[g] for g in GROUP_ORDER]
        fig.add_bar(
            x=list(GROUP_ORDER),
            y=values,
            name=f"{run.name} ({run.setting})",
            text=[f"{v:.1f}" if v is not None else "n/a" for v in values],
            textposition="outside",
        )
    fig.update_layout(
        barmode="group",
        yaxis=dict(title="mAP (%)", range=[0, 105]),
        height=400,
        margin=dict(l=10, r=10, t=40, b=10),
        title="mAP by class group",
        legend=dict(orientation="h", y=-0.15),
    )
    return fig


def ap_vs_count(runs: list[Run]) -> go.Figure:
    """Per-class AP against training count: where the tail sits is where long-tailed methods differ."""
    fig = go.Figure()
    symbols = ["circle", "diamond", "square", "triangle-up", "x"]
    for k, run in enumerate(runs):
        frame = run.per_class()
        ap = frame[f"ap_{run.setting}"]
        fig.add_trace(
            go.Scatter(
                x=frame.train_count.clip(lower=1),
                y=100 * ap,
                mode="markers",
                name=run.name,
                marker=dict(
                    size=10,
                    symbol=symbols[k % len(symbols)],
                    color=[GROUP_COLOURS.get(g, "#7f7f7f") for g in frame.group],
                ),
                text=frame["class"],
                customdata=frame.group,
                hovertemplate="%{text}<br>%{x} training images (%{customdata})<br>AP %{y:.1f}<extra>"
                + run.name
                + "</extra>",
            )
        )
    fig.update_layout(
        xaxis=dict(type="log", title="training images of the class (log)"),
        yaxis=dict(title="AP (%)", range=[0, 105]),
        height=400,
        title="per-class AP",
        margin=dict(l=10, r=10, t=40, b=10),
        legend=dict(orientation="h", y=-0.2),
    )
    return fig


def per_class_table(runs: list[Run]) -> pd.DataFrame:
    if not runs:
        return pd.DataFrame()
    frame = pd.concat([r.per_class() for r in runs], ignore_index=True)
    for col in [c for c in frame.columns if c.startswith("ap_")]:
        frame[col] = (100 * frame[col]).round(2)
    return frame


def _image_path(run: Run, raw: str) -> str | None:
    for candidate in (Path(raw), ROOT / raw, run.base / raw):
        if candidate.is_file():
            return str(candidate)
    return None


def failures(run: Run, class_name: str, k: int = 6) -> tuple[list[tuple[str, str]], str]:
    """Worst false negatives (positives scored lowest) and false positives (negatives scored highest)."""
    if run.scores is None:
        return [], f"{run.name}: no scores.csv, so no gallery"
    p, y = f"p:{class_name}", f"y:{class_name}"
    if p not in run.scores or y not in run.scores:
        return [], f"{run.name} has no class '{class_name}'"
    threshold = run.report.get("threshold", 0.5)
    pos = run.scores[run.scores[y] == 1].sort_values(p).head(k)
    neg = run.scores[run.scores[y] == 0].sort_values(p, ascending=False).head(k)
    items, missing = [], 0
    for kind, rows in (("missed", pos), ("false alarm", neg)):
        for _, row in rows.iterrows():
            path = _image_path(run, str(row["path"]))
            if path is None:
                missing += 1
                continue
            wrong = (row[p] < threshold) if kind == "missed" else (row[p] >= threshold)
            items.append(
                (path, f"{kind}{'' if wrong else ' (ranked low)'}: {row['image_id']} p={row[p]:.2f}")
            )
    note = f"{len(pos)} lowest-scored positives and {len(neg)} highest-scored negatives of '{class_name}'"
    if missing:
        note += f"; {missing} image file(s) not found on this machine"
    return items, note
