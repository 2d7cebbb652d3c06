"""The head-vs-tail dashboard: `capnet eval` reports side by side, and a gallery of tail-class failures."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from PIL import Image

from app import text
from app.graph_view import GROUP_COLOURS
from app.limits import MAX_PIXELS, MAX_REPORT_BYTES, MAX_REPORTS
from app.report_files import ROOT, AssetFiles, ReportFileError, ZipFiles, read_zip
from app.report_schema import ReportError, validate_report
from capnet.images import ImageError, load_image

BUNDLED = ROOT / "assets" / "reports"
GROUP_ORDER = ("total", "head", "medium", "tail")
# Runs are told apart by these colours, none of them a group's colour (blue head, orange medium, red tail).
RUN_COLOURS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
NOT_IN_REPORT = "image not in the report"
THUMBNAIL_SIDE = 192
SYNTH_LT_CAPNET = "synth-lt-capnet"
SYNTH_LT_ZERO_SHOT = "synth-lt-zero-shot"
ABLATION_FILE = "synth-lt-ablation.json"


@dataclass
class Run:
    name: str
    report: dict
    scores: pd.DataFrame | None
    files: AssetFiles | ZipFiles  # the only places the gallery reads images from
    scores_note: str = ""  # why there is no gallery, when there is none
    folder: str = ""  # the bundled report's folder under assets/reports (empty for uploads)

    @property
    def setting(self) -> str:
        return "tta" if "tta" in self.report["results"] else "single"

    def per_class(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.report["per_class"])
        frame.insert(0, "run", self.name)
        return frame


def _parse_json(data: bytes, where: str) -> dict:
    if len(data) > MAX_REPORT_BYTES:
        raise ReportError(f"{where} is larger than {MAX_REPORT_BYTES // 1_000_000} MB")
    try:
        report = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise ReportError(f"{where} is not a JSON file") from None
    return validate_report(report, where)


def _parse_scores(data: bytes | None, where: str) -> tuple[pd.DataFrame | None, str]:
    """The per-image scores, or None and a line saying why the gallery is off (the report still shows)."""
    if data is None:
        return None, "no scores.csv, so no gallery"
    if len(data) > MAX_REPORT_BYTES:
        return None, f"{where} is larger than {MAX_REPORT_BYTES // 1_000_000} MB, so no gallery"
    try:
        scores = pd.read_csv(io.BytesIO(data), dtype={"path": str, "image_id": str})
    except pd.errors.EmptyDataError:
        return None, f"{where} is empty, so no gallery"
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError):
        return None, f"{where} is not a readable CSV file, so no gallery"
    missing = [c for c in ("image_id", "path") if c not in scores]
    if missing:
        return None, f"{where} has no column {', '.join(missing)}, so no gallery"
    if scores.empty:
        return None, f"{where} has no rows, so no gallery"
    return scores, ""


def _run(report_bytes: bytes, scores_bytes: bytes | None, files, where: str, fallback: str) -> Run:
    report = _parse_json(report_bytes, where)
    scores, note = _parse_scores(scores_bytes, "scores.csv")
    return Run(report.get("name") or fallback, report, scores, files, note)


def bundled_runs() -> list[Run]:
    runs = []
    for path in sorted(BUNDLED.glob("*/report.json")):
        scores = path.with_name("scores.csv")
        data = scores.read_bytes() if scores.is_file() else None
        run = _run(path.read_bytes(), data, AssetFiles(path.parent), path.name, path.parent.name)
        run.folder = path.parent.name
        runs.append(run)
    return runs


def default_selection(runs: list[Run], capnet_row: str | None = None) -> list[str]:
    """The bundled runs the dashboard opens on: Synth-LT's CAPNET row and zero-shot, else the first two.

    The ablation writes ``synth-lt-<row>`` folders. The CAPNET row is the one the served checkpoint (or
    the ablation's JSON) names as shipped, else ``synth-lt-capnet``, else (reports of an earlier
    ablation) the first ``synth-lt-`` folder naming capnet.
    """
    synth = [run for run in runs if run.folder.startswith("synth-lt-")]
    by_folder = {run.folder: run.name for run in synth}
    capnet = (
        next((run.name for run in synth if capnet_row and run.name == capnet_row.strip()), None)
        or by_folder.get(SYNTH_LT_CAPNET)
        or next((name for folder, name in by_folder.items() if "capnet" in folder), None)
    )
    chosen = [name for name in (capnet, by_folder.get(SYNTH_LT_ZERO_SHOT)) if name is not None]
    return chosen or [run.name for run in runs[:2]]


@dataclass
class Ablation:
    """The Synth-LT ablation's table as the dashboard draws it: every row, mean and std per group."""

    table: pd.DataFrame  # columns row, group, mean, std (fractions)
    caption: str
    shipped: str | None  # the row saved as the served checkpoint, when the file says


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_ablation(path: Path | None = None) -> tuple[Ablation | None, str]:
    """``synth-lt-ablation.json`` (python -m capnet.world.ablation), or None and one line saying why not.

    Only the fields it knows are read: ``table`` (row -> group -> mean, std), ``seeds``, ``epochs``,
    ``shipped.row``; a cell without a finite mean is left out.
    """
    path = path or BUNDLED / ABLATION_FILE
    if not path.is_file():
        return None, f"no {path.name}, so no ablation chart"
    if path.stat().st_size > MAX_REPORT_BYTES:
        return None, f"{path.name} is larger than {MAX_REPORT_BYTES // 1_000_000} MB, so no ablation chart"
    try:
        payload = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None, f"{path.name} is not a JSON file, so no ablation chart"
    table = payload.get("table") if isinstance(payload, dict) else None
    cells = []
    for name, row in (table or {}).items() if isinstance(table, dict) else ():
        for group in GROUP_ORDER:
            cell = row.get(group) if isinstance(row, dict) else None
            if isinstance(cell, dict) and _finite(cell.get("mean")):
                std = cell["std"] if _finite(cell.get("std")) else 0.0
                cells.append({"row": str(name).strip(), "group": group, "mean": cell["mean"], "std": std})
    if not cells:
        return None, f"{path.name} holds no readable rows, so no ablation chart"
    seeds, epochs = payload.get("seeds"), payload.get("epochs")
    caption = "Synth-LT ablation: test mAP, mean ± standard deviation"
    if isinstance(seeds, list) and seeds:
        caption += f" over {len(seeds)} seed(s)"
    if _finite(epochs):
        caption += f", {int(epochs)} epochs"
    shipped = payload.get("shipped")
    row = shipped.get("row") if isinstance(shipped, dict) else None
    row = row.strip() if isinstance(row, str) and row.strip() else None
    if row:
        caption += f"; ★ the row shipped as checkpoints/capnet-synth-lt.safetensors: {row}"
    return Ablation(pd.DataFrame(cells), text.md(caption + "."), row), ""


