"""Prediction for the app: label parsing, image intake with limits, ranked probabilities and their chart."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from PIL import Image

from app import text
from app.graph_view import GROUP_COLOURS
from app.limits import DECODE_SIDE, MAX_IMAGES, MAX_LABELS, MAX_PIXELS
from app.models import ServedModels
from capnet.calibration import ReferenceSet, calibrate_zero_shot, choose_reference
from capnet.images import ImageError, load_image
from capnet.labelsets import PRESETS
from capnet.metrics import class_groups
from capnet.model import CapNet, validate_class_names
from capnet.world.pretrain import MODEL_NAME
from capnet.world.scenes import reference_scenes, scene_batch


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


def samples_for(served: ServedModels) -> dict[str, Image.Image]:
    """The Predict tab's samples: scenes of the synthetic world when its model is served, else photos."""
    if not hasattr(served, "_samples"):
        if served.world:
            images, _, captions = scene_batch(6, seed=4242)
            served._samples = {f"scene {i + 1}": im for i, im in enumerate(images)}
        else:
            served._samples = sample_photos()
    return served._samples


def parse_labels(preset: str, custom: str) -> tuple[str, ...]:
    """A preset's classes, or user-typed names separated by commas or new lines."""
    if preset in PRESETS:
        return PRESETS[preset]
    names = [n for n in re.split(r"[,\n;]", custom or "") if n.strip()]
    if len(names) > MAX_LABELS:
        raise ValueError(f"{len(names)} labels given; at most {MAX_LABELS} are served")
    return tuple(validate_class_names(names))


def unique_names(names: Sequence[str], taken: Sequence[str] = ()) -> list[str]:
    """Names told apart ("a.png", "a.png (2)"): two uploads of one name are still two images."""
    seen, out = dict.fromkeys(taken, 1), []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def over_the_limit(names: Sequence[str], limit: int = MAX_IMAGES) -> str | None:
    """The message naming the images past ``limit``, or None when all fit."""
    if len(names) <= limit:
        return None
    left = list(names[limit:])
    shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
    return f"at most {limit} images per prediction: {shown} left out"


def read_uploads(
    paths: Sequence[str | Path], limit: int = MAX_IMAGES
) -> tuple[list[tuple[str, Image.Image]], list[str]]:
    """Decoded images (reduced to what the model needs) and one message per file that could not be used.

    Gradio stores each upload under the name the user's file had, so messages name that, not our path.
    """
    images, problems = [], []
    names = unique_names([Path(p).name for p in paths])
    for path, name in zip(list(paths)[:limit], names):
        try:
            images.append((name, load_image(path, max_pixels=MAX_PIXELS, name=name, min_side=DECODE_SIDE)))
        except ImageError as exc:
            problems.append(str(exc))
    extra = over_the_limit(names, limit)
    if extra:
        problems.append(extra)
    return images, problems


@dataclass
class Prediction:
    table: pd.DataFrame  # one row per (image, model, label)
    models: list[str]
    groups: dict[str, str]  # label -> head / medium / tail, where training counts are known


def _probabilities(model: CapNet, images: list[Image.Image], tta: bool) -> torch.Tensor:
    transform = model.image_transform(tta=tta)
    with torch.inference_mode():
        batch = torch.stack([transform(im) for im in images])
        return model.predict(batch).cpu().clone()


def calibration_reference(served: ServedModels) -> ReferenceSet:
    """The reference set of every zero-shot label set served, chosen as ``capnet predict`` chooses it."""
    if not hasattr(served, "_reference"):
        world = served.world or served.backbone.config.name == MODEL_NAME
        served._reference = choose_reference(scenes=reference_scenes if world else None)
    return served._reference


def zero_shot_model(served: ServedModels, labels: tuple[str, ...]) -> CapNet:
    """The served zero-shot model of ``labels``, calibrated once (its ``calibration`` says how)."""
    model = served.zero_shot(labels)
    if getattr(model, "calibration", None) is None:
        model.calibration = calibrate_zero_shot(model, calibration_reference(served))
    return model


def predict(
    models: dict[str, CapNet],
    images: list[tuple[str, Image.Image]],
    *,
    tta: bool = False,
    counts: np.ndarray | None = None,
) -> Prediction:
    """Probabilities of every model for every image; all models share one label set."""
    labels = list(next(iter(models.values())).class_names)
    rows = []
    pil = [im for _, im in images]
    for model_name, model in models.items():
        probs = _probabilities(model, pil, tta)
        for (image_name, _), row in zip(images, probs):
            for label, p in zip(labels, row.tolist()):
                rows.append({"image": image_name, "model": model_name, "label": label, "probability": p})
    table = pd.DataFrame(rows).sort_values(["image", "model", "probability"], ascending=[True, True, False])
    groups = dict(zip(labels, class_groups(counts))) if counts is not None else {}
    return Prediction(table.reset_index(drop=True), list(models), groups)


def bar_chart(prediction: Prediction, image: str, threshold: float, top: int = 20) -> go.Figure:
    """Ranked labels of one image: bars coloured by head/medium/tail where known, hatched for zero-shot.

    Every model's bar of a label sits beside the others (CAPNET beside zero-shot); 20 labels show every
    class of VOC and of the synthetic world.
    """
    fig = go.Figure()
    part = prediction.table[prediction.table.image == image]
    order = part.groupby("label").probability.max().sort_values(ascending=False).index[:top][::-1]
    for model_name in prediction.models:
        rows = part[part.model == model_name].set_index("label").loc[order]
        colours = [GROUP_COLOURS[prediction.groups.get(label)] for label in order]
        fig.add_bar(
            y=[
                text.plot(f"{label} ({prediction.groups[label]})" if label in prediction.groups else label)
                for label in order
            ],
            x=rows.probability,
            orientation="h",
            name=model_name,
            marker=dict(color=colours, pattern_shape="/" if model_name == "zero-shot" else ""),
            hovertemplate="%{y}: %{x:.3f}<extra>" + model_name + "</extra>",
        )
    fig.add_vline(
        x=threshold,
        line_dash="dash",
        annotation_text=f"threshold {threshold:.2f}",
        annotation_position="bottom right",
    )
    fig.update_layout(
        barmode="group",
        xaxis=dict(range=[0, 1], title="probability"),
        height=160 + len(order) * (10 + 18 * max(1, len(prediction.models))),
        margin=dict(l=10, r=10, t=40, b=10),
        title=text.plot(image),
        legend=dict(orientation="h", y=-0.12),
    )
    return fig
