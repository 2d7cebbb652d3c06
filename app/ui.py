"""The Gradio layout. Each handler only calls app/ functions, which only call the capnet library."""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from app import dashboard as dash
from app import finetune as ft
from app.graph_view import build_graph, cooccurrence_view, network_figure, similarity_heatmaps, stats_markdown
from app.models import ServedModels
from app.predict import (
    MAX_IMAGES,
    bar_chart,
    parse_labels,
    predict,
    read_uploads,
    samples_for,
    zero_shot_model,
)
from app.splits import official_training_labels
from capnet.data import DataError
from capnet.labelsets import PRESETS
from capnet.world.scenes import SCENE_CLASSES

CUSTOM = "Custom"
SCENES = "Scenes (synthetic)"
PROGRESS = gr.Progress()  # Gradio replaces this default with each job's own progress tracker
CHECKPOINT = "Checkpoint classes"
CSS = "#banner {border-left: 4px solid #ff7f0e; padding-left: 8px} .error {color: #b00020}"


def _error(text: str) -> str:
    return f"<span class='error'>⚠ {text}</span>"


def build_demo(served: ServedModels) -> gr.Blocks:
    samples = samples_for(served)
    label_sources = (
        ([CHECKPOINT] if served.trained else [])
        + ([SCENES] if served.world else [])
        + list(PRESETS)
        + [CUSTOM]
    )

    def labels_for(source: str, custom: str) -> tuple[str, ...]:
        if source == CHECKPOINT and served.trained is not None:
            return tuple(served.trained.class_names)
        if source == SCENES:
            return SCENE_CLASSES
        return parse_labels(source, custom)

    def counts_for(source: str) -> np.ndarray | None:
        if source == CHECKPOINT:
            return served.trained_counts
        labels = official_training_labels(source)
        return None if labels is None else labels.sum(0)

    # ---------------------------------------------------------------- predict
    def run_predict(files, picked, source, custom, threshold, tta, tuned):
        empty = (None, pd.DataFrame(), gr.update(choices=[], value=None), None)
        try:
            labels = labels_for(source, custom)
        except ValueError as exc:
            return (_error(f"Labels: {exc}"), *empty)
        images, problems = read_uploads([f if isinstance(f, str) else f.name for f in files or []])
        images += [(name, samples[name]) for name in picked or []]
        if not images:
            return (_error(" ".join(problems + ["Upload an image or pick a sample photo."])), *empty)
        images = images[:MAX_IMAGES]
        models = {}
        if source == CHECKPOINT and served.trained is not None:
            models["CAPNET"] = served.trained
        if tuned is not None and tuple(tuned.class_names) == labels:
            models["fine-tuned"] = tuned
        models["zero-shot"] = zero_shot_model(served, labels)
        result = predict(models, images, tta=tta, counts=counts_for(source))
        table = result.table.assign(above=result.table.probability >= threshold).round({"probability": 4})
        note = f"{len(images)} image(s), {len(labels)} labels, models: {', '.join(result.models)}."
        if problems:
            note = _error("Skipped: " + " ".join(problems)) + "<br>" + note
        first = images[0][0]
        names = [n for n, _ in images]
        return note, bar_chart(result, first, threshold), table, gr.update(choices=names, value=first), result

    def redraw(result, image, threshold):
        return None if result is None or image is None else bar_chart(result, image, threshold)

    # ---------------------------------------------------------------- graph
    def run_graph(source, custom, mode, topk, threshold, p, compare):
        try:
            labels = labels_for(source, custom)
        except ValueError as exc:
            return _error(f"Labels: {exc}"), None, "", None, None
        names = list(labels)
        feats = zero_shot_model(served, labels).text_features
        graph = build_graph(feats, names, mode, topk, threshold, p)
        counts = counts_for(source)
        fig = network_figure(graph, counts, "CLIP text-embedding graph")
        text = stats_markdown(graph, "text-embedding graph")
        cooc_fig = None
        if compare:
            train_labels = official_training_labels(source)
            if train_labels is None:
                text += "<br>" + _error(
                    "No official long-tailed training labels on this machine for this label "
                    "set: the co-occurrence graph needs them (see README, data/ltsplits)."
                )
            else:
                cooc, cooc_counts, note = cooccurrence_view(train_labels, names, mode, topk, threshold, p)
                cooc_fig = network_figure(
                    cooc, cooc_counts, "co-occurrence graph of the long-tailed training set"
                )
                text += "<br>" + stats_markdown(cooc, "co-occurrence graph") + "<br>" + note
        heat = (
            similarity_heatmaps(served.trained)
            if served.trained is not None and source == CHECKPOINT
            else None
        )
        return "", fig, text, cooc_fig, heat

    # ---------------------------------------------------------------- dashboard
    bundled = {run.name: run for run in dash.bundled_runs()}

    def run_dashboard(chosen, uploads):
        runs = [bundled[name] for name in chosen or []]
        uploaded, problems = dash.runs_from_uploads(
            [f if isinstance(f, str) else f.name for f in uploads or []]
        )
        runs += uploaded
        message = _error(" ".join(problems)) if problems else ""
        if not runs:
            return (
                (message or "Pick a bundled report or upload a report.json."),
                None,
                None,
                pd.DataFrame(),
                gr.update(choices=[]),
                gr.update(choices=[]),
                [],
            )
        classes = list(dict.fromkeys(c for r in runs for c in r.report["class_names"]))
        evaluated = [row for row in runs[0].report["per_class"] if row["test_positives"] > 0]
        ap_key = f"ap_{runs[0].setting}"
        tail = [row for row in evaluated if row["group"] == "tail"] or evaluated
        worst = min(tail, key=lambda row: row[ap_key] or 0.0)["class"] if tail else classes[0]
        produced = [f"**{r.name}**: {r.report['produced_by']}" for r in runs if "produced_by" in r.report]
        message = "<br>".join(filter(None, [message, *produced]))
        return (
            message,
            dash.group_bars(runs),
            dash.ap_vs_count(runs),
            dash.per_class_table(runs),
            gr.update(choices=[r.name for r in runs], value=runs[0].name),
            gr.update(choices=classes, value=worst),
            runs,
        )

    def run_gallery(runs, run_name, class_name):
        run = next((r for r in runs or [] if r.name == run_name), None)
        if run is None or not class_name:
            return [], ""
        items, note = dash.failures(run, class_name)
        return items, note

    # ---------------------------------------------------------------- fine-tune
    def run_finetune(
        archive,
        images,
        labels_text,
        use_sample,
        parts,
        epochs,
        lr,
        loss,
        request: gr.Request,
        progress=PROGRESS,
    ):
        ticket = ft.SLOT.try_start(request.session_hash)
        if ticket is None:
            if ft.SLOT.held_by(request.session_hash):
                message = "A fine-tune of yours is already running."
            else:
                message = "Another fine-tune is running on this server; try again shortly."
            yield _error(message), None, None, None
            return
        try:
            yield "Preparing the data and the model…", None, None, None
            workdir = Path(tempfile.mkdtemp(prefix="capnet-ft-data-"))
            if use_sample:
                job = ft.bundled_sample(workdir)
            elif archive is not None:
                job = ft.job_from_zip(archive if isinstance(archive, str) else archive.name, workdir)
            else:
                job = ft.job_from_images(
                    [f if isinstance(f, str) else f.name for f in images or []], labels_text
                )
            if not parts:
                raise DataError("choose at least one part to train")
            skipped = f" Skipped {len(job.problems)} unusable file(s)." if job.problems else ""
            factory = ft.default_backbone_factory(served.backbone)
            updates = ft.run_job(
                job, factory, parts=set(parts), epochs=epochs, lr=lr, loss=loss, ticket=ticket
            )
            for update in updates:
                progress((update.epoch, update.epochs), desc="fine-tuning", unit="epoch")
                curve = go.Figure(
                    go.Scatter(
                        x=list(range(1, len(update.losses) + 1)), y=update.losses, mode="lines+markers"
                    )
                )
                curve.update_layout(
                    title="training loss",
                    xaxis_title="epoch",
                    height=300,
                    margin=dict(l=10, r=10, t=40, b=10),
                )
                status = (
                    f"{update.message}.{skipped} ({len(job.records)} images, classes: "
                    f"{', '.join(job.records.class_names)})"
                )
                checkpoint = str(update.checkpoint) if update.checkpoint else None
                yield status, curve, checkpoint, update.model
        except DataError as exc:
            yield _error(str(exc)), None, None, None
        except ft.Cancelled as exc:
            yield _error(f"Cancelled {exc}."), gr.update(), None, None
        finally:
            ft.SLOT.finish(ticket)

    def cancel_finetune(request: gr.Request):
        if ft.SLOT.cancel(request.session_hash):
            gr.Info("Cancelling: the fine-tune stops before its next step.")
        else:
            gr.Info("Nothing to cancel.")

    def after_finetune(tuned):
        if tuned is None:
            return gr.update(), gr.update()
        return gr.update(value=CUSTOM), gr.update(value=", ".join(tuned.class_names))

    # ---------------------------------------------------------------- layout
    with gr.Blocks(title="capnet") as demo:
        gr.Markdown("# capnet · long-tailed multi-label recognition with CLIP")
        gr.Markdown(served.banner, elem_id="banner")
        pred_state, runs_state, tuned_state = gr.State(), gr.State(), gr.State()
        with gr.Tab("Predict", id="predict-tab"):
            with gr.Row():
                with gr.Column(scale=1):
                    files = gr.File(
                        label=f"Images (up to {MAX_IMAGES})", file_count="multiple", elem_id="upload"
                    )
                    picked = gr.CheckboxGroup(
                        list(samples),
                        label="…or sample scenes (synthetic)"
                        if served.world
                        else "…or sample photos (scikit-image)",
                        elem_id="samples",
                    )
                    source = gr.Radio(
                        label_sources, value=label_sources[0], label="Label set", elem_id="preset"
                    )
                    custom = gr.Textbox(
                        label="Custom labels (comma or newline separated)",
                        placeholder="cat, dog, traffic light",
                        elem_id="custom",
                    )
                    threshold = gr.Slider(0, 1, value=0.5, step=0.01, label="Threshold", elem_id="threshold")
                    tta = gr.Checkbox(label="Test-time ensembling (five crops)", value=False)
                    button = gr.Button("Predict", variant="primary", elem_id="predict")
                with gr.Column(scale=2):
                    message = gr.Markdown(elem_id="message")
                    which = gr.Dropdown(label="Image", choices=[], elem_id="which")
                    plot = gr.Plot(label="Ranked labels", elem_id="predict-plot")
                    table = gr.Dataframe(
                        value=pd.DataFrame(), label="All probabilities", elem_id="table", max_height=300
                    )
        with gr.Tab("Label graph", id="graph-tab"):
            with gr.Row():
                with gr.Column(scale=1):
                    g_source = gr.Radio(
                        label_sources,
                        value=label_sources[0] if served.world or served.trained else "VOC",
                        label="Label set",
                        elem_id="g-preset",
                    )
                    g_custom = gr.Textbox(label="Custom labels", placeholder="cat, dog, person")
                    mode = gr.Radio(["topk", "threshold"], value="topk", label="Sparsify by")
                    topk = gr.Slider(0, 10, value=4, step=1, label="top-k neighbours", elem_id="topk")
                    g_threshold = gr.Slider(0, 1, value=0.8, step=0.01, label="similarity threshold")
                    p = gr.Slider(0, 1, value=0.2, step=0.05, label="p (mass spread to neighbours)")
                    compare = gr.Checkbox(label="Compare with the co-occurrence graph of the LT training set")
                with gr.Column(scale=3):
                    g_message = gr.Markdown()
                    g_stats = gr.Markdown(elem_id="graph-stats")
                    g_plot = gr.Plot(label="Label graph", elem_id="graph-plot")
                    g_cooc = gr.Plot(label="Co-occurrence graph")
                    g_heat = gr.Plot(label="Class similarity before / after the GCN (trained checkpoint)")
        with gr.Tab("Head vs tail", id="dashboard-tab"):
            with gr.Row():
                chosen = gr.CheckboxGroup(
                    list(bundled), value=list(bundled)[:2], label="Bundled reports", elem_id="bundled"
                )
                uploads = gr.File(
                    label="…or upload report.json (+ scores.csv)",
                    file_count="multiple",
                    elem_id="report-upload",
                )
                load = gr.Button("Show", variant="primary", elem_id="show-reports")
            d_message = gr.Markdown(elem_id="dash-message")
            with gr.Row():
                d_bars = gr.Plot(label="mAP by group", elem_id="dash-bars")
                d_scatter = gr.Plot(label="AP against training count")
            d_table = gr.Dataframe(
                label="Per-class results (click a header to sort)", max_height=300, elem_id="dash-table"
            )
            with gr.Row():
                g_run = gr.Dropdown(label="Run", choices=[])
                g_class = gr.Dropdown(label="Class", choices=[], elem_id="gallery-class")
            g_note = gr.Markdown()
            gallery = gr.Gallery(
                label="Worst false negatives and false positives", columns=6, height=260, elem_id="gallery"
            )
        with gr.Tab("Fine-tune", id="finetune-tab"):
            with gr.Row():
                with gr.Column(scale=1):
                    archive = gr.File(
                        label="A zip of images + one CSV (path,labels; labels separated by ';')",
                        file_types=[".zip"],
                        elem_id="ft-zip",
                    )
                    ft_images = gr.File(label="…or images", file_count="multiple", elem_id="ft-images")
                    ft_labels = gr.Textbox(label="…with labels, one line per image (e.g. cat;dog)", lines=3)
                    use_sample = gr.Checkbox(
                        label="Use the bundled sample (80 synthetic images)", value=False, elem_id="ft-sample"
                    )
                    parts = gr.CheckboxGroup(
                        ["prompts", "gcn", "adapters"], value=["prompts", "gcn"], label="What trains"
                    )
                    epochs = gr.Slider(1, ft.MAX_EPOCHS, value=3, step=1, label="Epochs", elem_id="ft-epochs")
                    lr = gr.Number(value=0.003, label="Learning rate")
                    loss = gr.Radio(["dbfocal", "bce", "focal", "asl"], value="dbfocal", label="Loss")
                    with gr.Row():
                        start = gr.Button("Fine-tune", variant="primary", elem_id="ft-start")
                        cancel = gr.Button("Cancel", elem_id="ft-cancel")
                with gr.Column(scale=2):
                    ft_status = gr.Markdown(elem_id="ft-status")
                    ft_curve = gr.Plot(label="Loss")
                    ft_download = gr.File(label="Tuned checkpoint (safetensors)", elem_id="ft-download")
                    gr.Markdown(
                        f"Limits: {ft.MAX_IMAGES} images, {ft.MAX_EPOCHS} epochs, {ft.MAX_SECONDS} s, "
                        "one job at a time. The tuned model appears in the Predict tab for its label set."
                    )

        button.click(
            run_predict,
            [files, picked, source, custom, threshold, tta, tuned_state],
            [message, plot, table, which, pred_state],
        )
        which.change(redraw, [pred_state, which, threshold], plot)
        threshold.release(redraw, [pred_state, which, threshold], plot)
        graph_inputs = [g_source, g_custom, mode, topk, g_threshold, p, compare]
        graph_outputs = [g_message, g_plot, g_stats, g_cooc, g_heat]
        for control in (g_source, mode, compare):
            control.change(run_graph, graph_inputs, graph_outputs)
        for control in (topk, g_threshold, p):
            control.change(run_graph, graph_inputs, graph_outputs)
        g_custom.submit(run_graph, graph_inputs, graph_outputs)
        load.click(
            run_dashboard,
            [chosen, uploads],
            [d_message, d_bars, d_scatter, d_table, g_run, g_class, runs_state],
        )
        g_class.change(run_gallery, [runs_state, g_run, g_class], [gallery, g_note])
        g_run.change(run_gallery, [runs_state, g_run, g_class], [gallery, g_note])
        job = start.click(
            run_finetune,
            [archive, ft_images, ft_labels, use_sample, parts, epochs, lr, loss],
            [ft_status, ft_curve, ft_download, tuned_state],
        )
        job.then(after_finetune, [tuned_state], [source, custom])
        cancel.click(cancel_finetune, None, None)
        demo.load(run_graph, graph_inputs, graph_outputs)
    return demo