def ablation_figure(ablation: Ablation) -> go.Figure:
    """Every row's group mAP as bars with their seed spread: where each component gains or loses."""
    frame = ablation.table
    rows = list(dict.fromkeys(frame["row"]))
    labels = {r: text.plot(r + (" ★" if r == ablation.shipped else "")) for r in rows}
    fig = go.Figure()
    for group in GROUP_ORDER:
        part = frame[frame.group == group].set_index("row").reindex(rows)
        fig.add_bar(
            y=[labels[r] for r in rows],
            x=100 * part["mean"],
            error_x=dict(type="data", array=(100 * part["std"]).fillna(0).tolist(), visible=True),
            orientation="h",
            name=group,
            marker_color=GROUP_COLOURS.get(group, "#555555"),
            hovertemplate="%{y}<br>" + group + " %{x:.1f}<extra></extra>",
        )
    fig.update_layout(
        barmode="group",
        xaxis=dict(title="test mAP (%)", range=[0, 105]),
        yaxis=dict(autorange="reversed"),
        height=140 + 60 * len(rows),
        margin=dict(l=10, r=10, t=40, b=10),
        title="every row of the ablation (colour: class group; whiskers: std over seeds)",
        legend=dict(orientation="h", y=-0.08),
    )
    return fig


def _runs_from_zip(path: Path, upload: str) -> list[Run]:
    files = read_zip(path, upload)
    reports = sorted(m for m in files.members if m.rsplit("/", 1)[-1] == "report.json")
    if not reports:
        raise ReportFileError(f"{upload} holds no report.json")
    runs = []
    for member in reports:
        folder = tuple(member.split("/")[:-1])
        scores = files.members.get("/".join((*folder, "scores.csv")))
        where = f"{upload}: {member}"
        runs.append(_run(files.members[member], scores, files.folder(folder), where, Path(upload).stem))
    return runs


