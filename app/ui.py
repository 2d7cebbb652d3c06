"""The Gradio layout: one tab per module of app/tabs, the state they share, and the edges between them."""

from __future__ import annotations

import gradio as gr

from app.limits import CACHE_SWEEP
from app.models import ServedModels
from app.tabs import dashboard, finetune, graph, predict

CSS = (
    "#banner {border-left: 4px solid #ff7f0e; padding-left: 8px} .error {color: #b00020} "
    "#sample-gallery {min-height: 0}"
)


def build_demo(served: ServedModels) -> gr.Blocks:
    """Gradio's cache (uploads, outputs) is swept on a schedule: no upload stays past CACHE_SWEEP's age."""
    with gr.Blocks(title="capnet", delete_cache=CACHE_SWEEP) as demo:
        gr.Markdown("# capnet · long-tailed multi-label recognition with CLIP")
        gr.Markdown(served.banner, elem_id="banner")
        tuned = gr.State()  # the last fine-tuned model of this browser session, served in Predict
        with gr.Tab("Predict", id="predict-tab"):
            predict_tab = predict.build(served, tuned)
        with gr.Tab("Label graph", id="graph-tab"):
            graph_tab = graph.build(served)
        with gr.Tab("Head vs tail", id="dashboard-tab"):
            dashboard_tab = dashboard.build(served)
        with gr.Tab("Fine-tune", id="finetune-tab"):
            finetune_tab = finetune.build(served, tuned)
        finetune_tab.job.then(finetune.after_finetune, [tuned], [predict_tab.source, predict_tab.custom])
        demo.load(graph_tab.refresh, graph_tab.inputs, graph_tab.outputs, api_name=False)
        demo.load(dashboard_tab.show, dashboard_tab.inputs, dashboard_tab.outputs, api_name=False)
    return demo
