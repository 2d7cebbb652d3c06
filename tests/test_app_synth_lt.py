"""The offline app serving a CAPNET trained on Synth-LT (a stand-in built here, never the shipped file)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from app import dashboard as dash
from app import models as app_models
from app import text
from app.compare import CAPNET, ZERO_SHOT, models_for
from app.graph_view import counts_view, training_cooccurrence
from app.label_sources import CHECKPOINT, SCENES, counts_for, label_sources
from app.models import SYNTH_LT_NAME, ModelChoice, load_served_models
from app.predict import bar_chart, predict, samples_for
from app.tabs.graph import run_graph
from capnet import cli
from capnet.backbone import frozen_fingerprint, load_backbone
from capnet.config import BackboneConfig
from capnet.graph import cooccurrence_graph
from capnet.world.pretrain import DEFAULT_WEIGHTS, MODEL_NAME
from capnet.world.scenes import SCENE_CLASSES, scene_batch
from tests.synth_lt_standin import build_standin


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """(checkpoints folder, the model as saved, its training labels)."""
    return build_standin(tmp_path_factory.mktemp("synth-lt"))


@pytest.fixture(scope="module")
def served(standin):
    folder, _, _ = standin
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.delenv("CAPNET_CLIP_WEIGHTS", raising=False)
        mp.setenv("HF_HOME", str(folder.parent / "hf"))
        mp.setattr(app_models, "SYNTH_WEIGHTS", folder / "capnet-synth.safetensors")
        yield load_served_models(ModelChoice(), checkpoints_dir=folder)  # ViT-B/16 openai: not here


def test_offline_the_app_serves_the_synth_lt_checkpoint_in_world_mode(served, standin):
    _, model, labels = standin
    assert served.trained is not None and served.trained.class_names == list(SCENE_CLASSES)
    assert served.world and SCENES in label_sources(served) and label_sources(served)[0] == CHECKPOINT
    assert list(samples_for(served)) == [f"scene {i}" for i in range(1, 7)]
    banner = served.banner
    assert banner.startswith("**Offline: serving a trained CAPNET**") and text.md(SYNTH_LT_NAME) in banner
    assert "Synth-LT" in banner and "not real photos" in banner
    assert "test mAP (%, 1,000 test scenes): total 81.2, head 90.1, medium 78.3, tail 65.5" in banner
    assert f"row {text.md('+ GCN, text-embedding graph')}, chosen on validation" in banner
    assert served.trained_counts.tolist() == labels.sum(0).tolist()
    # zero-shot runs on a clean copy of the tiny CLIP the checkpoint was trained on, not on random weights
    # (nor on the checkpoint's tower, which its adapters changed)
    assert served.backbone.config.name == MODEL_NAME and model.peft != "none"
    shipped = load_backbone(name=MODEL_NAME, pretrained=None, weights=str(DEFAULT_WEIGHTS), device="cpu")
    assert frozen_fingerprint(served.backbone.model) == frozen_fingerprint(shipped.model)


def test_with_loadable_weights_the_synth_lt_checkpoint_is_not_imposed(standin, monkeypatch):
    folder, _, _ = standin
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    choice = ModelChoice(BackboneConfig(name="capnet-tiny", pretrained=None))
    plain = load_served_models(choice, checkpoints_dir=folder)
    assert plain.trained is None and not plain.world and "Random weights" in plain.banner
    named = load_served_models(ModelChoice(choice.backbone, str(folder / SYNTH_LT_NAME)), folder)
    assert named.trained is not None and named.world
    assert named.banner.startswith("**Serving a trained CAPNET**")


def test_predict_puts_capnet_beside_zero_shot_on_a_scene(served, standin):
    _, model, _ = standin
    images, _, _ = scene_batch(2, seed=5150)
    for source in (CHECKPOINT, SCENES):  # the scene classes are the checkpoint's: CAPNET answers both
        models = models_for(served, SCENE_CLASSES)
        assert list(models) == [CAPNET, ZERO_SHOT]
        result = predict(models, [("s0", images[0]), ("s1", images[1])], counts=counts_for(served, source))
        assert result.groups  # head / medium / tail from the checkpoint's class counts
    table = result.table
    with torch.no_grad():
        direct = torch.sigmoid(model(torch.stack([model.image_transform()(im) for im in images])))
        direct_zero = models[ZERO_SHOT].predict(
            torch.stack([models[ZERO_SHOT].image_transform()(im) for im in images])
        )
    for k, image in enumerate(("s0", "s1")):
        rows = table[table.image == image]
        capnet = rows[rows.model == CAPNET].set_index("label").probability[list(SCENE_CLASSES)]
        zero = rows[rows.model == ZERO_SHOT].set_index("label").probability[list(SCENE_CLASSES)]
        assert np.allclose(capnet.to_numpy(), direct[k].numpy(), atol=1e-5)
        assert np.allclose(zero.to_numpy(), direct_zero[k].numpy(), atol=1e-5)
        assert np.abs(capnet.to_numpy() - zero.to_numpy()).max() > 0.05  # two models, two answers
    fig = bar_chart(result, "s0", 0.5)
    assert [trace.name for trace in fig.data] == [CAPNET, ZERO_SHOT]
    assert all(len(trace.y) == len(SCENE_CLASSES) for trace in fig.data)  # every class, side by side


def test_graph_tab_shows_the_training_cooccurrence_beside_the_text_graph(served, standin):
    _, _, labels = standin
    names = list(SCENE_CLASSES)
    counts, why = training_cooccurrence(served, CHECKPOINT, names)
    direct = np.zeros((len(names), len(names)), dtype=np.int64)
    for row in labels:
        present = [i for i, v in enumerate(row) if v]
        for i in present:
            for j in present:
                direct[i, j] += 1
    assert why == "" and np.array_equal(counts, direct)
    graph, class_counts, _ = counts_view(counts, names, "threshold", 4, 0.4, 0.2)
    from_labels = cooccurrence_graph(torch.as_tensor(labels), names, threshold=0.4)
    assert (
        torch.allclose(graph.weights, from_labels.weights) and class_counts.tolist() == labels.sum(0).tolist()
    )

    message, fig, stats, cooc, heat = run_graph(served, CHECKPOINT, "", "threshold", 4, 0.4, 0.2, True)
    assert message == "" and cooc["visible"] and heat["visible"]
    assert "co-occurrence graph" in stats and "The graphs share" in stats
    before, after = (np.asarray(trace.z) for trace in heat["value"].data)
    assert before.shape == after.shape == (len(names), len(names))
    assert np.abs(before - after).max() > 1e-3  # the GCN moved the class features

    served.meta = {k: v for k, v in served.meta.items() if k != "train_cooccurrence"}
    try:
        _, _, stats, cooc, heat = run_graph(served, CHECKPOINT, "", "threshold", 4, 0.4, 0.2, True)
    finally:
        served.meta["train_cooccurrence"] = labels.T.astype(np.int64).dot(labels).tolist()
    assert not cooc["visible"] and heat["visible"]
    assert "carries no co\\-occurrence counts of its training labels" in stats


REPORT = dash.BUNDLED / "synthetic-bce" / "report.json"


def _report(folder, name):
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps({**json.loads(REPORT.read_text()), "name": name}))


def test_dashboard_opens_on_the_capnet_row_and_zero_shot(tmp_path, monkeypatch):
    monkeypatch.setattr(dash, "BUNDLED", tmp_path / "reports")
    for folder, name in [
        ("synth-lt-capnet", "CAPNET (best on validation)"),
        ("synth-lt-prompts-bce", "prompts + BCE"),
        ("synth-lt-zero-shot", "zero-shot"),
        ("synthetic-bce", "synthetic-bce"),
    ]:
        _report(tmp_path / "reports" / folder, name)
    assert dash.default_selection(dash.bundled_runs()) == ["CAPNET (best on validation)", "zero-shot"]
    # reports of the earlier ablation: the capnet row's folder says more than "capnet"
    shutil.rmtree(tmp_path / "reports" / "synth-lt-capnet")
    _report(tmp_path / "reports" / "synth-lt-capnet-text-graph", "+ GCN, text-embedding graph")
    assert dash.default_selection(dash.bundled_runs()) == ["+ GCN, text-embedding graph", "zero-shot"]
    # the row the served checkpoint names comes first, whatever its folder
    named = dash.default_selection(dash.bundled_runs(), capnet_row=" prompts + BCE")
    assert named == ["prompts + BCE", "zero-shot"]
    # no Synth-LT reports at all: the first two, as before
    for folder in ("synth-lt-capnet-text-graph", "synth-lt-zero-shot"):
        shutil.rmtree(tmp_path / "reports" / folder)
    assert dash.default_selection(dash.bundled_runs()) == ["prompts + BCE", "synthetic-bce"]


def test_cli_predicts_with_the_checkpoint_offline_from_any_folder(standin, tmp_path, monkeypatch, capsys):
    folder, model, _ = standin
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("CAPNET_CLIP_WEIGHTS", raising=False)
    monkeypatch.chdir(tmp_path)
    images, _, _ = scene_batch(2, seed=6061)
    for i, image in enumerate(images):
        image.save(tmp_path / f"s{i}.png")
    argv = ["predict", "s0.png", "s1.png", "--checkpoint", str(folder / SYNTH_LT_NAME), "--format", "json"]
    assert cli.main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    expected = model.predict(torch.stack([model.image_transform()(im) for im in images]))
    for row, probs in zip(rows, expected):
        got = [row["probabilities"][name] for name in SCENE_CLASSES]
        assert np.allclose(got, probs.numpy(), atol=1e-4)


def test_the_ablation_chart_reads_every_row_and_says_why_when_it_cannot(tmp_path):
    path = tmp_path / dash.ABLATION_FILE
    table = {
        "zero-shot": {
            g: {"mean": 0.5 + 0.01 * k, "std": 0.0, "runs": [0.5]} for k, g in enumerate(dash.GROUP_ORDER)
        },
        "+ GCN, text-embedding graph": {
            **{g: {"mean": 0.7, "std": 0.02, "runs": [0.68, 0.72]} for g in dash.GROUP_ORDER},
            "val_total": {"mean": 0.9, "std": 0.0},
            "tail": {"mean": float("nan"), "std": 0.1},  # left out, not drawn as 0
        },
    }
    payload = {
        "seeds": [0, 1],
        "epochs": 15,
        "table": table,
        "shipped": {"row": "+ GCN, text-embedding graph"},
    }
    path.write_text(json.dumps(payload))
    ablation, why = dash.read_ablation(path)
    assert why == "" and ablation.shipped == "+ GCN, text-embedding graph"
    assert text.md("over 2 seed(s), 15 epochs") in ablation.caption
    fig = dash.ablation_figure(ablation)
    assert [trace.name for trace in fig.data] == list(dash.GROUP_ORDER)
    head = fig.data[1]
    assert list(head.y) == ["zero-shot", "+ GCN, text-embedding graph ★"]
    assert np.allclose(list(head.x), [51.0, 70.0]) and np.allclose(head.error_x.array, [0.0, 2.0])
    assert np.isnan(list(fig.data[3].x)[1])  # the NaN tail cell has no bar
    assert dash.read_ablation(tmp_path / "absent.json") == (None, "no absent.json, so no ablation chart")
    path.write_text("{not json")
    assert "not a JSON file" in dash.read_ablation(path)[1]
    path.write_text(json.dumps({"table": {"a row": "not a dict"}}))
    assert "no readable rows" in dash.read_ablation(path)[1]
