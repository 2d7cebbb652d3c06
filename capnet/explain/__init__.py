"""Why did it miss? Evidence maps and label-graph attribution for one image and one class."""

from capnet.explain.attribution import EdgeEffect, GraphAttribution, graph_attribution, unavailable_reason
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
    "EdgeEffect",
    "GraphAttribution",
    "EvidenceMap",
    "colormap",
    "dense_features",
    "evidence_maps",
    "fast_maps",
    "graph_attribution",
    "mass_inside",
    "model_view",
    "occlusion_maps",
    "overlay",
    "unavailable_reason",
]
