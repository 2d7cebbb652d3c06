"""Checks capnet.graph against loop references written from the formulas (field notes 1.3) and networkx."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
import torch

from capnet.graph import LabelGraph, cooccurrence_graph, normalise, sparsify, text_graph

# ----------------------------------------------------------------------------- references


def ref_sparsify_topk(sim: np.ndarray, k: int) -> np.ndarray:
    """Each row keeps its k largest strictly positive off-diagonal entries; the pattern is OR-symmetrised."""
    n = sim.shape[0]
    keep = np.zeros((n, n), dtype=bool)
    for i in range(n):
        candidates = [(sim[i, j], j) for j in range(n) if j != i and sim[i, j] > 0]
        candidates.sort(reverse=True)
        for _, j in candidates[:k]:
            keep[i, j] = True
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j and (keep[i, j] or keep[j, i]) and sim[i, j] > 0:
                out[i, j] = sim[i, j]
    return out


def ref_sparsify_threshold(sim: np.ndarray, threshold: float) -> np.ndarray:
    n = sim.shape[0]
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j and sim[i, j] > 0 and sim[i, j] >= threshold:
                out[i, j] = sim[i, j]
    return out


def ref_normalise(w: np.ndarray, p: float) -> np.ndarray:
    """ML-GCN re-weighting row by row, (A + A^T) / 2, then D^-1/2 A D^-1/2, all with explicit loops."""
    n = w.shape[0]
    r = np.zeros((n, n))
    for i in range(n):
        total = sum(w[i, k] for k in range(n) if k != i)
        if total > 0:
            for j in range(n):
                r[i, j] = (1 - p) if i == j else p * w[i, j] / total
        else:
            r[i, i] = 1.0
    s = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            s[i, j] = (r[i, j] + r[j, i]) / 2
    deg = [sum(s[i, j] for j in range(n)) for i in range(n)]
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = s[i, j] / math.sqrt(deg[i] * deg[j])
    return out


def random_similarity(n: int, seed: int) -> np.ndarray:
    """A symmetric matrix in [-1, 1] with distinct entries (no top-k ties), one all-negative row."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, size=(n, n))
    sim = (a + a.T) / 2
    sim[0, :] = -np.abs(sim[0, :]) - 0.01
    sim[:, 0] = sim[0, :]
    np.fill_diagonal(sim, 1.0)
    return sim


def networkx_from_edges(n: int, weights: np.ndarray) -> nx.Graph:
    g = nx.Graph()
    g.add_nodes_from(range(n))
    for i in range(n):
        for j in range(i + 1, n):
            if weights[i, j] > 0:
                g.add_edge(i, j)
    return g


# ----------------------------------------------------------------------------- sparsify


@pytest.mark.parametrize("k", [0, 1, 2, 3, 8, 50])
def test_sparsify_topk_matches_loops(k):
    sim = random_similarity(9, seed=k)
    got = sparsify(torch.tensor(sim, dtype=torch.float32), mode="topk", topk=k).double().numpy()
    want = ref_sparsify_topk(sim, k)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.all(np.diag(got) == 0)
    assert np.array_equal(got > 0, (got > 0).T)
    assert np.all(got >= 0)
    assert np.all(got[0] == 0) and np.all(got[:, 0] == 0)  # an all-negative row has no neighbour


def test_sparsify_topk_hand_example():
    # row 0's best is 2 (0.9), row 1's best is 3 (0.7), row 2's best is 0, row 3's best is 1
    sim = torch.tensor(
        [
            [1.0, 0.3, 0.9, -0.5],
            [0.3, 1.0, 0.2, 0.7],
            [0.9, 0.2, 1.0, 0.1],
            [-0.5, 0.7, 0.1, 1.0],
        ]
    )
    got = sparsify(sim, mode="topk", topk=1)
    want = torch.tensor(
        [
            [0.0, 0.0, 0.9, 0.0],
            [0.0, 0.0, 0.0, 0.7],
            [0.9, 0.0, 0.0, 0.0],
            [0.0, 0.7, 0.0, 0.0],
        ]
    )
    assert torch.equal(got, want)
    # top-2: rows keep {2, 1}, {3, 0}, {0, 1}, {1, 2}; the negative 0-3 is never kept, and 2-3 is kept
    # only by row 3, so it appears in row 2 through the OR
    got2 = sparsify(sim, mode="topk", topk=2)
    assert got2[0, 3] == 0 and got2[3, 0] == 0
    assert got2[0, 1] == pytest.approx(0.3) and got2[1, 0] == pytest.approx(0.3)
    assert got2[2, 3] == pytest.approx(0.1) and got2[3, 2] == pytest.approx(0.1)
    assert int((got2 > 0).sum()) == 2 * 5  # edges 0-1, 0-2, 1-2, 1-3, 2-3


