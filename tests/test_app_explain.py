"""The app's "why did it miss?" views against capnet.explain, capnet.failures and sklearn called directly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, precision_recall_curve

from app import explain_view as view
from app import failure_view, text
from app.dashboard import Run
from app.limits import EXPLAIN_EDGES, EXPLAIN_GRID
from app.models import ModelChoice, ServedModels, load_served_models
from app.predict import predict
from app.report_files import AssetFiles
from app.tabs.explain import predict_show
from app.tabs.predict import Shown
from capnet.checkpoint import save_checkpoint
from capnet.explain import evidence_maps, graph_attribution, model_view
from capnet.model import CapNet

NAMES = ["cat", "dog", "horse", "sheep", "car", "boat", "kite_*tail*"]


def scene() -> Image.Image:
    """Two coloured blocks on grey: something for a map to find, the same on every call."""
    image = Image.new("RGB", (96, 72), (128, 128, 128))
    image.paste((220, 30, 30), (8, 8, 40, 40))
    image.paste((30, 30, 220), (56, 30, 90, 66))
    return image


@pytest.fixture
def capnet_served(tmp_path, tiny_backbone, monkeypatch):
    """The app serving a CAPNET checkpoint whose GCN is far from zero (as training leaves it), from disk."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = CapNet(tiny_backbone(), NAMES).eval()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in model.gcn.layers:
            layer.linear.weight.copy_(torch.randn(layer.linear.weight.shape, generator=generator) * 0.3)
    path = save_checkpoint(model, tmp_path / "capnet.safetensors", {"class_freq": [90, 60, 40, 20, 9, 4, 2]})
    served = load_served_models(ModelChoice(checkpoint=str(path)), checkpoints_dir=tmp_path)
    assert served.trained is not None and served.trained.gcn is not None
    return served


def test_a_zero_shot_map_is_capnet_explains_and_says_why_there_is_no_graph(tiny_backbone):
    served = ServedModels(tiny_backbone(), "banner")
    model = served.zero_shot(tuple(NAMES))
    result = view.explain(model, scene(), "horse")
    _, (direct,) = evidence_maps(model, scene(), ["horse"])
    np.testing.assert_allclose(result.evidence.grid, direct.grid, atol=1e-6)
    _, tensor = model_view(model, scene())
    with torch.no_grad():
        p = float(model.predict(tensor)[0, NAMES.index("horse")])
    assert result.evidence.probability == pytest.approx(p, abs=1e-5)
    assert f"p = {p:.3f}" in result.summary("zero-shot")
    assert result.attribution is None
    assert result.graph() == (
        "Label graph: no attribution (graph attribution needs a trained CAPNET model: a zero\\-shot model "
        "has no label graph)."
    )
    # the overlay: the view stretched to EXPLAIN_SIDE with a title line above and a colour bar beside it
    assert result.overlay.width > result.view.width and result.overlay.height == result.view.height + 14
    occluded = view.explain(model, scene(), "horse", "occlusion")
    assert occluded.evidence.grid.shape == (EXPLAIN_GRID, EXPLAIN_GRID)
    with pytest.raises(ValueError, match="not one of the model's classes"):
        view.explain(model, scene(), "zebra")


def test_a_capnet_checkpoint_shows_its_graph_attribution(capnet_served):
    model = capnet_served.trained
    result = view.explain(model, scene(), "dog")
    _, tensor = model_view(model, scene())
    with torch.no_grad():
        direct = graph_attribution(model, model.encode_image(tensor)[0], "dog")
        logit = float(model.predict_logits(tensor)[0, NAMES.index("dog")])
    got = result.attribution
    assert got is not None and result.absent is None
    assert got.logit == pytest.approx(direct.logit, abs=1e-5) and got.logit == pytest.approx(logit, abs=1e-4)
    assert got.logit_without_gcn == pytest.approx(direct.logit_without_gcn, abs=1e-5)
    assert got.logit_without_edges == pytest.approx(direct.logit_without_edges, abs=1e-5)
    assert [e.neighbour for e in got.edges] == [e.neighbour for e in direct.edges]
    assert direct.edges and any(abs(e.change) > 1e-4 for e in direct.edges)
    shown = result.graph()
    assert f"logit {direct.logit_without_gcn:.3f} without the GCN" in shown
    assert f"{direct.logit:.3f} with the full graph" in shown
    bullets = [line for line in shown.splitlines() if line.startswith("- ")]
    assert len(bullets) == min(len(direct.edges), EXPLAIN_EDGES)
    first = direct.edges[0]
    verb = "rose" if first.change > 0 else "fell"
    # shown as typed: the Markdown escapes (text.md) of the library's sentence
    assert bullets[0] == "- " + text.md(f"{verb} by {abs(first.change):.2g} because of `{first.neighbour}`")


