"""The label sets the Predict and Label graph tabs offer, and the training counts known for each."""

from __future__ import annotations

import numpy as np

from app.models import ServedModels
from app.predict import parse_labels
from app.splits import official_training_labels
from capnet.labelsets import PRESETS
from capnet.world.scenes import SCENE_CLASSES

CUSTOM = "Custom"
SCENES = "Scenes (synthetic)"
CHECKPOINT = "Checkpoint classes"


def label_sources(served: ServedModels) -> list[str]:
    return (
        ([CHECKPOINT] if served.trained else [])
        + ([SCENES] if served.world else [])
        + list(PRESETS)
        + [CUSTOM]
    )


def labels_for(served: ServedModels, source: str, custom: str) -> tuple[str, ...]:
    """The chosen set's class names; ValueError (one line) for a bad custom list."""
    if source == CHECKPOINT and served.trained is not None:
        return tuple(served.trained.class_names)
    if source == SCENES:
        return SCENE_CLASSES
    return parse_labels(source, custom)


def counts_for(served: ServedModels, source: str) -> np.ndarray | None:
    """Training counts of the set: the checkpoint's for its classes (also when named as the scene classes)."""
    if source == CHECKPOINT or (source == SCENES and served.trained_for(SCENE_CLASSES)):
        return served.trained_counts
    labels = official_training_labels(source)
    return None if labels is None else labels.sum(0)
