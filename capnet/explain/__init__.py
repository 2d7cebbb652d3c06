"""Why did it miss? Evidence maps and label-graph attribution for one image and one class."""

from capnet.explain.maps import (
    DenseFeatures,
    EvidenceMap,
    dense_features,
    evidence_maps,
    fast_maps,
    mass_inside,
    model_view,
    occlusion_maps,
)
from capnet.explain.overlay import colormap, overlay

__all__ = [
    "DenseFeatures",
    "EvidenceMap",
    "colormap",
    "dense_features",
    "evidence_maps",
    "fast_maps",
    "mass_inside",
    "model_view",
    "occlusion_maps",
    "overlay",
]