def test_a_class_name_with_markup_is_escaped_in_the_graph_lines(capnet_served):
    model = capnet_served.trained
    result = view.explain(model, scene(), "kite_*tail*")
    assert "kite\\_\\*tail\\*" in result.summary("CAPNET") and "kite_*tail*" not in result.summary("CAPNET")
    assert "kite\\_\\*tail\\*" in result.graph()


def test_predict_click_defaults_to_the_top_class_of_the_chosen_model(capnet_served):
    model = capnet_served.trained
    images = [("a.png", scene()), ("b.png", scene().transpose(Image.Transpose.FLIP_LEFT_RIGHT))]
    models = {"CAPNET": model, "zero-shot": capnet_served.zero_shot(tuple(NAMES))}
    shown = Shown(predict(models, images), dict(images), models)
    with torch.no_grad():
        probs = model.predict(torch.stack([model.image_transform()(images[1][1])]))[0]
    top = NAMES[int(probs.argmax())]
    model_pick, class_pick, seen, drawn, summary, graph = predict_show(shown, "b.png", None, None, "fast map")
    assert model_pick["value"] == "CAPNET" and model_pick["choices"] == ["CAPNET", "zero-shot"]
    assert class_pick["value"] == top and len(class_pick["choices"]) == len(NAMES)
    assert seen is not None and drawn is not None and "Label graph" in graph
    _, _, _, _, summary, graph = predict_show(shown, "b.png", "zero-shot", "sheep", "fast map")
    assert "**sheep**" in summary and "no attribution" in graph
    assert predict_show(None, "b.png", None, None, "fast map")[4].startswith("Predict first")


def test_gallery_model_and_images_stay_within_the_report(capnet_served, tmp_path):
    report = {"class_names": ["cat", "zebra"], "per_class": []}
    run = Run("r", report, None, AssetFiles())
    assert view.gallery_model(capnet_served, run, "cat") == ("CAPNET", capnet_served.trained)
    name, model = view.gallery_model(capnet_served, run, "zebra")
    assert name == "zero-shot" and model.class_names == ["cat", "zebra"]
    secret = tmp_path / "secret.png"
    scene().save(secret)
    for raw in (str(secret), "../../../etc/passwd", "assets/reports/nothing.png"):
        with pytest.raises(ValueError, match="image not in the report"):
            view.gallery_image(run, raw)
    image = view.gallery_image(run, "assets/reports/synth-lt-test-scenes/images/00000.png")
    assert image.mode == "RGB" and min(image.size) > 0


# ------------------------------------------------------------------------------------ failure patterns

CLASSES = ["person", "car", "dog", "zebra", "kite"]
GROUPS = ["head", "head", "medium", "tail", "tail"]


@pytest.fixture
def run():
    """A report of 30 images with random labels (each class present) and tied probabilities."""
    rng = np.random.default_rng(1)
    labels = (rng.random((30, 5)) < 0.35).astype(int)
    labels[:2] = 1
    probs = np.round(rng.random((30, 5)), 1) * 0.9 + 0.025  # many ties, none on a bin edge
    per_class = [
        {"class": n, "train_count": 100 // (c + 1), "group": g, "test_positives": int(labels[:, c].sum()),
         "ap_single": 0.5}
        for c, (n, g) in enumerate(zip(CLASSES, GROUPS))
    ]  # fmt: skip
    report = {"class_names": CLASSES, "per_class": per_class, "results": {"single": {"total": 0.5}}}
    table = pd.DataFrame(
        {"image_id": [f"im{i}" for i in range(30)], "path": [f"x/{i}.png" for i in range(30)]}
    )
    for c, name in enumerate(CLASSES):
        table[f"p:{name}"] = probs[:, c]
    for c, name in enumerate(CLASSES):
        table[f"y:{name}"] = labels[:, c]
    return Run("r", report, table, AssetFiles()), probs, labels


