"""The Head vs tail tab: eval reports side by side (bundled, or uploaded as a zip), and a failure gallery."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import gradio as gr
import pandas as pd

from app import dashboard as dash
from app import failure_view, text
from app.models import ServedModels
from app.tabs.explain import attach_to_gallery

TABLE_COLUMNS = ["run", "class", "train_count", "group", "test_positives", "ap_single"]


@dataclass
class DashboardTab:
    show: object  # the handler the demo runs on load, so the pre-ticked reports show at once
    inputs: list
    outputs: list


def _paths(files) -> list[str]:
    return [f if isinstance(f, str) else f.name for f in files or []]


def _worst_tail_class(run: dash.Run) -> str:
    evaluated = [row for row in run.report["per_class"] if row["test_positives"] > 0]
    tail = [row for row in evaluated if row.get("group") == "tail"] or evaluated
    ap_key = f"ap_{run.setting}"
    if not tail:
        return run.report["class_names"][0]
    return min(tail, key=lambda row: row[ap_key] if row[ap_key] is not None else 0.0)["class"]


def show_reports(bundled: dict[str, dash.Run], chosen, uploads):
    """Returns (message, bars, scatter, table, run chooser, class chooser, runs)."""
    runs = [bundled[name] for name in chosen or [] if name in bundled]
    uploaded, problems = dash.runs_from_uploads(_paths(uploads))
    runs = dash.dedupe(runs + uploaded)
    message = text.error(text.md(" ".join(problems))) if problems else ""
    if not runs:
        empty = pd.DataFrame(columns=TABLE_COLUMNS)
        none = gr.update(choices=[], value=None)
        return message or "Pick a bundled report or upload a report.", None, None, empty, none, none, []
    classes = list(dict.fromkeys(c for r in runs for c in r.report["class_names"]))
    produced = [
        f"**{text.md(r.name)}**: {text.md(r.report['produced_by'])}"
        for r in runs
        if "produced_by" in r.report
    ]
    message = "<br>".join(filter(None, [message, *produced]))
    return (
        message,
        dash.group_bars(runs),
        dash.ap_vs_count(runs),
        dash.per_class_table(runs),
        gr.update(choices=[r.name for r in runs], value=runs[0].name),
        gr.update(choices=classes, value=_worst_tail_class(runs[0])),
        runs,
    )


def show_gallery(runs, run_name, class_name):
    """Returns (gallery, note, the path of each gallery image)."""
    run = next((r for r in runs or [] if r.name == run_name), None)
    if run is None or not class_name:
        return [], "", []
    cases, note = dash.failure_cases(run, class_name)
    return [(image, caption) for image, caption, _ in cases], note, [raw for _, _, raw in cases]


def show_patterns(runs, run_name, choice):
    """Returns (note, precision-recall curves, reliability diagram, confusion table)."""
    run = next((r for r in runs or [] if r.name == run_name), None)
    return failure_view.patterns(run, choice)


def build(served: ServedModels | None = None, state: gr.State | None = None) -> DashboardTab:
    found = dash.bundled_runs()
    bundled = {run.name: run for run in found}
    ablation, _ = dash.read_ablation()
    capnet_row = (served.ablation_row if served else None) or (ablation.shipped if ablation else None)
    runs = gr.State()
    with gr.Row():
        chosen = gr.CheckboxGroup(
            list(bundled),
            value=dash.default_selection(found, capnet_row),
            label="Bundled reports",
            elem_id="bundled",
        )
        uploads = gr.File(
            label="…or upload a report: a zip of report.json, scores.csv and its images (or the two files)",
            file_count="multiple",
            file_types=[".zip", ".json", ".csv"],
            elem_id="report-upload",
        )
        load = gr.Button("Show", variant="primary", elem_id="show-reports")
    message = gr.Markdown(elem_id="dash-message")
    with gr.Row():
        bars = gr.Plot(label="mAP by group", elem_id="dash-bars")
        scatter = gr.Plot(label="AP against training count", elem_id="dash-scatter")
    if ablation is not None:
        with gr.Accordion("Synth-LT ablation: every row", open=True):
            gr.Markdown(ablation.caption, elem_id="ablation-caption")
            gr.Plot(dash.ablation_figure(ablation), label="Synth-LT ablation", elem_id="ablation-plot")
    table = gr.Dataframe(
        value=pd.DataFrame(columns=TABLE_COLUMNS),
        label="Per-class results (click a header to sort)",
        max_height=300,
        elem_id="dash-table",
    )
    with gr.Row():
        run_choice = gr.Dropdown(label="Run", choices=[], elem_id="gallery-run")
        class_choice = gr.Dropdown(label="Class", choices=[], elem_id="gallery-class")
    note = gr.Markdown(elem_id="gallery-note")
    gallery = gr.Gallery(
        label="Worst false negatives and false positives",
        columns=6,
        height="auto",
        elem_id="gallery",
    )
    handler = partial(show_reports, bundled)
    outputs = [message, bars, scatter, table, run_choice, class_choice, runs]
    load.click(handler, [chosen, uploads], outputs, api_name="reports")
    cases = gr.State()
    gallery_io = ([runs, run_choice, class_choice], [gallery, note, cases])
    class_choice.change(show_gallery, *gallery_io, api_name="gallery")
    run_choice.change(show_gallery, *gallery_io, api_name=False)
    attach_to_gallery(served, runs, run_choice, class_choice, gallery, cases)
    gr.Markdown("### Failure patterns of the chosen run")
    group = gr.Radio(
        list(failure_view.FILTERS), value=failure_view.ALL, label="Classes", elem_id="pattern-group"
    )
    pattern_note = gr.Markdown(elem_id="pattern-note")
    with gr.Row():
        curves = gr.Plot(label="Precision-recall per class", elem_id="pattern-pr")
        diagram = gr.Plot(label="Reliability by class group", elem_id="pattern-reliability")
    confused = gr.Dataframe(
        value=pd.DataFrame(columns=failure_view.CONFUSION_COLUMNS),
        label="What each class is confused with (highest-scored negatives) and what its misses show",
        max_height=300,
        elem_id="pattern-confusions",
    )
    pattern_io = ([runs, run_choice, group], [pattern_note, curves, diagram, confused])
    run_choice.change(show_patterns, *pattern_io, api_name=False)
    group.change(show_patterns, *pattern_io, api_name=False)
    return DashboardTab(handler, [chosen, uploads], outputs)