def runs_from_uploads(paths: list[str]) -> tuple[list[Run], list[str]]:
    """Uploaded reports: zips of report.json + scores.csv + images, or a report.json with a CSV beside it.

    A bare report.json's gallery can only show images of the bundled assets/ folder; a zip's, its own.
    """
    runs, problems = [], []
    uploads = [Path(p) for p in paths]
    csvs = [p for p in uploads if p.suffix.lower() == ".csv"]
    for path in uploads:
        upload = path.name  # Gradio keeps the name the user's file had
        try:
            if path.suffix.lower() == ".zip":
                runs += _runs_from_zip(path, upload)
            elif path.suffix.lower() != ".csv":
                if path.stat().st_size > MAX_REPORT_BYTES:
                    raise ReportError(f"{upload} is larger than {MAX_REPORT_BYTES // 1_000_000} MB")
                scores = csvs.pop(0) if csvs else None
                data = None
                if scores is not None and scores.stat().st_size <= MAX_REPORT_BYTES:
                    data = scores.read_bytes()
                runs.append(_run(path.read_bytes(), data, AssetFiles(), upload, path.stem))
        except (ReportError, ReportFileError) as exc:
            problems.append(str(exc))
        except OSError:
            problems.append(f"{upload} could not be read")
    if len(runs) > MAX_REPORTS:
        problems.append(f"{len(runs)} reports uploaded; the first {MAX_REPORTS} are shown")
        runs = runs[:MAX_REPORTS]
    return runs, problems


def dedupe(runs: list[Run]) -> list[Run]:
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.name] = seen.get(run.name, 0) + 1
        if seen[run.name] > 1:
            run.name = f"{run.name} ({seen[run.name]})"
    return runs


def group_bars(runs: list[Run]) -> go.Figure:
    fig = go.Figure()
    for k, run in enumerate(runs):
        res = run.report["results"][run.setting]
        values = [None if res.get(g) is None else 100 * res[g] for g in GROUP_ORDER]
        fig.add_bar(
            x=list(GROUP_ORDER),
            y=values,
            name=text.plot(f"{run.name} ({run.setting})"),
            marker_color=RUN_COLOURS[k % len(RUN_COLOURS)],
            text=[f"{v:.1f}" if v is not None else "n/a" for v in values],
            textposition="outside",
        )
    fig.update_layout(
        barmode="group",
        yaxis=dict(title="mAP (%)", range=[0, 112]),
        height=400,
        margin=dict(l=10, r=10, t=40, b=10),
        title="mAP by class group (colour: run)",
        legend=dict(orientation="h", y=-0.15),
    )
    return fig


def ap_vs_count(runs: list[Run]) -> go.Figure:
    """Per-class AP against training count: where the tail sits is where long-tailed methods differ.

    Colour is the class group (as in the other tabs), the marker's shape the run: both have a legend.
    """
    fig = go.Figure()
    symbols = ["circle", "diamond", "square", "triangle-up", "x"]
    for k, run in enumerate(runs):
        frame = run.per_class()
        ap = frame[f"ap_{run.setting}"]
        name = text.plot(run.name)
        fig.add_trace(
            go.Scatter(
                x=frame.train_count.clip(lower=1),
                y=100 * ap,
                mode="markers",
                name=name,
                showlegend=False,
                marker=dict(
                    size=10,
                    symbol=symbols[k % len(symbols)],
                    color=[GROUP_COLOURS.get(g, "#7f7f7f") for g in frame.group],
                ),
                text=[text.plot(c) for c in frame["class"]],
                customdata=frame.group,
                hovertemplate="%{text}<br>%{x} training images (%{customdata})<br>AP %{y:.1f}"
                "<extra>%{fullData.name}</extra>",
            )
        )
        fig.add_trace(_legend_entry(name, "#555555", symbols[k % len(symbols)]))
    for group in ("head", "medium", "tail"):
        fig.add_trace(_legend_entry(group, GROUP_COLOURS[group], "circle"))
    fig.update_layout(
        xaxis=dict(type="log", title="training images of the class (log)"),
        yaxis=dict(title="AP (%)", range=[0, 105]),
        height=400,
        title="per-class AP (colour: class group, shape: run)",
        margin=dict(l=10, r=10, t=40, b=10),
        legend=dict(orientation="h", y=-0.2),
    )
    return fig