def test_confusion_table_counts_equal_a_direct_count(run):
    report, probs, labels = run
    note, _, _, table = failure_view.patterns(report, "all classes")
    assert len(table) == len(CLASSES)
    k = failure_view.CONFUSION_K
    for c, name in enumerate(CLASSES):
        row = table[table["class"] == name].iloc[0]
        for kind, column in (
            ("neg", failure_view.CONFUSION_COLUMNS[3]),
            ("pos", failure_view.CONFUSION_COLUMNS[4]),
        ):
            want = 0 if kind == "neg" else 1
            pool = [i for i in range(30) if labels[i, c] == want]
            pool.sort(key=lambda i: (-probs[i, c], i) if kind == "neg" else (probs[i, c], i))
            chosen = pool[:k]
            counts = {CLASSES[j]: int(labels[chosen, j].sum()) for j in range(5) if j != c}
            best = sorted((n for n in counts if counts[n] > 0), key=lambda n: (-counts[n], n))[:3]
            assert row[column] == ", ".join(f"{n} {counts[n]}/{len(chosen)}" for n in best), (name, kind)
        assert row["AP"] == round(100 * average_precision_score(labels[:, c], probs[:, c]), 1)
    assert list(table.AP) == sorted(table.AP)


def test_pr_curves_are_sklearns_and_the_tail_filter_keeps_the_tail(run):
    report, probs, labels = run
    _, curves, diagram, table = failure_view.patterns(report, "tail")
    assert sorted(table["class"]) == ["kite", "zebra"]
    assert sorted(trace.name.split(" (")[0] for trace in curves.data) == ["kite", "zebra"]
    zebra = next(trace for trace in curves.data if trace.name.startswith("zebra"))
    precision, recall, _ = precision_recall_curve(labels[:, 3], probs[:, 3])
    np.testing.assert_allclose(zebra.x, recall)
    np.testing.assert_allclose(zebra.y, precision)
    lines = [trace for trace in diagram.data if trace.name != "calibrated"]
    assert [trace.name.split(" ")[0] for trace in lines] == ["tail"]
    tail = probs[:, 3:].ravel()
    observed = labels[:, 3:].ravel()
    top = tail >= 0.9  # the last bin
    assert lines[0].x[-1] == pytest.approx(tail[top].mean()) and lines[0].y[-1] == pytest.approx(
        observed[top].mean()
    )


def test_unusable_scores_give_one_line_and_no_plots(run):
    report, _, _ = run
    report.scores["p:dog"] = report.scores["p:dog"].astype(object)
    report.scores.loc[3, "p:dog"] = "high"
    note, curves, diagram, table = failure_view.patterns(report, "all classes")
    assert curves is None and diagram is None and table.empty
    assert "no failure patterns" in note and "not a number" in note and "\n" not in note
    none = Run("n", report.report, None, AssetFiles(), "no scores.csv, so no gallery")
    assert failure_view.patterns(none, "tail")[0] == "**n**: no failure patterns (no scores\\.csv)"


# ------------------------------------------------------------------------------------- the bounds


def test_the_graph_lines_stop_at_explain_edges():
    from capnet.explain import EdgeEffect, GraphAttribution

    def shown(n: int) -> list[str]:
        edges = [EdgeEffect(f"c{i}", 0.5, 1.0 / (i + 1)) for i in range(n)]
        markdown = view.graph_markdown(GraphAttribution("x", 0.1, 0.2, 0.3, edges), None)
        return [line for line in markdown.splitlines() if line.startswith("- ")]

    assert len(shown(EXPLAIN_EDGES)) == EXPLAIN_EDGES and "smaller" not in shown(EXPLAIN_EDGES)[-1]
    over = shown(EXPLAIN_EDGES + 1)
    assert len(over) == EXPLAIN_EDGES + 1 and over[-1] == "- and 1 smaller change"
    assert over[0] == "- rose by 1 because of \\`c0\\`"


def test_pr_curves_stop_at_max_pr_classes_and_curve_points():
    from app.limits import CURVE_POINTS, MAX_PR_CLASSES
    from capnet.failures import EvalScores

    rng = np.random.default_rng(2)
    n, c = 3 * CURVE_POINTS, MAX_PR_CLASSES + 1
    labels = (rng.random((n, c)) < 0.3).astype(int)
    probs = rng.random((n, c))
    names = [f"class {i}" for i in range(c)]
    scores = EvalScores(names, ["tail"] * c, np.ones(c), [str(i) for i in range(n)], probs, labels)
    fig = failure_view.pr_figure(scores, None)
    assert len(fig.data) == MAX_PR_CLASSES
    ap = [average_precision_score(labels[:, j], probs[:, j]) for j in range(c)]
    best = names[int(np.argmax(ap))]  # the one left out: the lowest-AP classes are drawn
    assert not any(trace.name.startswith(f"{best} (") for trace in fig.data)
    first = fig.data[0]
    j = names.index(first.name.split(" (")[0])
    precision, recall, _ = precision_recall_curve(labels[:, j], probs[:, j])
    assert len(precision) > CURVE_POINTS and len(first.x) == CURVE_POINTS
    assert (first.x[0], first.x[-1]) == (recall[0], recall[-1]) and first.y[-1] == precision[-1]
