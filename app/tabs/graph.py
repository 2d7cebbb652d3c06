"""The Label graph tab: a label set's CLIP text-embedding graph, live, against its co-occurrence graph."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import gradio as gr

from app import text
from app.graph_view import (
    build_graph,
    counts_view,
    graph_difference,
    network_figure,
    similarity_heatmaps,
    stats_markdown,
    training_cooccurrence,
)
from app.label_sources import counts_for, label_sources, labels_for
from app.limits import MAX_TOPK
from app.models import ServedModels
from app.predict import zero_shot_model


@dataclass
class GraphTab:
    refresh: object  # the handler, with the inputs and outputs it is wired to (the demo runs it on load)
    inputs: list
    outputs: list


def _bounds_problem(mode, topk, threshold, p) -> str | None:
    if mode not in ("topk", "threshold"):
        return "sparsify by topk or threshold"
    if topk is None or not float(topk).is_integer() or not 0 <= topk <= MAX_TOPK:
        return f"top-k must be a whole number from 0 to {MAX_TOPK}"
    for name, value in (("the similarity threshold", threshold), ("p", p)):
        if value is None or not 0 <= value <= 1:
            return f"{name} must lie between 0 and 1"
    return None


def run_graph(served: ServedModels, source, custom, mode, topk, threshold, p, compare):
    """Returns (message, graph, stats, co-occurrence graph, heatmaps); empty plots are hidden."""
    hidden = gr.update(value=None, visible=False)
    problem = _bounds_problem(mode, topk, threshold, p)
    if problem:
        return text.error(text.md(problem)), None, "", hidden, hidden
    try:
        labels = labels_for(served, source, custom)
    except ValueError as exc:
        return text.error(f"Labels: {text.md(exc)}"), None, "", hidden, hidden
    names = list(labels)
    trained = served.trained_for(labels)
    # The checkpoint's own text features (its templates) for its classes: the graph its GCN was built on.
    feats = (trained or zero_shot_model(served, labels)).text_features
    graph = build_graph(feats, names, mode, topk, threshold, p)
    counts = counts_for(served, source)
    fig = network_figure(graph, counts, "CLIP text-embedding graph")
    stats = stats_markdown(graph, "text-embedding graph")
    cooc_fig = hidden
    if compare:
        train_counts, why = training_cooccurrence(served, source, names)
        if train_counts is None:
            stats += "<br>" + text.error(text.md(why))
        else:
            cooc, cooc_counts, note = counts_view(train_counts, names, mode, topk, threshold, p)
            title = "co-occurrence graph of the long-tailed training set"
            cooc_fig = gr.update(value=network_figure(cooc, cooc_counts, title), visible=True)
            stats += "<br>" + stats_markdown(cooc, "co-occurrence graph") + "<br>" + note
            stats += "<br>" + graph_difference(graph, cooc)
    heat = hidden
    if trained is not None:
        heat = gr.update(value=similarity_heatmaps(trained), visible=True)
    return "", fig, stats, cooc_fig, heat


def build(served: ServedModels, state: gr.State | None = None) -> GraphTab:
    sources = label_sources(served)
    with gr.Row():
        with gr.Column(scale=1):
            source = gr.Radio(
                sources,
                value=sources[0] if served.world or served.trained else "VOC",
                label="Label set",
                elem_id="g-preset",
            )
            custom = gr.Textbox(label="Custom labels", placeholder="cat, dog, person", elem_id="g-custom")
            mode = gr.Radio(["topk", "threshold"], value="topk", label="Sparsify by")
            topk = gr.Slider(0, MAX_TOPK, value=4, step=1, label="top-k neighbours", elem_id="topk")
            threshold = gr.Slider(0, 1, value=0.8, step=0.01, label="similarity threshold")
            p = gr.Slider(0, 1, value=0.2, step=0.05, label="p (mass spread to neighbours)")
            compare = gr.Checkbox(
                label="Compare with the co-occurrence graph of the LT training set",
                value="train_cooccurrence" in served.meta,
                elem_id="compare",
            )
        with gr.Column(scale=3):
            message = gr.Markdown()
            stats = gr.Markdown(elem_id="graph-stats")
            with gr.Row():
                plot = gr.Plot(label="Label graph", elem_id="graph-plot")
                cooc = gr.Plot(label="Co-occurrence graph", visible=False, elem_id="cooc-plot")
            heat = gr.Plot(
                label="Class similarity before / after the GCN", visible=False, elem_id="heat-plot"
            )
    handler = partial(run_graph, served)
    inputs = [source, custom, mode, topk, threshold, p, compare]
    outputs = [message, plot, stats, cooc, heat]
    for control in (source, mode, compare, topk, threshold, p):
        control.change(handler, inputs, outputs, api_name=False)
    custom.submit(handler, inputs, outputs, api_name="graph")
    return GraphTab(handler, inputs, outputs)
