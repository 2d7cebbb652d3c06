"""The Fine-tune tab: one job at a time, within limits; everything a job writes is removed when it ends."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import plotly.graph_objects as go

from app import finetune as ft
from app import text
from app.label_sources import CUSTOM
from app.limits import LR_MAX, LR_MIN, MAX_EPOCHS, MAX_FT_IMAGES, MAX_LABELS, MAX_SECONDS
from app.memory import release_soon
from app.models import ServedModels
from capnet.data import DataError

WORKDIR_PREFIX = "capnet-ft-"
PROGRESS = gr.Progress()  # Gradio replaces this default with each job's own progress tracker
SHOWN_CLASSES = 12


@dataclass
class FinetuneTab:
    job: object  # the start event: the demo chains the Predict tab's update on it


def _paths(files) -> list[str]:
    return [f if isinstance(f, str) else f.name for f in files or []]


def _curve(losses: list[float]) -> go.Figure:
    fig = go.Figure(go.Scatter(x=list(range(1, len(losses) + 1)), y=losses, mode="lines+markers"))
    fig.update_layout(
        title="training loss", xaxis_title="epoch", height=300, margin=dict(l=10, r=10, t=40, b=10)
    )
    return fig


def _classes(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN_CLASSES]) + (
        f" and {len(names) - SHOWN_CLASSES} more" if len(names) > SHOWN_CLASSES else ""
    )
    return f"{len(names)} classes: {shown}"


def _job(workdir: Path, archive, images, labels_text, use_sample) -> ft.Job:
    if use_sample:
        return ft.bundled_sample(workdir / "data")
    if archive is not None:
        return ft.job_from_zip(_paths([archive])[0], workdir / "data")
    return ft.job_from_images(_paths(images), labels_text)


def run_finetune(
    served: ServedModels,
    archive,
    images,
    labels_text,
    use_sample,
    parts,
    epochs,
    lr,
    loss,
    *,
    owner: str,
    progress=None,
) -> Iterator[tuple]:
    """Yields (status, loss curve, checkpoint, tuned model). The job's folder is gone when this returns."""
    ticket = ft.SLOT.try_start(owner)
    if ticket is None:
        mine = ft.SLOT.held_by(owner)
        message = (
            "A fine-tune of yours is already running."
            if mine
            else "Another fine-tune is running on this server; try again shortly."
        )
        yield text.error(message), None, None, None
        return
    workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
    upload_dirs = {str(Path(p).parent) for p in _paths(images) + _paths([archive] if archive else [])}
    last = None  # a refusal or cancellation is shown only once the job's folder and slot are freed
    try:
        yield "Preparing the data and the model…", None, None, None
        ft.check_settings(set(parts or []), epochs, lr, loss)
        job = _job(workdir, archive, images, labels_text, use_sample)
        skipped = ""
        if job.problems:
            where = (workdir / "data", workdir, *upload_dirs)
            names = ", ".join(text.public(p, *where).split(":")[0] for p in job.problems[:5])
            skipped = f" Skipped {len(job.problems)} unusable file(s): {names}."
        factory = ft.default_backbone_factory(served.backbone)
        updates = ft.run_job(
            job,
            factory,
            parts=set(parts),
            epochs=epochs,
            lr=lr,
            loss=loss,
            ticket=ticket,
            workdir=workdir / "run",
        )
        for update in updates:
            if progress is not None:
                progress((update.epoch, update.epochs), desc="fine-tuning", unit="epoch")
            status = text.md(
                f"{update.message}.{skipped} ({len(job.records)} images, {_classes(job.records.class_names)})"
            )
            checkpoint = str(update.checkpoint) if update.checkpoint else None
            # Gradio copies the checkpoint into its own cache as this is sent: the folder may go after.
            yield status, _curve(update.losses), checkpoint, update.model
    except DataError as exc:
        message = text.public(str(exc), workdir / "data", workdir, *upload_dirs)
        last = text.error(text.md(message)), None, None, None
    except ft.Cancelled as exc:
        last = text.error(text.md(f"Cancelled {exc}.")), gr.update(), None, None
    finally:
        ft.SLOT.finish(ticket)
        ft.remove_tree(workdir)
        release_soon()
    if last is not None:
        yield last


def cancel_finetune(owner: str) -> str:
    if ft.SLOT.cancel(owner):
        return "Cancelling: the fine-tune stops before its next step."
    return "Nothing to cancel."


def after_finetune(tuned):
    """A finished fine-tune's label set goes to the Predict tab, where the tuned model then serves."""
    if tuned is None:
        return gr.update(), gr.update()
    return gr.update(value=CUSTOM), gr.update(value=", ".join(tuned.class_names))


def build(served: ServedModels, tuned: gr.State) -> FinetuneTab:
    with gr.Row():
        with gr.Column(scale=1):
            archive = gr.File(
                label="A zip of images + one CSV (path,labels; labels separated by ';')",
                file_types=[".zip"],
                elem_id="ft-zip",
            )
            images = gr.File(label="…or images", file_count="multiple", elem_id="ft-images")
            labels = gr.Textbox(
                label="…with labels, one line per image (e.g. cat;dog)", lines=3, elem_id="ft-labels"
            )
            use_sample = gr.Checkbox(
                label="Use the bundled sample (80 synthetic images)", value=False, elem_id="ft-sample"
            )
            parts = gr.CheckboxGroup(
                list(ft.PARTS), value=["prompts", "gcn"], label="What trains", elem_id="ft-parts"
            )
            epochs = gr.Slider(1, MAX_EPOCHS, value=3, step=1, label="Epochs", elem_id="ft-epochs")
            # No minimum/maximum here: Gradio would refuse out-of-range numbers with its own bare badge.
            lr = gr.Number(value=0.003, label=f"Learning rate ({LR_MIN:g} to {LR_MAX:g})", elem_id="ft-lr")
            loss = gr.Radio(list(ft.LOSSES), value="dbfocal", label="Loss")
            with gr.Row():
                start = gr.Button("Fine-tune", variant="primary", elem_id="ft-start")
                cancel = gr.Button("Cancel", elem_id="ft-cancel")
        with gr.Column(scale=2):
            status = gr.Markdown(elem_id="ft-status")
            curve = gr.Plot(label="Loss", elem_id="ft-curve")
            download = gr.File(label="Tuned checkpoint (safetensors)", elem_id="ft-download")
            gr.Markdown(
                f"Limits: {MAX_FT_IMAGES} images, {MAX_LABELS} classes, {MAX_EPOCHS} epochs, "
                f"{MAX_SECONDS} s, one job at a time. The tuned model appears in the Predict tab for its "
                "label set."
            )

    def start_job(
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
        yield from run_finetune(
            served,
            archive,
            images,
            labels_text,
            use_sample,
            parts,
            epochs,
            lr,
            loss,
            owner=request.session_hash,
            progress=progress,
        )

    def cancel_job(request: gr.Request):
        gr.Info(cancel_finetune(request.session_hash))

    job = start.click(
        start_job,
        [archive, images, labels, use_sample, parts, epochs, lr, loss],
        [status, curve, download, tuned],
        api_name="finetune",
    )
    cancel.click(cancel_job, None, None, api_name="cancel")
    return FinetuneTab(job)
