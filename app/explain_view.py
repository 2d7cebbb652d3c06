"""Why did it miss? in the app: one image's evidence map for one class and, for CAPNET, its graph attribution.

The Predict tab and the dashboard's failure gallery both end here; this module chooses the model and
the default class, calls ``capnet.explain`` and turns its results into what the page shows (an overlay
with a colour bar, and Markdown with every user text escaped).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from app import text
from app.dashboard import Run
from app.limits import DECODE_SIDE, EXPLAIN_EDGES, EXPLAIN_GRID, EXPLAIN_SIDE, MAX_PIXELS
from app.models import ServedModels
from app.predict import Prediction, zero_shot_model
from capnet.explain import (
    EvidenceMap,
    GraphAttribution,
    evidence_maps,
    graph_attribution,
    model_view,
    overlay,
    unavailable_reason,
)
from capnet.explain.maps import METHODS as MAP_MEANINGS
from capnet.images import ImageError, load_image
from capnet.model import CapNet

# What the method picker says -> capnet.explain's method.
METHODS = {"fast map": "fast", f"occlusion {EXPLAIN_GRID}x{EXPLAIN_GRID} (slower)": "occlusion"}
CAPNET = "CAPNET"
ZERO_SHOT = "zero-shot"


@dataclass
class Explanation:
    view: Image.Image  # what the model saw (its centre crop), at EXPLAIN_SIDE
    overlay: Image.Image  # the map over that view, with its colour bar
    evidence: EvidenceMap
    attribution: GraphAttribution | None
    absent: str | None  # why there is no graph attribution, when there is none

    def summary(self, model_name: str) -> str:
        e = self.evidence
        lo, hi = float(e.grid.min()), float(e.grid.max())
        return (
            f"**{text.md(e.class_name)}**: p = {e.probability:.3f} on the image shown "
            f"({text.md(model_name)}). "
            f"Map: {text.md(MAP_MEANINGS[e.method])}, on a {e.grid.shape[0]}x{e.grid.shape[1]} grid; "
            f"colour bar from {lo:.3g} to {hi:.3g}."
        )

    def graph(self) -> str:
        return graph_markdown(self.attribution, self.absent)


def graph_markdown(attribution: GraphAttribution | None, absent: str | None) -> str:
    """The three logits and the largest per-neighbour changes, or one line saying why there are none."""
    if attribution is None:
        return f"Label graph: no attribution ({text.md(absent or 'not computed')})."
    a = attribution
    head = (
        f"**Label graph** ({text.md(a.class_name)}): logit {a.logit_without_gcn:.3f} without the GCN, "
        f"{a.logit_without_edges:.3f} with no edges, {a.logit:.3f} with the full graph."
    )
    if not a.edges:
        return head + "<br>No neighbour in the label graph: no edge moved it."
    lines = [f"- {text.md(line)}" for line in a.lines()[:EXPLAIN_EDGES]]
    if len(a.edges) > EXPLAIN_EDGES:
        rest = len(a.edges) - EXPLAIN_EDGES
        lines.append(f"- and {rest} smaller change{'s' if rest > 1 else ''}")
    return head + " Removing one neighbour's edge, largest change first:\n\n" + "\n".join(lines)


def explain(model: CapNet, image: Image.Image, class_name: str, method: str = "fast") -> Explanation:
    """The evidence map of ``class_name`` on ``image``; for a CAPNET model also its graph attribution.

    ValueError (one line) for a class the model does not have or an unknown method.
    """
    if method not in MAP_MEANINGS:
        raise ValueError(f"unknown map method '{method}'")
    if class_name not in model.class_names:
        raise ValueError(f"'{class_name}' is not one of the model's classes")
    view, (evidence,) = evidence_maps(model, image, [class_name], method=method, grid=EXPLAIN_GRID)
    title = f"{class_name}  p={evidence.probability:.3f}"
    drawn = overlay(view, evidence.grid, size=EXPLAIN_SIDE, title=title)
    absent = unavailable_reason(model)
    attribution = None
    if absent is None:
        _, tensor = model_view(model, image)
        with torch.inference_mode():
            feature = model.encode_image(tensor.to(model.device))[0]
        attribution = graph_attribution(model, feature, class_name)
    shown = view.resize(
        (EXPLAIN_SIDE, round(EXPLAIN_SIDE * view.height / view.width)), Image.Resampling.BICUBIC
    )
    return Explanation(shown, drawn, evidence, attribution, absent)


# ------------------------------------------------------------------------------------- Predict tab


def ranked_classes(prediction: Prediction, image: str, model_name: str) -> list[str]:
    """The labels of one image as one model ranked them, most probable first."""
    rows = prediction.table[(prediction.table.image == image) & (prediction.table.model == model_name)]
    return rows.sort_values("probability", ascending=False, kind="stable").label.tolist()


# ----------------------------------------------------------------------------------- failure gallery


def gallery_model(served: ServedModels, run: Run, class_name: str) -> tuple[str, CapNet]:
    """The served CAPNET when it knows the class, else zero-shot over the report's classes."""
    if served.trained is not None and class_name in served.trained.class_names:
        return CAPNET, served.trained
    return ZERO_SHOT, zero_shot_model(served, tuple(run.report["class_names"]))


def gallery_image(run: Run, raw: str) -> Image.Image:
    """A gallery image at full size, read only from the run's own files (ValueError when it is not there)."""
    data = run.files.read(raw)
    if data is None:
        raise ValueError(f"{Path(raw).name}: image not in the report")
    try:
        return load_image(data, max_pixels=MAX_PIXELS, name=Path(raw).name, min_side=DECODE_SIDE)
    except ImageError as exc:
        raise ValueError(str(exc)) from None