def _legend_entry(name: str, colour: str, symbol: str) -> go.Scatter:
    return go.Scatter(
        x=[None], y=[None], mode="markers", name=name, marker=dict(size=10, color=colour, symbol=symbol)
    )


def per_class_table(runs: list[Run]) -> pd.DataFrame:
    if not runs:
        return pd.DataFrame()
    frame = pd.concat([r.per_class() for r in runs], ignore_index=True)
    for col in [c for c in frame.columns if c.startswith("ap_")]:
        frame[col] = (100 * frame[col]).round(2)
    return frame


def _thumbnail(run: Run, raw: str) -> Image.Image | None:
    data = run.files.read(raw)
    if data is None:
        return None
    try:
        image = load_image(data, max_pixels=MAX_PIXELS, name=Path(raw).name, min_side=THUMBNAIL_SIDE)
    except ImageError:
        return None
    image.thumbnail((2 * THUMBNAIL_SIDE, 2 * THUMBNAIL_SIDE))
    return image


def failures(run: Run, class_name: str, k: int = 6) -> tuple[list[tuple[Image.Image, str]], str]:
    """Worst false negatives (positives scored lowest) and false positives (negatives scored highest)."""
    cases, note = failure_cases(run, class_name, k)
    return [(image, caption) for image, caption, _ in cases], note


def failure_cases(run: Run, class_name: str, k: int = 6) -> tuple[list[tuple[Image.Image, str, str]], str]:
    """``failures``' images and captions with the path each came from (the evidence map reads it again).

    Images come only from the run's own files (its zip, or the bundled assets/): a path pointing
    anywhere else counts as an image not in the report and is never opened.
    """
    who = f"**{text.md(run.name)}**"
    if run.scores is None:
        return [], f"{who}: {text.md(run.scores_note or 'no scores.csv, so no gallery')}"
    p, y = f"p:{class_name}", f"y:{class_name}"
    lacking = [c for c in (p, y) if c not in run.scores]
    if lacking:
        return [], f"{who}: scores.csv has no column {text.md(' or '.join(lacking))}, so no gallery"
    threshold = run.report.get("threshold", 0.5)
    scores = run.scores.assign(**{p: pd.to_numeric(run.scores[p], errors="coerce")})
    usable = scores[p].notna() & scores[y].isin([0, 1])
    unscored = int((~usable).sum())
    scores = scores[usable]
    pos = scores[scores[y] == 1].sort_values(p).head(k)
    neg = scores[scores[y] == 0].sort_values(p, ascending=False).head(k)
    items, missing = [], []
    for kind, rows in (("missed", pos), ("false alarm", neg)):
        for _, row in rows.iterrows():
            image = _thumbnail(run, str(row["path"]))
            if image is None:
                missing.append(Path(str(row["path"])).name)
                continue
            wrong = (row[p] < threshold) if kind == "missed" else (row[p] >= threshold)
            caption = f"{kind}{'' if wrong else ' (ranked low)'}: {row['image_id']} p={row[p]:.2f}"
            items.append((image, caption, str(row["path"])))
    note = f"{len(pos)} lowest-scored positives and {len(neg)} highest-scored negatives of '{class_name}'"
    if unscored:
        note += f"; {unscored} row(s) without a usable score or label skipped"
    if missing:
        shown = ", ".join(missing[:4]) + ("…" if len(missing) > 4 else "")
        note += f"; {NOT_IN_REPORT}: {len(missing)} ({shown})"
    return items, f"{who}: {text.md(note)}"
