"""The Space starts warm: its front matter pins what the tests run and preloads the ViT-B/16 weights
into the hub cache, where `load_backbone()`, the app and `capnet predict` find them with the hub offline."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import gradio
import open_clip
import pytest
import torch
import yaml
from open_clip.pretrained import HF_WEIGHTS_NAME, _get_safe_alternatives
from PIL import Image
from safetensors.torch import save_file

from capnet.backbone import WEIGHTS_ENV

ROOT = Path(__file__).resolve().parents[1]
REVISION = "0123456789abcdef0123456789abcdef01234567"
PROBE = "visual.conv1.weight"


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def openai_vit_b16_file() -> tuple[str, str]:
    """The hub repo and the file open_clip reads for ('ViT-B-16', 'openai'): safetensors first."""
    repo, filename = os.path.split(open_clip.get_pretrained_cfg("ViT-B-16", "openai")["hf_hub"])
    return repo, next(iter(_get_safe_alternatives(filename or HF_WEIGHTS_NAME)))


def test_front_matter_pins_what_the_tests_run():
    meta = front_matter()
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert str(meta["sdk_version"]) == gradio.__version__
    assert str(meta["python_version"]) == f"{sys.version_info.major}.{sys.version_info.minor}"
    repo, filename = openai_vit_b16_file()
    assert meta["preload_from_hub"] == [f"{repo} {filename}"]


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory) -> tuple[Path, str]:
    """An HF_HOME whose hub cache holds random ViT-B/16 weights (fp16: half the bytes) where a Space's
    preload_from_hub puts the real ones; returns it and a digest of one of the tensors."""
    home = tmp_path_factory.mktemp("hf-home")
    repo, filename = openai_vit_b16_file()
    base = home / "hub" / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(REVISION)
    (base / "snapshots" / REVISION).mkdir(parents=True)
    torch.manual_seed(123)
    model = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    del model
    save_file(state, str(base / "snapshots" / REVISION / filename))
    return home, hashlib.sha256(state[PROBE].float().numpy().tobytes()).hexdigest()


def run_offline(home: Path, code: str | None = None, argv: list[str] | None = None, cwd: Path = ROOT):
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", WEIGHTS_ENV):
        env.pop(name, None)
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "capnet.cli", *(argv or [])]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


# The app with no checkpoint serves load_backbone's defaults (BackboneConfig()): ViT-B-16, 'openai'.
APP = f"""
import hashlib, tempfile
from pathlib import Path
from app.models import ModelChoice, load_served_models
from capnet.config import BackboneConfig
assert ModelChoice().backbone == BackboneConfig()
served = load_served_models(ModelChoice(), checkpoints_dir=Path(tempfile.mkdtemp()))
weights = served.backbone.model.state_dict()["{PROBE}"].float().numpy()
print(served.banner)
print(served.backbone.source, hashlib.sha256(weights.tobytes()).hexdigest())
"""


def test_the_app_and_load_backbone_defaults_read_the_hub_cache_offline(hub_home):
    home, digest = hub_home
    done = run_offline(home, APP)
    assert done.returncode == 0, done.stderr[-2000:]
    banner, loaded = done.stdout.strip().splitlines()[-2:]
    assert "Serving zero-shot ViT-B-16 (openai weights (cached))" in banner
    assert loaded.split() == ["openai", "weights", "(cached)", digest]


def test_capnet_predict_reads_the_hub_cache_offline(hub_home, tmp_path):
    Image.new("RGB", (64, 48), "red").save(tmp_path / "red.png")
    argv = ["predict", str(tmp_path / "red.png"), "--preset", "VOC", "--format", "json", "--workers", "0"]
    done = run_offline(hub_home[0], argv=argv)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout)
    assert len(rows) == 1 and len(rows[0]["probabilities"]) == 20
    # Without the cache the same command fails in one line: the cache is what made it work.
    empty = run_offline(tmp_path / "empty-home", argv=argv)
    assert empty.returncode == 2 and "not cached and the model hub cannot be reached" in empty.stderr
