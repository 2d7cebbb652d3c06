"""The label-graph tab: the CLIP text-embedding graph drawn live, against the co-occurrence graph."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F

from app import text
from app.models import ServedModels
from app.splits import official_training_labels
from capnet.graph import LabelGraph, counts_graph, text_graph
from capnet.metrics import class_groups
from capnet.model import CapNet

GROUP_COLOURS = {"head": "#1f77b4", "medium": "#ff7f0e", "tail": "#d62728", None: "#7f7f7f"}


def build_graph(
    text_features: torch.Tensor, names: list[str], mode: str, topk: int, threshold: float, p: float
) -> LabelGraph:
    return text_graph(text_features, names, mode=mode, topk=int(topk), threshold=float(threshold), p=float(p))


def network_figure(graph: LabelGraph, counts: np.ndarray | None, title: str) -> go.Figure:
    """Nodes sized by training count and coloured by group (when counts are known), edges by weight."""
    nxg = graph.to_networkx()
    n = len(nxg)
    # A wider spacing than networkx's default 1/sqrt(n) keeps the labels of 20-80 nodes apart.
    pos = (
        nx.spring_layout(nxg, seed=0, weight="weight", k=2.5 / math.sqrt(n), iterations=100)
        if n > 1
        else {0: np.zeros(2)}
    )
    groups = class_groups(counts) if counts is not None else [None] * len(graph.class_names)
    fig = go.Figure()
    edge_x, edge_y = [], []
    for i, j in nxg.edges():
        edge_x += [pos[i][0], pos[j][0], None]
        edge_y += [pos[i][1], pos[j][1], None]
    fig.add_trace(
        go.Scatter(
            x=edge_x,
            y=edge_y,
            mode="lines",
            line=dict(width=1, color="#bbbbbb"),
            hoverinfo="skip",
            showlegend=False,
        )
    )
    degree = graph.degree
    for group in dict.fromkeys(groups):
        idx = [i for i, g in enumerate(groups) if g == group]
        sizes = [10 + (4 * math.log1p(counts[i]) if counts is not None else 6) for i in idx]
        hover = [
            f"{text.plot(graph.class_names[i])}<br>degree {degree[i]}"
            + (f"<br>{int(counts[i])} training images ({group})" if counts is not None else "")
            for i in idx
        ]
        fig.add_trace(
            go.Scatter(
                x=[pos[i][0] for i in idx],
                y=[pos[i][1] for i in idx],
                mode="markers+text",
                text=[text.plot(graph.class_names[i]) for i in idx],
                textposition="top center",
                textfont=dict(size=11 if len(graph.class_names) <= 30 else 9),
                hovertext=hover,
                hoverinfo="text",
                marker=dict(size=sizes, color=GROUP_COLOURS[group], line=dict(width=1, color="white")),
                name=group or "classes",
            )
        )
    fig.update_layout(
        title=title,
        height=520,
        margin=dict(l=10, r=10, t=40, b=10),
        showlegend=counts is not None,
        xaxis=dict(visible=False),
        yaxis=dict(visible=False),
        plot_bgcolor="white",
    )
    return fig


def stats_markdown(graph: LabelGraph, label: str) -> str:
    s = graph.stats()
    isolated = text.md(", ".join(s["isolated"][:10]) or "none")
    return (
        f"**{label}**: {s['num_edges']} edges, density {s['density']:.2f}, "
        f"mean degree {s['mean_degree']:.1f}, "
        f"{s['num_components']} connected component(s), isolated classes: {isolated}"
    )


def cooccurrence_view(labels: np.ndarray, names: list[str], mode: str, topk: int, threshold: float, p: float):
    """The co-occurrence graph of the long-tailed training labels, and why its tail rows are unreliable."""
    y = np.asarray(labels).astype(np.int64)
    return counts_view(y.T @ y, names, mode, topk, threshold, p)


def counts_view(counts: np.ndarray, names: list[str], mode: str, topk: int, threshold: float, p: float):
    """``cooccurrence_view`` from the (C, C) co-occurrence counts alone (diagonal: class counts)."""
    graph = counts_graph(
        torch.as_tensor(counts), names, mode=mode, topk=int(topk), threshold=float(threshold), p=float(p)
    )
    class_counts = np.diagonal(counts).copy()
    groups = class_groups(class_counts)
    partners = (np.asarray(counts) > 0).sum(1) - (class_counts > 0)
    tail = [i for i, g in enumerate(groups) if g == "tail"]
    thin = [names[i] for i in tail if partners[i] < 3]
    note = text.md(
        f"{len(thin)} of {len(tail)} tail classes co-occur with fewer than 3 other classes in the whole "
        f"training set ({', '.join(thin[:8])}{'…' if len(thin) > 8 else ''}): their co-occurrence rows rest "
        f"on a handful of images, while their text embeddings exist regardless."
        if tail
        else "No tail classes in this training set."
    )
    return graph, class_counts, note


def checkpoint_cooccurrence(meta: dict, num_classes: int) -> tuple[np.ndarray | None, str]:
    """The training co-occurrence counts a checkpoint carries, or None and one line saying why not."""
    raw = meta.get("train_cooccurrence")
    if raw is None:
        return None, (
            "This checkpoint carries no co-occurrence counts of its training labels (metadata "
            "train_cooccurrence), so its co-occurrence graph cannot be drawn."
        )
    try:
        counts = np.asarray(raw)
    except (TypeError, ValueError):
        counts = np.zeros(0)
    if (
        counts.shape != (num_classes, num_classes)
        or counts.dtype.kind not in "iu"
        or (counts < 0).any()
        or not (counts == counts.T).all()
    ):
        return None, (
            f"This checkpoint's train_cooccurrence is not a symmetric {num_classes}x{num_classes} matrix of "
            "counts, so its co-occurrence graph is not drawn."
        )
    return counts.astype(np.int64), ""


def training_cooccurrence(
    served: ServedModels, source: str, names: list[str]
) -> tuple[np.ndarray | None, str]:
    """The co-occurrence counts of the set's long-tailed training labels, or None and one line why not.

    The served checkpoint's own counts for its classes; the official split files for VOC and COCO.
    """
    labels = official_training_labels(source)
    if served.trained_for(tuple(names)) is not None:
        counts, why = checkpoint_cooccurrence(served.meta, len(names))
        if counts is not None or labels is None:
            return counts, why
    if labels is None:
        return None, (
            "No official long-tailed training labels on this machine for this label set: the "
            "co-occurrence graph needs them (see README, data/ltsplits)."
        )
    y = labels.astype(np.int64)
    return y.T @ y, ""


def graph_difference(text_graph: LabelGraph, cooc: LabelGraph) -> str:
    """One line on how the two graphs differ: shared edges, and the strongest edge each has alone."""
    a, b = text_graph.edges, cooc.edges
    shared = int(torch.triu(a & b, diagonal=1).sum())
    names = text_graph.class_names

    def strongest(graph: LabelGraph, only: torch.Tensor) -> str:
        weights = torch.triu(torch.where(only, graph.weights, torch.zeros_like(graph.weights)), diagonal=1)
        if not bool((weights > 0).any()):
            return "none"
        i, j = divmod(int(weights.argmax()), weights.shape[1])
        return f"{names[i]} – {names[j]}"

    isolated = [names[i] for i, d in enumerate(cooc.degree) if d == 0 and text_graph.degree[i] > 0]
    line = (
        f"The graphs share {shared} of the text graph's {int(torch.triu(a, 1).sum())} edges and the "
        f"co-occurrence graph's {int(torch.triu(b, 1).sum())}: the text graph links classes whose names "
        f"are alike (strongest edge of its own: {strongest(text_graph, a & ~b)}), the co-occurrence graph "
        f"classes seen together in training (strongest of its own: {strongest(cooc, b & ~a)})"
    )
    if isolated:
        shown = ", ".join(isolated[:5])
        line += f"; {len(isolated)} class(es) have text edges but no co-occurrence edge ({shown})"
    return text.md(line + ".")


def similarity_heatmaps(model: CapNet) -> go.Figure:
    """Class-class cosine similarity of the prompted features before and after the GCN residual."""
    from plotly.subplots import make_subplots

    with torch.no_grad():
        before = F.normalize(model.prompts().float(), dim=-1)
        after = model.class_features().float()
    names = model.class_names
    fig = make_subplots(rows=1, cols=2, subplot_titles=("before the GCN", "after the GCN"))
    for col, feats in ((1, before), (2, after)):
        sim = (feats @ feats.T).cpu().numpy()
        fig.add_trace(
            go.Heatmap(
                z=sim,
                x=[text.plot(n) for n in names],
                y=[text.plot(n) for n in names],
                zmin=-1,
                zmax=1,
                colorscale="RdBu",
                reversescale=True,
                showscale=col == 2,
            ),
            row=1,
            col=col,
        )
    fig.update_layout(height=480, margin=dict(l=10, r=10, t=40, b=10))
    return fig
