"""The evidence-map panel under Predict's image and under the failure gallery: click an image, see its map."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import gradio as gr

from app import explain_view as view
from app import text
from app.limits import EXPLAIN_SIDE
from app.models import ServedModels

HINT = "Click the image to see where the served model finds a class"


@dataclass
class Panel:
    model: gr.Dropdown
    klass: gr.Dropdown
    method: gr.Radio
    view: gr.Image
    overlay: gr.Image
    summary: gr.Markdown
    graph: gr.Markdown

    @property
    def shown(self) -> list:
        return [self.view, self.overlay, self.summary, self.graph]


def panel(prefix: str, hint: str, with_model: bool) -> Panel:
    gr.Markdown(f"**Why?** {hint}.", elem_id=f"{prefix}-hint")
    with gr.Row():
        seen = gr.Image(
            label="What the model saw",
            type="pil",
            interactive=False,
            height=EXPLAIN_SIDE,
            elem_id=f"{prefix}-view",
        )
        drawn = gr.Image(
            label="Evidence map", type="pil", interactive=False, height=EXPLAIN_SIDE, elem_id=f"{prefix}-map"
        )
        with gr.Column():
            model = gr.Dropdown(label="Model", choices=[], visible=with_model, elem_id=f"{prefix}-model")
            klass = gr.Dropdown(label="Class", choices=[], elem_id=f"{prefix}-class")
            method = gr.Radio(
                list(view.METHODS), value=next(iter(view.METHODS)), label="Map", elem_id=f"{prefix}-method"
            )
            summary = gr.Markdown(elem_id=f"{prefix}-summary")
            graph = gr.Markdown(elem_id=f"{prefix}-graph")
    return Panel(model, klass, method, seen, drawn, summary, graph)


def _show(model_name, model, image, class_name, method) -> tuple:
    try:
        e = view.explain(model, image, class_name, view.METHODS.get(method, "fast"))
    except ValueError as exc:
        return None, None, text.error(text.md(exc)), ""
    return e.view, e.overlay, e.summary(model_name), e.graph()


def _cleared() -> tuple:
    return gr.update(), gr.update(choices=[], value=None), None, None, "", ""


# ------------------------------------------------------------------------------------- Predict tab


def predict_show(shown, image_name, model_name, class_name, method):
    """(model picker, class picker, view, map, summary, graph); the top class when none is chosen."""
    if shown is None or image_name not in shown.previews or not shown.models:
        return (gr.update(), gr.update(), None, None, "Predict first, then click the image.", "")
    model_name = model_name if model_name in shown.models else next(iter(shown.models))
    classes = view.ranked_classes(shown.result, image_name, model_name)
    class_name = class_name if class_name in classes else classes[0]
    model, image = shown.models[model_name], shown.previews[image_name]
    return (
        gr.update(choices=list(shown.models), value=model_name),
        gr.update(choices=classes, value=class_name),
        *_show(model_name, model, image, class_name, method),
    )


def attach_to_predict(state: gr.State, which: gr.Dropdown, image: gr.Image) -> None:
    """Clicking Predict's image shows its map for its top class; the pickers redraw it."""
    p = panel("explain", f"{HINT} (the top class first)", with_model=True)
    outputs = [p.model, p.klass, *p.shown]
    image.select(
        lambda s, w, m, meth: predict_show(s, w, m, None, meth),
        [state, which, p.model, p.method],
        outputs,
        api_name=False,
    )
    p.model.input(
        lambda s, w, m, meth: predict_show(s, w, m, None, meth),
        [state, which, p.model, p.method],
        outputs,
        api_name=False,
    )
    for picker in (p.klass, p.method):
        picker.input(predict_show, [state, which, p.model, p.klass, p.method], outputs, api_name=False)
    which.change(_cleared, None, outputs, api_name=False)


# ----------------------------------------------------------------------------------- failure gallery


def gallery_show(served: ServedModels, runs, run_name, class_name, method, raw):
    """(class picker, view, map, summary, graph) of one gallery image, the gallery's class by default."""
    run = next((r for r in runs or [] if r.name == run_name), None)
    if run is None or not raw or not class_name:
        return gr.update(), None, None, "", ""
    try:
        image = view.gallery_image(run, raw)
        model_name, model = view.gallery_model(served, run, class_name)
    except ValueError as exc:
        return gr.update(), None, None, text.error(text.md(exc)), ""
    picker = gr.update(choices=list(model.class_names), value=class_name)
    return picker, *_show(model_name, model, image, class_name, method)


def gallery_click(served, runs, run_name, class_name, method, cases, evt: gr.SelectData):
    """(the clicked image's path, then gallery_show's outputs)."""
    raw = cases[evt.index] if cases and isinstance(evt.index, int) and evt.index < len(cases) else None
    return raw, *gallery_show(served, runs, run_name, class_name, method, raw)


def attach_to_gallery(served: ServedModels, runs, run_choice, class_choice, gallery, cases) -> None:
    """Clicking a gallery image shows its map for the gallery's class (another class: the picker)."""
    p = panel("gallery-explain", f"{HINT} (the failing class first)", with_model=False)
    clicked = gr.State()

    def click(runs, run_name, class_name, method, cases, evt: gr.SelectData):  # gradio reads this hint
        return gallery_click(served, runs, run_name, class_name, method, cases, evt)

    inputs = [runs, run_choice, class_choice, p.method, cases]
    gallery.select(click, inputs, [clicked, p.klass, *p.shown], api_name=False)
    redraw = partial(gallery_show, served)
    for picker in (p.klass, p.method):
        picker.input(
            redraw, [runs, run_choice, p.klass, p.method, clicked], [p.klass, *p.shown], api_name=False
        )
