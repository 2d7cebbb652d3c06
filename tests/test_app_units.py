"""The app's graph, dashboard and fine-tune functions, below the browser."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score

from app import dashboard as dash
from app import finetune as ft
from app.graph_view import cooccurrence_view, network_figure, similarity_heatmaps
from capnet.backbone import load_backbone
from capnet.data import DataError
from capnet.graph import text_graph
from capnet.model import CapNet


def test_bundled_reports_are_real_and_consistent():
    runs = dash.bundled_runs()
    assert len(runs) >= 2 and all("produced_by" in r.report for r in runs)
    for run in runs:
        # Every bundled per-class AP is reproduced from the bundled per-image scores.
        for row in run.report["per_class"]:
            if row["test_positives"]:
                y, p = run.scores[f"y:{row['class']}"], run.scores[f"p:{row['class']}"]
                assert abs(average_precision_score(y, p) - row[f"ap_{run.setting}"]) < 1e-4
    bars = dash.group_bars(runs)
    assert len(bars.data) == len(runs) and list(bars.data[0].x) == list(dash.GROUP_ORDER)
    table = dash.per_class_table(runs)
    assert len(table) == sum(len(r.report["per_class"]) for r in runs)


def test_gallery_lists_worst_misses_and_false_alarms():
    run = dash.bundled_runs()[0]
    name = next(r["class"] for r in run.report["per_class"] if r["test_positives"] > 1)
    items, note = dash.failures(run, name, k=3)
    scores = run.scores
    worst_positive = scores[scores[f"y:{name}"] == 1].sort_values(f"p:{name}").iloc[0]
    assert items and items[0][1].endswith(f"{worst_positive['image_id']} p={worst_positive[f'p:{name}']:.2f}")
    assert "missed" in items[0][1] and any("false alarm" in caption for _, caption in items)
    assert all(isinstance(image, Image.Image) and image.size[0] > 0 for image, _ in items)


def test_uploaded_reports_are_validated(tmp_path):
    good = tmp_path / "report.json"
    good.write_text((dash.BUNDLED / "synthetic-bce" / "report.json").read_text())
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"hello": 1}))
    notjson = tmp_path / "x.json"
    notjson.write_text("{{{")
    runs, problems = dash.runs_from_uploads([str(good), str(bad), str(notjson)])
    assert len(runs) == 1 and len(problems) == 2
    assert "not a capnet eval report" in problems[0] and "not a JSON file" in problems[1]


def test_graph_figures(tiny_backbone):
    feats = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    names = [f"c{i}" for i in range(6)]
    graph = text_graph(feats, names, topk=2)
    fig = network_figure(graph, np.array([500, 120, 50, 30, 5, 1]), "t")
    assert {t.name for t in fig.data[1:]} == {"head", "medium", "tail"}
    labels = np.array([[1, 1, 0, 0, 0, 0]] * 120 + [[0, 0, 1, 0, 0, 0]] * 30 + [[0, 0, 0, 1, 1, 0]] * 5)
    _, counts, note = cooccurrence_view(labels, names, "threshold", 2, 0.4, 0.2)
    assert counts.tolist() == labels.sum(0).tolist()
    assert note.startswith("3 of 3 tail classes")  # c3 and c4 co-occur only with each other; c5 never occurs
    model = CapNet(tiny_backbone(), ["cat", "dog", "bird"])
    heat = similarity_heatmaps(model)
    assert np.allclose(np.asarray(heat.data[0].z), np.asarray(heat.data[1].z), atol=1e-5)  # GCN untrained


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_fine_tune_intake_limits(tmp_path):
    with pytest.raises(DataError, match="not a valid zip"):
        ft.job_from_zip(_write(tmp_path / "a.zip", b"garbage"), tmp_path / "x1")
    with pytest.raises(DataError, match="unsafe path"):
        ft.job_from_zip(_zip(tmp_path / "b.zip", {"../evil.csv": b"path,labels\n"}), tmp_path / "x2")
    with pytest.raises(DataError, match="exactly one CSV"):
        ft.job_from_zip(_zip(tmp_path / "c.zip", {"a.jpg": b"x"}), tmp_path / "x3")
    with pytest.raises(DataError, match="unsafe path: C:/evil.csv"):
        ft.job_from_zip(_zip(tmp_path / "d.zip", {"C:/evil.csv": b"path,labels\n"}), tmp_path / "x4")
    link = zipfile.ZipInfo("link.csv")
    link.external_attr = 0o120777 << 16  # a symlink entry, as `zip --symlinks` stores one
    with zipfile.ZipFile(tmp_path / "e.zip", "w") as zf:
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(DataError, match="unsafe path: link.csv"):
        ft.job_from_zip(tmp_path / "e.zip", tmp_path / "x5")
    assert not (tmp_path / "x5").exists()  # refused before anything was extracted
    with pytest.raises(DataError, match="2 images but 1 label lines"):
        ft.job_from_images(["a.jpg", "b.jpg"], "cat")
    images = []
    for i in range(12):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (20, 20), (20 * i, 0, 0)).save(path)
        images.append(str(path))
    (tmp_path / "img0.png").write_text("broken")
    job = ft.job_from_images(images, "\n".join("cat;dog" if i % 2 else "dog" for i in range(12)))
    assert job.records.class_names == ["cat", "dog"] and len(job.records) == 11 and len(job.problems) == 1


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_one_job_at_a_time_cancelled_only_by_its_owner():
    slot = ft.JobSlot()
    first = slot.try_start("alice")
    assert first is not None and slot.try_start("bob") is None
    assert slot.held_by("alice") and not slot.held_by("bob")
    assert not slot.cancel("bob") and not first.is_set()
    assert slot.cancel("alice") and first.is_set()
    slot.finish(first)
    second = slot.try_start("bob")
    assert second is not None and not second.is_set()
    slot.finish(first)  # a late finish of the first run must not free the second's slot
    assert slot.try_start("alice") is None
    slot.finish(second)
    assert not slot.cancel("bob") and slot.try_start("alice") is not None


def _tiny_factory():
    return lambda: load_backbone(name="capnet-tiny", pretrained=None, device="cpu")


def test_cancel_stops_the_job_before_its_next_step(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(ft, "save_checkpoint", lambda *args: saved.append(args))
    ticket = ft.threading.Event()
    updates = ft.run_job(
        ft.bundled_sample(tmp_path),
        _tiny_factory(),
        parts={"prompts", "gcn"},
        epochs=20,
        lr=0.003,
        loss="bce",
        ticket=ticket,
        workdir=tmp_path / "run",
    )
    assert next(updates).epoch == 0
    assert next(updates).epoch == 1
    ticket.set()
    with pytest.raises(ft.Cancelled, match="after 1 of 20 epochs; nothing was saved"):
        next(updates)
    assert saved == []


def test_time_limit_stops_within_an_epoch_and_keeps_the_model(tmp_path, monkeypatch):
    monkeypatch.setattr(ft, "MAX_SECONDS", 0)
    updates = list(
        ft.run_job(
            ft.bundled_sample(tmp_path),
            _tiny_factory(),
            parts={"prompts"},
            epochs=3,
            lr=0.003,
            loss="bce",
            workdir=tmp_path / "run",
        )
    )
    assert [u.epoch for u in updates] == [0, 0, 0]
    assert "time limit of 0 s reached in epoch 1" in updates[1].message
    assert updates[-1].message.startswith("done") and updates[-1].checkpoint.is_file()
    assert updates[-1].losses == []


def test_fine_tune_job_trains_and_saves(tmp_path):
    job = ft.bundled_sample(tmp_path)
    made = []

    def factory():
        backbone = load_backbone(name="capnet-tiny", pretrained=None, device="cpu")
        made.append({k: v.detach().clone() for k, v in backbone.model.state_dict().items()})
        return backbone

    updates = list(
        ft.run_job(
            job,
            factory,
            parts={"prompts", "gcn"},
            epochs=2,
            lr=0.003,
            loss="bce",
            workdir=tmp_path / "run",
        )
    )
    assert [u.epoch for u in updates] == [0, 1, 2, 2]
    final = updates[-1]
    assert final.model is not None and final.checkpoint.is_file() and len(final.losses) == 2
    assert 0 <= final.before <= 1 and 0 <= final.after <= 1
    # What was frozen did not move: every CLIP tensor equals its value when the backbone was built,
    # and no adapter was attached.
    assert final.model.peft == "none"
    after = final.model.clip.state_dict()
    assert made and set(after) == set(made[0])
    unchanged = [k for k, v in made[0].items() if torch.equal(v, after[k])]
    assert len(unchanged) == len(made[0])