def test_sparsify_does_not_modify_input():
    sim = torch.tensor(random_similarity(6, seed=3), dtype=torch.float32)
    before = sim.clone()
    sparsify(sim, mode="topk", topk=2)
    sparsify(sim, mode="threshold", threshold=0.2)
    assert torch.equal(sim, before)


@pytest.mark.parametrize("threshold", [-0.5, 0.0, 0.2, 0.5, 0.95])
def test_sparsify_threshold_matches_loops(threshold):
    sim = random_similarity(8, seed=11)
    got = sparsify(torch.tensor(sim), mode="threshold", threshold=threshold).double().numpy()
    want = ref_sparsify_threshold(sim, threshold)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.all(np.diag(got) == 0)
    assert np.all(got >= 0)


def test_sparsify_bad_arguments():
    sim = torch.eye(3)
    with pytest.raises(ValueError):
        sparsify(sim, mode="knn")
    with pytest.raises(ValueError):
        sparsify(sim, mode="topk", topk=-1)


# ----------------------------------------------------------------------------- normalise


def random_weights(n: int, seed: int, symmetric: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.uniform(0, 1, size=(n, n)) * (rng.random((n, n)) < 0.5)
    if symmetric:
        w = np.maximum(w, w.T)
    np.fill_diagonal(w, 0)
    w[2, :] = 0  # an isolated node
    w[:, 2] = 0
    return w


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("symmetric", [True, False])
def test_normalise_matches_loops(p, symmetric):
    w = random_weights(7, seed=int(p * 10) + symmetric, symmetric=symmetric)
    got = normalise(torch.tensor(w, dtype=torch.float32), p).double().numpy()
    want = ref_normalise(w, p)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(got, got.T, atol=1e-7)
    assert got[2, 2] == pytest.approx(1.0)  # isolated node: diagonal 1, alone
    assert np.all(got[2, [0, 1, 3, 4, 5, 6]] == 0)


def test_normalise_hand_example():
    # a path 0 - 1 with weight 1 and isolated node 2, p = 0.2: R = [[.8, .2, 0], [.2, .8, 0], [0, 0, 1]]
    # rows of R already sum to 1, so D = I and the result is R itself
    w = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    got = normalise(w, 0.2)
    want = torch.tensor([[0.8, 0.2, 0.0], [0.2, 0.8, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(got, want, atol=1e-7, rtol=0)


@pytest.mark.parametrize("p", [-0.01, 1.01, 2.0])
def test_normalise_bad_p(p):
    with pytest.raises(ValueError):
        normalise(torch.zeros(3, 3), p)


# ----------------------------------------------------------------------------- text graph

NAMES = ["a0", "a1", "a2", "a3", "b0", "b1", "b2", "loner"]
CLUSTER = {0: "a", 1: "a", 2: "a", 3: "a", 4: "b", 5: "b", 6: "b", 7: "loner"}


def two_cluster_features(seed: int = 0) -> np.ndarray:
    """Cluster a lives on dims 0, 3, 4; cluster b on dims 1, 5, 6; the loner on dim 2 only.

    Cross-cluster dot products are exact zeros, so no cross-cluster edge can exist; random norms check
    that the graph uses cosines.
    """
    rng = np.random.default_rng(seed)
    feats = np.zeros((8, 7))
    for i in range(4):
        feats[i, 0] = 1.0
        feats[i, [3, 4]] = rng.normal(scale=0.4, size=2)
    for i in range(4, 7):
        feats[i, 1] = 1.0
        feats[i, [5, 6]] = rng.normal(scale=0.4, size=2)
    feats[7, 2] = 1.0
    feats *= rng.uniform(0.5, 3.0, size=(8, 1))
    return feats


def cosine(feats: np.ndarray) -> np.ndarray:
    n = feats.shape[0]
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = feats[i] @ feats[j] / (np.linalg.norm(feats[i]) * np.linalg.norm(feats[j]))
    return out


@pytest.mark.parametrize(
    ("mode", "k", "threshold"), [("topk", 1, 0.8), ("topk", 2, 0.8), ("threshold", 4, 0.9)]
)
def test_text_graph_two_clusters(mode, k, threshold):
    feats = two_cluster_features()
    sim = cosine(feats)
    want_w = ref_sparsify_topk(sim, k) if mode == "topk" else ref_sparsify_threshold(sim, threshold)
    graph = text_graph(
        torch.tensor(feats, dtype=torch.float32), NAMES, mode=mode, topk=k, threshold=threshold, p=0.3
    )

    np.testing.assert_allclose(graph.weights.double().numpy(), want_w, atol=1e-5)
    np.testing.assert_allclose(graph.adjacency.double().numpy(), ref_normalise(want_w, 0.3), atol=1e-5)
    assert graph.class_names == NAMES

    # no edge crosses clusters and the loner has none
    for i, j in zip(*np.nonzero(graph.weights.numpy())):
        assert CLUSTER[int(i)] == CLUSTER[int(j)] != "loner"

    # stats against networkx built here from the reference edge list
    ref = networkx_from_edges(len(NAMES), want_w)
    stats = graph.stats()
    n = len(NAMES)
    assert stats["num_classes"] == n
    assert stats["num_edges"] == ref.number_of_edges()
    assert stats["density"] == pytest.approx(ref.number_of_edges() / (n * (n - 1) / 2))
    assert stats["degree"] == {NAMES[v]: ref.degree[v] for v in range(n)}
    assert stats["mean_degree"] == pytest.approx(2 * ref.number_of_edges() / n)
    assert stats["isolated"] == [NAMES[v] for v in range(n) if ref.degree[v] == 0]
    assert "loner" in stats["isolated"]
    want_components = {frozenset(NAMES[v] for v in c) for c in nx.connected_components(ref)}
    assert {frozenset(c) for c in stats["components"]} == want_components
    assert stats["num_components"] == nx.number_connected_components(ref)
    sizes = [len(c) for c in stats["components"]]
    assert sizes == sorted(sizes, reverse=True)


def test_text_graph_topk2_connects_each_cluster():
    # with k = 2 every node of a 3- or 4-clique keeps two in-cluster neighbours: the clusters are connected
    graph = text_graph(torch.tensor(two_cluster_features(), dtype=torch.float32), NAMES, topk=2)
    stats = graph.stats()
    assert {frozenset(c) for c in stats["components"]} == {
        frozenset(NAMES[:4]),
        frozenset(NAMES[4:7]),
        frozenset(["loner"]),
    }
    assert stats["num_components"] == 3
    assert stats["isolated"] == ["loner"]
    assert stats["degree"]["b0"] == 2 and stats["degree"]["loner"] == 0


def test_to_networkx_edges_and_weights():
    feats = two_cluster_features(seed=4)
    graph = text_graph(torch.tensor(feats, dtype=torch.float32), NAMES, topk=1)
    g = graph.to_networkx()
    want = ref_sparsify_topk(cosine(feats), 1)
    assert set(g.nodes) == set(range(8))
    assert {frozenset(e) for e in g.edges} == {
        frozenset((i, j)) for i in range(8) for j in range(i + 1, 8) if want[i, j] > 0
    }
    for i, j, data in g.edges(data=True):
        assert data["weight"] == pytest.approx(want[i, j], abs=1e-5)
    assert [g.nodes[v]["name"] for v in range(8)] == NAMES


# ----------------------------------------------------------------------------- co-occurrence graph

# 8 images, 5 classes; class 4 never occurs
LABELS = np.array(
    [
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 0, 1, 0, 0],
        [1, 0, 0, 0, 0],
        [0, 1, 0, 1, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 0],
        [1, 1, 1, 1, 0],
    ]
)


def ref_conditional(labels: np.ndarray) -> np.ndarray:
    """P(j | i) = #images with i and j / #images with i (0 for a class without images)."""
    n, c = labels.shape
    cond = np.zeros((c, c))
    for i in range(c):
        n_i = sum(labels[m, i] for m in range(n))
        for j in range(c):
            both = sum(labels[m, i] * labels[m, j] for m in range(n))
            cond[i, j] = both / n_i if n_i > 0 else 0.0
    return cond


def test_conditional_reference_by_hand():
    cond = ref_conditional(LABELS)
    assert cond[0, 1] == pytest.approx(3 / 5)  # class 0 in 5 images, with class 1 in 3
    assert cond[1, 0] == pytest.approx(3 / 4)
    assert cond[3, 2] == pytest.approx(3 / 4)


@pytest.mark.parametrize("threshold", [0.3, 0.4, 0.6])
def test_cooccurrence_graph_threshold(threshold):
    names = ["c0", "c1", "c2", "c3", "never"]
    graph = cooccurrence_graph(torch.tensor(LABELS), names, threshold=threshold, p=0.2)
    cond = ref_conditional(LABELS)
    sym = np.maximum(cond, cond.T)
    want = ref_sparsify_threshold(sym, threshold)
    np.testing.assert_allclose(graph.weights.double().numpy(), want, atol=1e-6)
    np.testing.assert_allclose(graph.adjacency.double().numpy(), ref_normalise(want, 0.2), atol=1e-6)
    assert "never" in graph.stats()["isolated"]


def test_cooccurrence_graph_topk():
    names = ["c0", "c1", "c2", "c3", "never"]
    graph = cooccurrence_graph(torch.tensor(LABELS), names, mode="topk", topk=1, p=0.2)
    cond = ref_conditional(LABELS)
    want = ref_sparsify_topk(np.maximum(cond, cond.T), 1)
    np.testing.assert_allclose(graph.weights.double().numpy(), want, atol=1e-6)
    # explicit: max(P(1|0), P(0|1)) = 3/4 is class 0's strongest link
    assert graph.weights[0, 1].item() == pytest.approx(0.75)


# ----------------------------------------------------------------------------- edge removal


@pytest.mark.parametrize("p", [0.2, 0.6])
def test_without_edges_renormalises_like_the_loop_reference(p):
    feats = two_cluster_features()
    graph = text_graph(torch.tensor(feats, dtype=torch.float32), NAMES, mode="topk", topk=2, p=p)
    assert graph.p == p
    np.testing.assert_allclose(graph.without_edges([]).adjacency.numpy(), graph.adjacency.numpy(), atol=1e-7)
    i, j = 0, graph.neighbours(0)[0]
    dropped = graph.without_edges([(j, i)])  # either direction drops both
    w = graph.weights.double().numpy().copy()
    w[i, j] = w[j, i] = 0.0
    np.testing.assert_allclose(dropped.weights.numpy(), w, atol=0)
    np.testing.assert_allclose(dropped.adjacency.double().numpy(), ref_normalise(w, p), atol=1e-6)
    assert j not in dropped.neighbours(i) and i not in dropped.neighbours(j)
    assert graph.weights[i, j] > 0  # the original graph is untouched
    everything = [(a, b) for a in range(8) for b in graph.neighbours(a)]
    np.testing.assert_allclose(graph.without_edges(everything).adjacency.numpy(), np.eye(8), atol=0)
    assert graph.neighbours(7) == []  # the loner


# ------------------------------------------------------------------- edges (found by mutation testing)


def test_cooccurrence_graph_defaults_are_mlgcn_threshold_0_4_and_p_0_2():
    names = ["c0", "c1", "c2", "c3", "never"]
    graph = cooccurrence_graph(torch.tensor(LABELS), names)
    cond = ref_conditional(LABELS)
    want = ref_sparsify_threshold(np.maximum(cond, cond.T), 0.4)
    np.testing.assert_allclose(graph.weights.double().numpy(), want, atol=1e-6)
    np.testing.assert_allclose(graph.adjacency.double().numpy(), ref_normalise(want, 0.2), atol=1e-6)
    topk = cooccurrence_graph(torch.tensor(LABELS), names, mode="topk")  # k = 4 by default
    want_topk = ref_sparsify_topk(np.maximum(cond, cond.T), 4)
    np.testing.assert_allclose(topk.weights.double().numpy(), want_topk, atol=1e-6)


def test_cooccurrence_graph_passes_p_on():
    names = ["c0", "c1", "c2", "c3", "never"]
    graph = cooccurrence_graph(torch.tensor(LABELS), names, threshold=0.3, p=0.5)
    cond = ref_conditional(LABELS)
    want = ref_sparsify_threshold(np.maximum(cond, cond.T), 0.3)
    np.testing.assert_allclose(graph.adjacency.double().numpy(), ref_normalise(want, 0.5), atol=1e-6)


def test_cooccurrence_of_a_class_seen_once():
    labels = np.array([[1, 1, 0], [0, 1, 1], [0, 1, 0]])  # class 0 in one image, always with class 1
    graph = cooccurrence_graph(torch.tensor(labels), ["a", "b", "c"], threshold=0.9)
    cond = ref_conditional(labels)
    assert cond[0, 1] == 1.0
    np.testing.assert_allclose(
        graph.weights.double().numpy(), ref_sparsify_threshold(np.maximum(cond, cond.T), 0.9)
    )
    assert graph.weights[0, 1].item() == 1.0


def test_density_of_a_two_class_graph():
    weights = torch.tensor([[0.0, 0.7], [0.7, 0.0]])
    graph = LabelGraph(weights, normalise(weights), ["a", "b"])
    assert graph.stats()["density"] == 1.0  # one edge of one possible
    single = LabelGraph(torch.zeros(1, 1), normalise(torch.zeros(1, 1)), ["a"])
    assert single.stats()["density"] == 0.0


def test_text_graph_defaults_are_top_4_and_threshold_0_8():
    rng = np.random.default_rng(3)
    feats = 1.0 + rng.normal(scale=0.5, size=(10, 6))  # positive cosines, spread around 0.8
    sim = cosine(feats)
    names = [f"c{i}" for i in range(10)]
    graph = text_graph(torch.tensor(feats), names)
    np.testing.assert_allclose(graph.weights.double().numpy(), ref_sparsify_topk(sim, 4), atol=1e-6)
    np.testing.assert_allclose(
        graph.adjacency.double().numpy(), ref_normalise(ref_sparsify_topk(sim, 4), 0.2), atol=1e-6
    )
    want = ref_sparsify_threshold(sim, 0.8)
    assert 0 < (want > 0).sum() < 90  # the threshold keeps some pairs and drops others
    by_threshold = text_graph(torch.tensor(feats), names, mode="threshold")
    np.testing.assert_allclose(by_threshold.weights.double().numpy(), want, atol=1e-6)


@pytest.mark.parametrize("p", [-0.01, 1.01])
def test_normalise_bad_p_is_named(p):
    with pytest.raises(ValueError, match=r"^p must be in \[0, 1\]$"):
        normalise(torch.zeros(3, 3), p)


def test_sparsify_defaults_are_top_4_and_threshold_0_8():
    sim = torch.tensor(random_similarity(9, 4), dtype=torch.float32)
    np.testing.assert_allclose(
        sparsify(sim).double().numpy(), ref_sparsify_topk(sim.double().numpy(), 4), atol=1e-6
    )
    want = ref_sparsify_threshold(sim.double().numpy(), 0.8)
    assert (want > 0).any()
    np.testing.assert_allclose(sparsify(sim, mode="threshold").double().numpy(), want, atol=1e-6)


def test_sparsify_topk_beyond_the_number_of_neighbours_keeps_them_all():
    sim = torch.tensor([[1.0, 0.5, 0.25], [0.5, 1.0, 0.75], [0.25, 0.75, 1.0]])
    want = torch.tensor([[0.0, 0.5, 0.25], [0.5, 0.0, 0.75], [0.25, 0.75, 0.0]])
    torch.testing.assert_close(sparsify(sim, topk=5), want, atol=0, rtol=0)
    torch.testing.assert_close(sparsify(sim, topk=2), want, atol=0, rtol=0)


def test_sparsify_threshold_keeps_a_pair_at_the_threshold():
    sim = torch.tensor([[1.0, 0.5, 0.25], [0.5, 1.0, 0.75], [0.25, 0.75, 1.0]])
    kept = sparsify(sim, mode="threshold", threshold=0.5)
    assert kept[0, 1].item() == 0.5 and kept[1, 2].item() == 0.75 and kept[0, 2].item() == 0.0


def test_sparsify_errors_are_named():
    with pytest.raises(ValueError, match=r"^topk must be >= 0$"):
        sparsify(torch.eye(3), topk=-1)
    with pytest.raises(ValueError, match=r"^unknown sparsify mode 'knn' \(topk or threshold\)$"):
        sparsify(torch.eye(3), mode="knn")


def test_normalise_default_p_is_0_2():
    w = random_weights(6, 5)
    np.testing.assert_allclose(normalise(torch.tensor(w)).double().numpy(), ref_normalise(w, 0.2), atol=1e-6)


def test_cooccurrence_graph_default_k_is_4():
    labels = (np.random.default_rng(8).random((40, 7)) < 0.5).astype(int)
    cond = ref_conditional(labels)
    graph = cooccurrence_graph(torch.tensor(labels), [f"c{i}" for i in range(7)], mode="topk")
    want = ref_sparsify_topk(np.maximum(cond, cond.T), 4)
    assert not np.allclose(want, ref_sparsify_topk(np.maximum(cond, cond.T), 5))
    np.testing.assert_allclose(graph.weights.double().numpy(), want, atol=1e-6)
