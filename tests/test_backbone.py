"""Backbone loading: devices, weight resolution (tag, cache, file, env var), QuickGELU, offline errors."""

from __future__ import annotations

import time
import warnings

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file

from capnet import backbone as bb
from capnet.backbone import WEIGHTS_ENV, WeightsUnavailableError, load_backbone, plan_weights, select_device
from capnet.config import BackboneConfig


def test_select_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device().type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device().type == "cpu"
    assert select_device("cpu") == torch.device("cpu")


def test_autocast_is_bf16_on_gpu_and_off_on_cpu():
    with bb.autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CUDA is not available": the object is still built
        ctx = bb.autocast(torch.device("cuda"))
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("name", "tag", "quick"),
    [("ViT-B-16", "openai", True), ("RN50", "openai", True), ("ViT-B-16", "laion2b_s34b_b88k", False)],
)
def test_quick_gelu_follows_the_tag(name, tag, quick, tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    plan = plan_weights(
        BackboneConfig(name=name, pretrained=tag, cache_dir=str(tmp_path)), probe=lambda: True
    )
    assert plan.quick_gelu is quick
    assert plan.checkpoint is None and plan.source.endswith("(downloaded)")
    assert plan.preprocess_overrides["mean"] == open_clip.get_pretrained_cfg(name, tag)["mean"]
    forced = plan_weights(BackboneConfig(name=name, pretrained=tag, quick_gelu=not quick), probe=lambda: True)
    assert forced.quick_gelu is (not quick)


def test_offline_without_weights_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        load_backbone(name="ViT-B-16", pretrained="openai", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 5, "an offline machine must not wait for hub retries"
    message = str(info.value)
    assert "\n" not in message
    for hint in ("--weights PATH", "model.backbone.weights", WEIGHTS_ENV, "--pretrained none", "ViT-B-16"):
        assert hint in message


def test_unknown_model_and_tag_are_named():
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Q-99'"):
        plan_weights(BackboneConfig(name="ViT-Q-99"))
    with pytest.raises(ValueError, match="not a pretrained tag of ViT-B-16.*openai"):
        plan_weights(BackboneConfig(name="ViT-B-16", pretrained="nonsense"))
    with pytest.raises(WeightsUnavailableError, match="weights file not found"):
        plan_weights(BackboneConfig(name="capnet-tiny", pretrained=None, weights="/no/such/file.safetensors"))


def test_local_weights_file_is_loaded(tiny_backbone, tmp_path):
    source = tiny_backbone(seed=1).model
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = tiny_backbone(seed=2, weights=str(path))
    assert loaded.source == f"local file {path}"
    for (name, a), b in zip(source.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_env_var_stands_in_for_the_tag(tmp_path, monkeypatch):
    path = tmp_path / "clip.bin"
    path.write_bytes(b"x")
    monkeypatch.setenv(WEIGHTS_ENV, str(path))
    plan = plan_weights(BackboneConfig(name="ViT-B-16", pretrained="openai"), probe=lambda: False)
    assert plan.checkpoint == str(path) and plan.quick_gelu
    assert str(path) in plan.source


def test_cached_openai_vit_b16_loads_offline_with_quick_gelu(tmp_path, monkeypatch):
    """The real default path: ViT-B/16 'openai' found in the hub cache, no network, QuickGELU switched on."""
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    reference = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
    repo_id = open_clip.get_pretrained_cfg("ViT-B-16", "openai")["hf_hub"].rstrip("/")
    repo_dir = tmp_path / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0123456789abcdef")
    save_file(
        {k: v.contiguous() for k, v in reference.state_dict().items()},
        str(snapshot / "open_clip_model.safetensors"),
    )

    loaded = load_backbone(name="ViT-B-16", pretrained="openai", cache_dir=str(tmp_path), device="cpu")
    assert loaded.source == "openai weights (cached)"
    assert isinstance(loaded.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert isinstance(loaded.model.transformer.resblocks[0].mlp.gelu, QuickGELU)
    image = torch.randn(1, 3, 224, 224)
    assert torch.allclose(loaded.model.encode_image(image), reference.encode_image(image), atol=1e-5)
    assert loaded.embed_dim == 512 and loaded.image_size == 224
