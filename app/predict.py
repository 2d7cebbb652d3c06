"""Prediction for the app: label parsing, image intake with limits, ranked probabilities and their chart."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import torch
from PIL import Image

from app.models import ServedModels
from capnet.images import ImageError, load_image
from capnet.labelsets import PRESETS
from capnet.model import CapNet, validate_class_names

MAX_IMAGES = 16
MAX_LABELS = 200
SAMPLE_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle")


def sample_photos() -> dict[str, Image.Image]:
    """Real photos that ship with scikit-image (no download needed)."""
    from skimage import data

    arrays = {
        "astronaut": data.astronaut(),
        "chelsea": data.chelsea(),
        "coffee": data.coffee(),
        "rocket": data.rocket(),
        "motorcycle": data.stereo_motorcycle()[0],
    }
    return {name: Image.fromarray(arr).convert("RGB") for name, arr in arrays.items()}


def parse_labels(preset: str, custom: str) -> tuple[str, ...]:
    """A preset's classes, or user-typed names separated by commas or new lines."""
    if preset in PRESETS:
        return PRESETS[preset]
    names = [n for n in re.split(r"[,\n;]", custom or "") if n.strip()]
    if len(names) > MAX_LABELS:
        raise ValueError(f"{len(names)} labels given; at most {MAX_LABELS} are served")
    return tuple(validate_class_names(names))


def read_uploads(paths: Sequence[str | Path]) -> tuple[list[tuple[str, Image.Image]], list[str]]:
    """Decoded images and one message per file that could not be used."""
    images, problems = [], []
    for path in list(paths)[:MAX_IMAGES]:
        try:
            images.append((Path(path).name, load_image(path)))
        except ImageError as exc:
            problems.append(str(exc))
    if len(paths) > MAX_IMAGES:
        problems.append(f"only the first {MAX_IMAGES} of {len(paths)} images were used")
    return images, problems


@dataclass
class Prediction:
    table: pd.DataFrame  # one row per (image, label)
    models: list[str]


def _probabilities(model: CapNet, images: list[Image.Image], tta: bool) -> torch.Tensor:
    transform = model.image_transform(tta=tta)
    return model.predict(torch.stack([transform(im) for im in images])).cpu()


def calibrate_zero_shot(model: CapNet, references: list[Image.Image], labels_per_image: float = 2.0) -> None:
    """A flat prior (labels per image / classes) over reference photos: see the README on calibration."""
    transform = model.image_transform()
    feats = model.encode_image(torch.stack([transform(im) for im in references]))
    model.calibrate(feats, min(0.5, labels_per_image / model.num_classes))


def predict(
    served: ServedModels,
    images: list[tuple[str, Image.Image]],
    labels: tuple[str, ...],
    *,
    tta: bool = False,
) -> Prediction:
    models: dict[str, CapNet] = {}
    if served.trained is not None and tuple(served.trained.class_names) == labels:
        models["CAPNET"] = served.trained
    zero_shot = served.zero_shot(labels)
    if not getattr(zero_shot, "app_calibrated", False):
        calibrate_zero_shot(zero_shot, list(sample_photos().values()))
        zero_shot.app_calibrated = True
    models["zero-shot"] = zero_shot
    rows = []
    pil = [im for _, im in images]
    for model_name, model in models.items():
        probs = _probabilities(model, pil, tta)
        for (image_name, _), row in zip(images, probs):
            for label, p in zip(labels, row.tolist()):
                rows.append({"image": image_name, "model": model_name, "label": label, "probability": p})
    table = pd.DataFrame(rows).sort_values(["image", "model", "probability"], ascending=[True, True, False])
    return Prediction(table.reset_index(drop=True), list(models))


def bar_chart(prediction: Prediction, image: str, threshold: float, top: int = 15) -> go.Figure:
    """Ranked labels of one image, one bar series per model, with the decision threshold drawn in."""
    fig = go.Figure()
    part = prediction.table[prediction.table.image == image]
    order = part.groupby("label").probability.max().sort_values(ascending=False).index[:top][::-1]
    for model_name in prediction.models:
        rows = part[part.model == model_name].set_index("label").loc[order]
        fig.add_bar(
            y=list(order),
            x=rows.probability,
            orientation="h",
            name=model_name,
            hovertemplate="%{y}: %{x:.3f}<extra>" + model_name + "</extra>",
        )
    fig.add_vline(x=threshold, line_dash="dash", annotation_text=f"threshold {threshold:.2f}")
    fig.update_layout(
        barmode="group",
        xaxis=dict(range=[0, 1], title="probability"),
        height=120 + 28 * len(order),
        margin=dict(l=10, r=10, t=30, b=10),
        title=image,
        legend=dict(orientation="h"),
    )
    return fig
