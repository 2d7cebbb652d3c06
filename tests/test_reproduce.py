"""`capnet reproduce` against a local HTTP server: fetch, train, evaluate, serve; the CPU question."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from capnet import cli, reproduce
from capnet.checkpoint import model_from_checkpoint, read_metadata
from capnet.config import load_run_config
from capnet.data.download import human_bytes, load_manifest
from tests.fileserver import FileServer
from tests.standins import TINY_RUN, build_voc, voc_manifest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> dict:
    return build_voc(tmp_path_factory.mktemp("voc-src"))


def _argv(manifest: Path, *extra: str) -> list[str]:
    sets = [a for s in TINY_RUN for a in ("--set", s)]
    config = str(ROOT / "configs" / "voc_lt.yaml")
    return [
        "reproduce",
        "voc-lt",
        "--manifest",
        str(manifest),
        "--root",
        "data",
        "--config",
        config,
        *sets,
        *extra,
    ]


def test_reproduce_fetches_trains_evaluates_and_serves_the_checkpoint(tmp_path, voc, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with FileServer() as server:
        manifest = voc_manifest(tmp_path, voc, server)
        assert cli.main(_argv(manifest, "--yes", "--retries", "0")) == 0
        assert len(server.requests) == 3
    out, err = capsys.readouterr()
    result = json.loads(out)
    total = sum(len(content) for content in voc["files"].values())
    assert f"will download {human_bytes(total)}," in err and "roughly" in err
    served = Path(result["served"])
    assert served == Path("checkpoints") / "capnet-voc-lt.safetensors"
    assert served.read_bytes() == Path(result["checkpoint"]).read_bytes()
    report = json.loads(Path(result["report"]).read_text())
    assert report["num_images"] == 8 and report["results"]["single"] == result["results"]["single"]
    assert read_metadata(served)["class_freq"] is not None
    torch.manual_seed(0)
    assert list(model_from_checkpoint(served).class_names) == report["class_names"]


def test_a_cpu_run_without_a_terminal_is_refused_before_any_download(tmp_path, voc, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with FileServer() as server:
        manifest = voc_manifest(tmp_path, voc, server)
        assert cli.main(_argv(manifest)) == 2  # pytest's stdin is not a terminal
        assert server.requests == []
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("capnet: error: this would train on the CPU") and "--yes" in err[-1]
    assert not (tmp_path / "data").exists() and not (tmp_path / "checkpoints").exists()


def test_a_declined_cpu_run_does_nothing(tmp_path, voc, monkeypatch):
    monkeypatch.chdir(tmp_path)
    questions = []
    with FileServer() as server:
        manifest = load_manifest(voc_manifest(tmp_path, voc, server))
        cfg = load_run_config(str(ROOT / "configs" / "voc_lt.yaml"), TINY_RUN)
        answer = reproduce.reproduce(
            manifest, "data", cfg, ask=lambda q: questions.append(q) or False, say=print
        )
        assert answer is None and questions and server.requests == []


def test_the_estimate_follows_the_device(tmp_path, monkeypatch):
    manifest = load_manifest("voc-lt")
    cfg = load_run_config(str(ROOT / "configs" / "voc_lt.yaml"), [])
    monkeypatch.setattr(reproduce, "select_device", lambda preference: torch.device("cpu"))
    on_cpu = reproduce.estimate(manifest, tmp_path, cfg)
    # DATA-SOURCES.md: img_id.txt 13,704 + VOCtrainval 1,999,639,040 + VOCtest 451,020,800 bytes
    assert on_cpu.download_bytes == 2_450_673_544
    assert on_cpu.device.startswith("cpu") and on_cpu.seconds > 1800
    monkeypatch.setattr(reproduce, "select_device", lambda preference: torch.device("cuda"))
    on_gpu = reproduce.estimate(manifest, tmp_path, cfg)
    assert on_gpu.device == "cuda" and on_gpu.seconds < on_cpu.seconds / 10
    assert "roughly" in on_gpu.describe() and "2.5 GB" in on_gpu.describe()


def test_the_readme_states_the_manifests_download_sizes():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Reproducing the benchmarks") :].split("\n## ", 1)[0]
    for name in ("voc-lt", "coco-lt"):
        manifest = load_manifest(name)
        assert f"{sum(e.bytes for e in manifest.files) / 1e9:.2f} GB" in section
        assert f"make reproduce DATASET={name}" in section and f"capnet reproduce {name}" in section
    assert f"{load_manifest('coco-lt').images.count:,} training images one by one" in section
