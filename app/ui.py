"""The Gradio layout. Each handler only calls app/ functions, which only call the capnet library."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from app.models import ServedModels
from app.predict import (
    MAX_IMAGES,
    SAMPLE_NAMES,
    bar_chart,
    parse_labels,
    predict,
    read_uploads,
    sample_photos,
)
from capnet.labelsets import PRESETS

CUSTOM = "Custom"


def build_demo(served: ServedModels) -> gr.Blocks:
    samples = sample_photos()
    presets = ([f"Checkpoint ({served.trained.num_classes} classes)"] if served.trained else []) + list(
        PRESETS
    )

    def run(files, picked, preset, custom, threshold, tta):
        try:
            labels = (
                tuple(served.trained.class_names)
                if served.trained and preset.startswith("Checkpoint")
                else parse_labels(preset, custom)
            )
        except ValueError as exc:
            return f"**Labels:** {exc}", None, None, gr.update(choices=[], value=None), None
        images, problems = read_uploads([f if isinstance(f, str) else f.name for f in files or []])
        images += [(name, samples[name]) for name in picked or []]
        if not images:
            problems.append("upload an image or pick a sample photo")
            return "\n\n".join(f"**Input:** {p}" for p in problems), None, None, gr.update(choices=[]), None
        result = predict(served, images[:MAX_IMAGES], labels, tta=tta)
        first = images[0][0]
        table = result.table.assign(above=result.table.probability >= threshold)
        message = (
            "\n\n".join(f"**Skipped:** {p}" for p in problems)
            or f"{len(images)} image(s), {len(labels)} labels."
        )
        names = [n for n, _ in images]
        return (
            message,
            bar_chart(result, first, threshold),
            table,
            gr.update(choices=names, value=first),
            result,
        )

    def redraw(result, image, threshold):
        if result is None or image is None:
            return None
        return bar_chart(result, image, threshold)

    with gr.Blocks(title="capnet") as demo:
        gr.Markdown("# capnet: long-tailed multi-label recognition with CLIP")
        gr.Markdown(served.banner, elem_id="banner")
        state = gr.State()
        with gr.Tab("Predict"):
            with gr.Row():
                with gr.Column(scale=1):
                    files = gr.File(
                        label=f"Images (up to {MAX_IMAGES})",
                        file_count="multiple",
                        file_types=["image"],
                        elem_id="upload",
                    )
                    picked = gr.CheckboxGroup(
                        list(SAMPLE_NAMES), label="…or sample photos (scikit-image)", elem_id="samples"
                    )
                    preset = gr.Radio(
                        presets + [CUSTOM], value=presets[0], label="Label set", elem_id="preset"
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
                    plot = gr.Plot(label="Ranked labels")
                    table = gr.Dataframe(value=pd.DataFrame(), label="All probabilities", elem_id="table")
        button.click(
            run, [files, picked, preset, custom, threshold, tta], [message, plot, table, which, state]
        )
        which.change(redraw, [state, which, threshold], plot)
        threshold.release(redraw, [state, which, threshold], plot)
    return demo
