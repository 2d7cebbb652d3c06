"""The Predict tab: images in, each shown beside its ranked labels from every model serving the label set."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import gradio as gr
import pandas as pd

from app import text
from app.compare import ZERO_SHOT, models_for
from app.label_sources import counts_for, label_sources, labels_for
from app.limits import MAX_IMAGES, THRESHOLD_MAX, THRESHOLD_MIN
from app.memory import release_soon
from app.models import ServedModels
from app.predict import (
    Prediction,
    bar_chart,
    over_the_limit,
    predict,
    read_uploads,
    samples_for,
    unique_names,
)
from app.tabs.explain import attach_to_predict

TABLE_COLUMNS = ["image", "model", "label", "probability", "above"]
PREVIEW_SIDE = 384


@dataclass
class PredictTab:
    source: gr.Radio
    custom: gr.Textbox


@dataclass
class Shown:
    """What a prediction leaves for redrawing: the ranked labels and a preview of every image."""

    result: Prediction
    previews: dict
    models: dict = field(default_factory=dict)  # name -> CapNet, for the evidence maps


def empty_table() -> pd.DataFrame:
    return pd.DataFrame(columns=TABLE_COLUMNS)


def _paths(files) -> list[str]:
    return [f if isinstance(f, str) else f.name for f in files or []]


def _preview(image):
    small = image.copy()
    small.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    return small


def run_predict(served: ServedModels, files, picked, source, custom, threshold, tta, tuned):
    """Returns (message, image, chart, table, image chooser, state); every user text escaped."""
    empty = (None, None, empty_table(), gr.update(choices=[], value=None), None)
    if threshold is None or not THRESHOLD_MIN <= threshold <= THRESHOLD_MAX:
        return (
            text.error(f"The threshold must lie between {THRESHOLD_MIN:g} and {THRESHOLD_MAX:g}."),
            *empty,
        )
    try:
        labels = labels_for(served, source, custom)
    except ValueError as exc:
        return (text.error(f"Labels: {text.md(exc)}"), *empty)
    paths, picked = _paths(files), list(picked or [])
    samples = samples_for(served)
    too_many = over_the_limit(unique_names([Path(p).name for p in paths]) + picked)
    images, problems = read_uploads(paths)
    room = max(0, MAX_IMAGES - len(paths))
    chosen = [name for name in picked[:room] if name in samples]
    shown_names = unique_names(chosen, taken=[name for name, _ in images])
    images += [(shown, samples[name]) for shown, name in zip(shown_names, chosen)]
    if too_many and too_many not in problems:
        problems.append(too_many)
    if not images:
        return (text.error(text.md(" ".join(problems + ["Upload an image or pick a sample."]))), *empty)
    try:
        models = models_for(served, labels, tuned)
        zero_shot = models[ZERO_SHOT]
        result = predict(models, images, tta=tta, counts=counts_for(served, source))
        shown = Shown(result, {name: _preview(image) for name, image in images}, models)
    finally:
        del images
        release_soon()
    table = result.table.assign(above=result.table.probability >= threshold).round({"probability": 4})
    note = text.md(
        f"{len(shown.previews)} image(s), {len(labels)} labels, models: {', '.join(result.models)}. "
        f"Zero-shot: {zero_shot.calibration.describe()}."
    )
    if problems:
        note = text.error(text.md("Skipped: " + " ".join(problems))) + "<br>" + note
    first = next(iter(shown.previews))
    chooser = gr.update(choices=list(shown.previews), value=first)
    return note, shown.previews[first], bar_chart(result, first, threshold), table, chooser, shown


def redraw(shown: Shown | None, image: str | None, threshold: float):
    if shown is None or image not in shown.previews:
        return None, None
    threshold = min(max(threshold or 0.0, THRESHOLD_MIN), THRESHOLD_MAX)
    return shown.previews[image], bar_chart(shown.result, image, threshold)


def build(served: ServedModels, tuned: gr.State) -> PredictTab:
    samples = samples_for(served)
    sources = label_sources(served)
    state = gr.State()
    with gr.Row():
        with gr.Column(scale=1):
            files = gr.File(label=f"Images (up to {MAX_IMAGES})", file_count="multiple", elem_id="upload")
            gr.Gallery(
                [(image, name) for name, image in samples.items()],
                label="Sample scenes (synthetic)" if served.world else "Sample photos (scikit-image)",
                columns=3,
                rows=2,
                height=280,
                object_fit="cover",
                allow_preview=False,
                elem_id="sample-gallery",
            )
            picked = gr.CheckboxGroup(list(samples), label="…or pick samples", elem_id="samples")
            source = gr.Radio(sources, value=sources[0], label="Label set", elem_id="preset")
            custom = gr.Textbox(
                label="Custom labels (comma or newline separated)",
                placeholder="cat, dog, traffic light",
                elem_id="custom",
            )
            threshold = gr.Slider(
                THRESHOLD_MIN, THRESHOLD_MAX, value=0.5, step=0.01, label="Threshold", elem_id="threshold"
            )
            tta = gr.Checkbox(label="Test-time ensembling (five crops)", value=False)
            button = gr.Button("Predict", variant="primary", elem_id="predict")
        with gr.Column(scale=2):
            message = gr.Markdown(elem_id="message")
            which = gr.Dropdown(label="Image", choices=[], elem_id="which")
            with gr.Row():
                image = gr.Image(
                    label="Image", type="pil", interactive=False, elem_id="predict-image", height=320
                )
                plot = gr.Plot(label="Ranked labels", elem_id="predict-plot")
            attach_to_predict(state, which, image)
            table = gr.Dataframe(
                value=empty_table(), label="All probabilities", elem_id="table", max_height=300
            )
    button.click(
        partial(run_predict, served),
        [files, picked, source, custom, threshold, tta, tuned],
        [message, image, plot, table, which, state],
        api_name="predict",
    )
    which.change(redraw, [state, which, threshold], [image, plot], api_name=False)
    threshold.release(redraw, [state, which, threshold], [image, plot], api_name=False)
    return PredictTab(source, custom)
