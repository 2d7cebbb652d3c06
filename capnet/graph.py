"""Label-correlation graphs: from CLIP text embeddings (CAPNET) and, for comparison, from co-occurrence.

A long-tailed training set says almost nothing about how a tail class co-occurs (a class with four images
has a meaningless co-occurrence row), while the text embeddings of class names exist for every class.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx
import torch
import torch.nn.functional as F


@dataclass
class LabelGraph:
    """A sparse class graph: the edge pattern, its edge weights and the normalised GCN propagation matrix."""

    weights: torch.Tensor  # (C, C) symmetric, zero diagonal: weight of each kept edge
    adjacency: torch.Tensor  # (C, C) re-weighted and symmetrically normalised, what the GCN multiplies by
    class_names: list[str]
    p: float = 0.2  # the re-weighting ``adjacency`` was normalised with

    def without_edges(self, pairs: Iterable[tuple[int, int]]) -> LabelGraph:
        """The graph with these edges dropped (both directions), renormalised exactly as it was built."""
        weights = self.weights.clone()
        for i, j in pairs:
            weights[i, j] = weights[j, i] = 0.0
        return LabelGraph(weights, normalise(weights, self.p), self.class_names, self.p)

    def neighbours(self, c: int) -> list[int]:
        return [int(j) for j in torch.nonzero(self.weights[c] > 0).flatten()]

    @property
    def edges(self) -> torch.Tensor:
        return self.weights > 0

    @property
    def degree(self) -> list[int]:
        return [int(d) for d in self.edges.sum(dim=1)]

    def to_networkx(self) -> nx.Graph:
        graph = nx.Graph()
        for i, name in enumerate(self.class_names):
            graph.add_node(i, name=name)
        rows, cols = torch.nonzero(torch.triu(self.weights, diagonal=1), as_tuple=True)
        for i, j in zip(rows.tolist(), cols.tolist()):
            graph.add_edge(i, j, weight=float(self.weights[i, j]))
        return graph

    def stats(self) -> dict[str, Any]:
        """Degree and connectivity: ML-GCN-style thresholded graphs are often far sparser than expected."""
        graph = self.to_networkx()
        components = sorted((sorted(c) for c in nx.connected_components(graph)), key=len, reverse=True)
        n = len(self.class_names)
        degree = self.degree
        return {
            "num_classes": n,
            "num_edges": graph.number_of_edges(),
            "density": graph.number_of_edges() / max(n * (n - 1) / 2, 1),
            "degree": dict(zip(self.class_names, degree)),
            "mean_degree": sum(degree) / max(n, 1),
            "isolated": [self.class_names[i] for i, d in enumerate(degree) if d == 0],
            "num_components": len(components),
            "components": [[self.class_names[i] for i in c] for c in components],
        }


def sparsify(
    similarity: torch.Tensor, *, mode: str = "topk", topk: int = 4, threshold: float = 0.8
) -> torch.Tensor:
    """Keep each class's strongest neighbours (top-k, made symmetric) or every pair above a threshold."""
    sim = similarity.clone().float()
    sim.fill_diagonal_(0)
    sim.clamp_(min=0)
    n = sim.shape[0]
    if mode == "topk":
        if topk < 0:
            raise ValueError("topk must be >= 0")
        keep = torch.zeros_like(sim, dtype=torch.bool)
        k = min(topk, n - 1)
        if k > 0:
            idx = sim.topk(k, dim=1).indices
            keep.scatter_(1, idx, True)
        keep = keep | keep.T
    elif mode == "threshold":
        keep = sim >= threshold
    else:
        raise ValueError(f"unknown sparsify mode '{mode}' (topk or threshold)")
    return torch.where(keep & (sim > 0), sim, torch.zeros_like(sim))


def normalise(weights: torch.Tensor, p: float = 0.2) -> torch.Tensor:
    """ML-GCN re-weighting (p spread over neighbours, 1 - p on the diagonal), then D^-1/2 A D^-1/2."""
    if not 0.0 <= p <= 1.0:
        raise ValueError("p must be in [0, 1]")
    n = weights.shape[0]
    row = weights.sum(dim=1, keepdim=True)
    has_nb = row.squeeze(1) > 0
    spread = torch.where(row > 0, p * weights / row.clamp(min=1e-12), torch.zeros_like(weights))
    diag = torch.where(has_nb, torch.full((n,), 1.0 - p), torch.ones(n))
    reweighted = spread + torch.diag(diag)
    sym = (reweighted + reweighted.T) / 2
    d = sym.sum(dim=1).rsqrt()
    return d[:, None] * sym * d[None, :]


def text_graph(
    text_features: torch.Tensor,
    class_names: Sequence[str],
    *,
    mode: str = "topk",
    topk: int = 4,
    threshold: float = 0.8,
    p: float = 0.2,
) -> LabelGraph:
    """The CAPNET graph: cosine similarity of the classes' (template-ensembled) text embeddings."""
    feats = F.normalize(text_features.detach().float().cpu(), dim=-1)
    weights = sparsify(feats @ feats.T, mode=mode, topk=topk, threshold=threshold)
    return LabelGraph(weights, normalise(weights, p), list(class_names), p)


def cooccurrence_graph(
    labels: torch.Tensor,
    class_names: Sequence[str],
    *,
    mode: str = "threshold",
    topk: int = 4,
    threshold: float = 0.4,
    p: float = 0.2,
) -> LabelGraph:
    """ML-GCN's graph: conditional probabilities P(j | i) from training labels, made symmetric by max."""
    y = torch.as_tensor(labels).float().cpu()
    return counts_graph(y.T @ y, class_names, mode=mode, topk=topk, threshold=threshold, p=p)


def counts_graph(
    counts: torch.Tensor,
    class_names: Sequence[str],
    *,
    mode: str = "threshold",
    topk: int = 4,
    threshold: float = 0.4,
    p: float = 0.2,
) -> LabelGraph:
    """The co-occurrence graph from the (C, C) count matrix alone (diagonal: class counts).

    A checkpoint can carry the counts of its training labels, where the labels themselves are not shipped.
    """
    counts = torch.as_tensor(counts).float().cpu()
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(class_names):
        shape = tuple(counts.shape)
        raise ValueError(f"co-occurrence counts of shape {shape} for {len(class_names)} classes")
    cond = counts / counts.diagonal().clamp(min=1)[:, None]
    weights = sparsify(torch.maximum(cond, cond.T), mode=mode, topk=topk, threshold=threshold)
    return LabelGraph(weights, normalise(weights, p), list(class_names), p)
