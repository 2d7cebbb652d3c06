"""Label-graph attribution: how much each neighbour in the label graph moved a class's logit on an image.

The GCN spreads evidence between classes, so a tail class can be predicted because a neighbour is
present. For one class and one image this reports three logits and one change per neighbour:

- ``logit_without_gcn``: the prompts' features alone, as if the model had no GCN;
- ``logit_without_edges``: the GCN run on the graph with every edge removed, so each class sees only
  itself. It differs from the first whenever the GCN is trained, because the residual GCN also transforms
  a class's own feature (its self-loop): ``f + g(f, I)`` with ``g != 0``. Removing every edge therefore
  gives this logit exactly, not the no-GCN one; the gap between the two is the GCN's own-feature effect;
- ``logit``: the model's logit (the GCN on the full graph);
- for each neighbour ``j`` of the class: ``logit - logit(graph without the edge (c, j))``, where the graph
  without the edge is rebuilt from the same edge weights with that edge dropped and renormalised by the
  graph module's own ``normalise`` (``LabelGraph.without_edges``). Positive: the edge raised the logit.

With an untrained GCN (last layer zero) the residual is zero whatever the graph, so all three logits are
equal and every change is exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from capnet.backbone import autocast
from capnet.explain.maps import class_indices
from capnet.model import CapNet


@dataclass
class EdgeEffect:
    """One neighbour's edge: its weight in the graph and the logit change it causes."""

    neighbour: str
    weight: float
    change: float

    def text(self) -> str:
        verb = "rose" if self.change > 0 else "fell" if self.change < 0 else "did not move"
        amount = f" by {abs(self.change):.2g}" if self.change else ""
        return f"{verb}{amount} because of `{self.neighbour}`"


@dataclass
class GraphAttribution:
    class_name: str
    logit_without_gcn: float
    logit_without_edges: float
    logit: float
    edges: list[EdgeEffect] = field(default_factory=list)  # largest absolute change first

    @property
    def probability(self) -> float:
        return float(torch.sigmoid(torch.tensor(self.logit)))

    def lines(self) -> list[str]:
        """One line per neighbour, e.g. "rose by 2.1 because of `horse`" (names are user text: escape them
        where they are rendered as markup)."""
        return [edge.text() for edge in self.edges]

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": self.class_name,
            "logit_without_gcn": self.logit_without_gcn,
            "logit_without_edges": self.logit_without_edges,
            "logit": self.logit,
            "probability": self.probability,
            "edges": [
                {"neighbour": e.neighbour, "weight": e.weight, "change": e.change, "text": e.text()}
                for e in self.edges
            ],
        }


def unavailable_reason(model: CapNet) -> str | None:
    """Why a model has no graph attribution (None when it has one): a sentence for the user."""
    if model.zero_shot or model.graph is None:
        return "graph attribution needs a trained CAPNET model: a zero-shot model has no label graph"
    if model.gcn is None:
        return "graph attribution needs a GCN: this model was built with the GCN disabled"
    return None


@torch.no_grad()
def graph_attribution(model: CapNet, image_features: torch.Tensor, cls: int | str) -> GraphAttribution:
    """The attribution of class ``cls`` (name or index) on one image, from its (E,) or (1, E) feature."""
    reason = unavailable_reason(model)
    if reason:
        raise ValueError(reason)
    graph, gcn = model.graph, model.gcn
    if not torch.allclose(graph.adjacency.to(model.adjacency), model.adjacency, atol=1e-6):
        raise ValueError("the model's label graph no longer matches the adjacency its GCN uses")
    (c,) = class_indices(model, [cls])
    image = F.normalize(image_features.float().reshape(-1).to(model.device), dim=-1)
    with autocast(model.device):
        prompts = model.prompts().float()

    def logit(adjacency: torch.Tensor | None) -> float:
        feats = prompts
        if adjacency is not None:
            with autocast(model.device):
                feats = gcn(prompts, adjacency.to(model.device))
        feature = F.normalize(feats[c].float(), dim=-1)
        return float(model.scale * image @ feature + model.class_bias[c])

    neighbours = graph.neighbours(c)
    full = logit(model.adjacency)
    everything = [(i, j) for i in range(model.num_classes) for j in graph.neighbours(i) if i < j]
    edges = [
        EdgeEffect(
            neighbour=model.class_names[j],
            weight=float(graph.weights[c, j]),
            change=full - logit(graph.without_edges([(c, j)]).adjacency),
        )
        for j in neighbours
    ]
    edges.sort(key=lambda e: (-abs(e.change), e.neighbour))
    return GraphAttribution(
        class_name=model.class_names[c],
        logit_without_gcn=logit(None),
        logit_without_edges=logit(graph.without_edges(everything).adjacency),
        logit=full,
        edges=edges,
    )
