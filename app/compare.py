"""CAPNET beside zero-shot: which models answer a label set in the Predict tab."""

from __future__ import annotations

from app.models import ServedModels
from app.predict import zero_shot_model
from capnet.model import CapNet

CAPNET = "CAPNET"
FINE_TUNED = "fine-tuned"
ZERO_SHOT = "zero-shot"


def models_for(
    served: ServedModels, labels: tuple[str, ...], tuned: CapNet | None = None
) -> dict[str, CapNet]:
    """Every model that knows exactly these labels, trained first, then zero-shot (always, calibrated).

    The served checkpoint answers whenever the labels are its classes, whichever source named them
    (its own list, or the synthetic world's scene classes it was trained on).
    """
    models: dict[str, CapNet] = {}
    trained = served.trained_for(labels)
    if trained is not None:
        models[CAPNET] = trained
    if tuned is not None and tuple(tuned.class_names) == tuple(labels):
        models[FINE_TUNED] = tuned
    models[ZERO_SHOT] = zero_shot_model(served, tuple(labels))
    return models
