"""Checks capnet.checkpoint: file contents read back with safetensors itself, exact reloads, rebuilds from
metadata, refusals of foreign files (without ever unpickling) and atomic writes."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import capnet
import capnet.checkpoint as ckpt_mod
from capnet.backbone import WEIGHTS_ENV, load_backbone
from capnet.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    read_metadata,
    save_checkpoint,
)
from capnet.config import ModelConfig, PromptConfig
from capnet.model import CapNet

CLASSES = ["cat", "dog", "traffic light"]


def trainable_names(model: CapNet) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def make_trained(tiny_backbone, classes=CLASSES, name="capnet-tiny", seed=0, config=None) -> CapNet:
    """A model whose every trained part moved away from its initial value, as after training."""
    model = CapNet(tiny_backbone(name, seed), classes, config)
    gen = torch.Generator().manual_seed(1234)
    names = trainable_names(model)
    # The groups the brief lists are all trainable (otherwise the test below would prove less).
    assert {"prompts.ctx", "class_bias", "logit_scale"} <= names
    assert any(n.startswith("gcn.") for n in names)
    assert any(".adapter." in n for n in names)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n == "logit_scale":
                p.add_(-0.3)
            elif p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def images(seed: int = 0) -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def trained(tiny_backbone, tmp_path):
    model = make_trained(tiny_backbone)
    path = save_checkpoint(model, tmp_path / "model.safetensors")
    return model, path


# ----------------------------------------------------------------------------- file contents


def test_file_holds_exactly_the_trainable_tensors(trained):
    model, path = trained
    params = dict(model.named_parameters())
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        assert keys == trainable_names(model)
        for key in keys:
            torch.testing.assert_close(f.get_tensor(key), params[key].detach(), atol=0, rtol=0)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and not (keys & frozen)
    assert not any(k.startswith("clip.") and ".adapter." not in k for k in keys)


def test_file_metadata(trained):
    model, path = trained
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["capnet"])
    assert meta["backbone"] == {"name": "capnet-tiny", "pretrained": None}
    assert meta["class_names"] == CLASSES
    assert meta["config"] == asdict(model.config)
    assert meta["config"]["backbone"]["name"] == "capnet-tiny"
    assert meta["capnet_version"] == version("capnet") == capnet.__version__
    assert meta["zero_shot"] is False
    assert read_metadata(path) == meta


def test_file_is_far_smaller_than_the_backbone(trained):
    model, path = trained
    backbone_bytes = sum(p.numel() * p.element_size() for p in model.clip.parameters())
    trained_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    size = path.stat().st_size
    assert backbone_bytes > 10_000_000
    assert size < backbone_bytes / 50
    assert trained_bytes <= size < trained_bytes + 64_000  # tensors plus a JSON header


def test_extra_metadata_is_stored(tiny_backbone, tmp_path):
    model = make_trained(tiny_backbone)
    path = save_checkpoint(model, tmp_path / "sub" / "dir" / "m.safetensors", extra={"epoch": 7})
    assert path.is_file()
    assert read_metadata(path)["epoch"] == 7


# ----------------------------------------------------------------------------- reloading


def test_load_into_fresh_model_reproduces_predictions(trained, tiny_backbone):
    model, path = trained
    x = images()
    want = model.predict_logits(x)
    fresh = CapNet(tiny_backbone("capnet-tiny", 0), CLASSES).eval()
    assert not torch.allclose(fresh.predict_logits(x), want, atol=1e-3)  # loading has work to do
    meta = load_checkpoint(fresh, path)
    assert meta["class_names"] == CLASSES
    torch.testing.assert_close(fresh.predict_logits(x), want, atol=1e-6, rtol=0)
    torch.testing.assert_close(fresh.predict(x), torch.sigmoid(want), atol=1e-6, rtol=0)
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(dict(fresh.named_parameters())[name], p, atol=0, rtol=0)


@pytest.mark.parametrize("overrides", [{"device": "cpu"}, {"device": "cpu", "pretrained": None}])
def test_model_from_checkpoint_rebuilds(trained, overrides):
    model, path = trained
    x = images(1)
    torch.manual_seed(12345)  # the random tower comes from the recorded init_seed, not the global state
    rebuilt = model_from_checkpoint(path, **overrides).eval()
    assert rebuilt.class_names == CLASSES
    assert rebuilt.config == model.config
    assert rebuilt.config.backbone.name == "capnet-tiny"
    torch.testing.assert_close(rebuilt.predict_logits(x), model.predict_logits(x), atol=1e-6, rtol=0)


def test_rebuild_on_other_backbone_weights_is_refused(trained):
    # A different seed gives different random backbone weights: the file carries none of them, but its
    # fingerprint of the frozen weights tells that they differ.
    _, path = trained
    with pytest.raises(CheckpointError, match="other capnet-tiny weights.*--weights PATH"):
        model_from_checkpoint(path, device="cpu", init_seed=1)


# ----------------------------------------------------------------------------- mismatches


def _params_snapshot(model: CapNet) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_unchanged(model: CapNet, before: dict[str, torch.Tensor]) -> None:
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_different_class_list_is_refused(trained, tiny_backbone):
    _, path = trained
    other = CapNet(tiny_backbone(), ["cat", "dog", "bird"])
    before = _params_snapshot(other)
    with pytest.raises(CheckpointError, match="different class list") as info:
        load_checkpoint(other, path)
    msg = str(info.value)
    assert "traffic light" in msg and "bird" in msg and "model.safetensors" in msg
    _assert_unchanged(other, before)


def test_different_class_order_is_refused(trained, tiny_backbone):
    _, path = trained
    other = CapNet(tiny_backbone(), ["dog", "cat", "traffic light"])
    before = _params_snapshot(other)
    with pytest.raises(CheckpointError, match=r"different class list \(order\)"):
        load_checkpoint(other, path)
    _assert_unchanged(other, before)


def test_different_backbone_is_refused(trained, tiny_backbone):
    _, path = trained
    other = CapNet(tiny_backbone("capnet-tiny-rn"), CLASSES)
    before = _params_snapshot(other)
    with pytest.raises(CheckpointError, match="backbone") as info:
        load_checkpoint(other, path)
    msg = str(info.value)
    assert "capnet-tiny-rn" in msg and "trained on backbone capnet-tiny " in msg
    _assert_unchanged(other, before)


def test_different_trainable_parts_are_refused(trained, tiny_backbone):
    _, path = trained
    config = ModelConfig()
    config.gcn.enabled = False
    other = CapNet(tiny_backbone(), CLASSES, config)
    with pytest.raises(CheckpointError, match="does not fit this model's trainable parts") as info:
        load_checkpoint(other, path)
    assert "gcn.layers" in str(info.value)


def test_different_prompt_length_is_refused(trained, tiny_backbone):
    _, path = trained
    other = CapNet(tiny_backbone(), CLASSES, ModelConfig(prompt=PromptConfig(n_ctx=4)))
    with pytest.raises(CheckpointError, match=r"prompts\.ctx \(3, 16, 64\) vs \(3, 4, 64\)"):
        load_checkpoint(other, path)


@pytest.fixture
def no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)


def test_pickle_file_is_refused_without_unpickling(tmp_path, tiny_backbone, no_unpickling):
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"class_names": CLASSES, "weights": list(range(100))}))
    model = CapNet(tiny_backbone(), CLASSES)
    for call in (lambda: read_metadata(path), lambda: load_checkpoint(model, path)):
        with pytest.raises(CheckpointError, match="is not a safetensors checkpoint"):
            call()
    with pytest.raises(CheckpointError, match="is not a safetensors checkpoint"):
        model_from_checkpoint(path, device="cpu")


def test_empty_file_is_refused(tmp_path, no_unpickling):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is not a safetensors checkpoint"):
        read_metadata(path)


@pytest.mark.parametrize("metadata", [None, {"other": "value"}])
def test_safetensors_without_capnet_metadata_is_refused(tmp_path, metadata):
    path = tmp_path / "plain.safetensors"
    save_file({"prompts.ctx": torch.zeros(3, 16, 64)}, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match="has no capnet metadata"):
        read_metadata(path)
    with pytest.raises(CheckpointError, match="has no capnet metadata"):
        model_from_checkpoint(path, device="cpu")


def test_unknown_format_is_refused(trained, tmp_path):
    _, path = trained
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["capnet"])
        names = f.keys()  # a safe_open handle is not iterable like a dict
        tensors = {k: f.get_tensor(k) for k in names}
    meta["format"] = "capnet-checkpoint/99"
    other = tmp_path / "future.safetensors"
    save_file(tensors, str(other), metadata={"capnet": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="unsupported checkpoint format 'capnet-checkpoint/99'"):
        read_metadata(other)


def test_corrupt_capnet_metadata_is_a_checkpoint_error(tmp_path):
    # BUG (capnet/checkpoint.py, read_metadata): the 'capnet' metadata string goes straight into
    # json.loads, so a file whose metadata is not JSON raises a bare json.JSONDecodeError ("Expecting
    # value: line 1 column 1 (char 0)") instead of CheckpointError, and JSON that is not an object (e.g. a
    # list) raises AttributeError on meta.get. Both are "unreadable checkpoints" that the module promises
    # to report as CheckpointError. This test fails until read_metadata wraps json.loads and checks the
    # result is a dict.
    path = tmp_path / "corrupt.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"capnet": "{not json"})
    with pytest.raises(CheckpointError):
        read_metadata(path)
    save_file({"x": torch.zeros(1)}, str(path), metadata={"capnet": "[1, 2]"})
    with pytest.raises(CheckpointError):
        read_metadata(path)


def test_missing_file_is_refused(tmp_path, tiny_backbone):
    path = tmp_path / "nowhere.safetensors"
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nowhere.safetensors"):
        read_metadata(path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        model_from_checkpoint(path, device="cpu")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(CapNet(tiny_backbone(), CLASSES, zero_shot=True), path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_metadata(tmp_path)  # a folder is not a checkpoint either


# ----------------------------------------------------------------------------- atomic writes


def test_save_leaves_no_temporary_files(trained, tmp_path):
    model, path = trained
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]
    save_checkpoint(model, path)  # overwrite in place
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]


def test_failed_save_keeps_previous_checkpoint(trained, tmp_path, tiny_backbone, monkeypatch):
    model, path = trained
    good = path.read_bytes()
    seen = []

    def broken_save_file(tensors, filename, metadata=None):
        seen.append(filename)
        with open(filename, "wb") as f:
            f.write(b"\x00garbage" * 100)
        raise RuntimeError("disk full")

    monkeypatch.setattr(ckpt_mod, "save_file", broken_save_file)
    other = make_trained(tiny_backbone, seed=0)
    with torch.no_grad():
        other.class_bias.add_(1.0)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(other, path)
    assert seen and os.path.abspath(seen[0]) != os.path.abspath(path)  # wrote elsewhere first
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]
    fresh = CapNet(tiny_backbone(), CLASSES).eval()
    load_checkpoint(fresh, path)
    x = images(3)
    torch.testing.assert_close(fresh.predict_logits(x), model.predict_logits(x), atol=1e-6, rtol=0)


def test_a_checkpoint_is_readable_like_any_file_and_written_beside_itself(trained, tmp_path, monkeypatch):
    model, path = trained
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not the 0600 of a temp file
    seen = []
    real_save_file = ckpt_mod.save_file
    monkeypatch.setattr(
        ckpt_mod,
        "save_file",
        lambda t, name, metadata: seen.append(name) or real_save_file(t, name, metadata),
    )
    save_checkpoint(model, path)
    temp = Path(seen[0])
    # The temporary file sits in the same folder (so the rename is atomic), hidden, with a .tmp suffix.
    assert (
        temp.parent == path.parent and temp.name.startswith(f".{path.name}.") and temp.name.endswith(".tmp")
    )
    assert not temp.exists()


# ----------------------------------------------------------------------------- rebuilding from metadata


def test_a_checkpoint_without_a_fingerprint_still_loads(trained, tiny_backbone, tmp_path):
    # Checkpoints written before fingerprints were recorded carry none: nothing to compare, so they load.
    model, path = trained
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["capnet"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    del meta["backbone_fingerprint"]
    older = tmp_path / "older.safetensors"
    save_file(tensors, str(older), metadata={"capnet": json.dumps(meta)})
    fresh = CapNet(tiny_backbone(), CLASSES).eval()
    load_checkpoint(fresh, older)
    x = images(4)
    torch.testing.assert_close(fresh.predict_logits(x), model.predict_logits(x), atol=1e-6, rtol=0)


def test_a_zero_shot_checkpoint_rebuilds_a_zero_shot_model(tiny_backbone, tmp_path):
    model = CapNet(tiny_backbone(), CLASSES, zero_shot=True).eval()
    path = save_checkpoint(model, tmp_path / "zs.safetensors")
    rebuilt = model_from_checkpoint(path, device="cpu").eval()
    assert rebuilt.zero_shot is True and rebuilt.prompts is None
    x = images(5)
    torch.testing.assert_close(rebuilt.predict_logits(x), model.predict_logits(x), atol=1e-6, rtol=0)


def test_a_cooccurrence_checkpoint_is_not_rebuilt_from_metadata_alone(tiny_backbone, tmp_path):
    config = ModelConfig()
    config.graph.source = "cooccurrence"
    labels = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]])
    model = CapNet(tiny_backbone(), CLASSES, config, train_labels=labels)
    path = save_checkpoint(model, tmp_path / "cooc.safetensors")
    with pytest.raises(CheckpointError) as info:
        model_from_checkpoint(path, device="cpu")
    assert str(info.value) == (
        "cooc.safetensors uses a co-occurrence graph, which is rebuilt from the training labels: "
        "build CapNet(..., train_labels=...) and call load_checkpoint"
    )


SYNTH = Path(__file__).resolve().parents[1] / "checkpoints" / "capnet-synth.safetensors"


def _trained_on_weights_file(tmp_path: Path, weights: str) -> tuple[CapNet, Path]:
    """A model on the shipped tiny CLIP loaded from ``weights``, saved to tmp_path/run/model.safetensors."""
    backbone = load_backbone(name="capnet-synth", pretrained=None, device="cpu", weights=weights)
    model = CapNet(backbone, CLASSES).eval()
    with torch.no_grad():
        model.class_bias.add_(torch.tensor([0.5, -0.25, 1.0]))
    return model, save_checkpoint(model, tmp_path / "run" / "model.safetensors")


def _same_predictions(rebuilt: CapNet, model: CapNet) -> None:
    side = model.clip.visual.image_size[0]
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(rebuilt.eval().predict_logits(x), model.predict_logits(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("recorded", ["absolute", "relative"])
def test_rebuild_uses_the_weights_file_where_it_was(tmp_path, monkeypatch, recorded):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w").mkdir()
    shutil.copy(SYNTH, tmp_path / "w" / "synth.safetensors")
    weights = str(tmp_path / "w" / "synth.safetensors") if recorded == "absolute" else "w/synth.safetensors"
    model, path = _trained_on_weights_file(tmp_path, weights)
    assert read_metadata(path)["config"]["backbone"]["weights"] == weights
    _same_predictions(model_from_checkpoint(path), model)


def test_rebuild_finds_the_weights_file_beside_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    (tmp_path / "w").mkdir()
    shutil.copy(SYNTH, tmp_path / "w" / "synth.safetensors")
    model, path = _trained_on_weights_file(tmp_path, str(tmp_path / "w" / "synth.safetensors"))
    # Shipped together: the recorded folder is gone, the file lies next to the checkpoint.
    shutil.move(tmp_path / "w" / "synth.safetensors", path.parent / "synth.safetensors")
    _same_predictions(model_from_checkpoint(path), model)


def test_rebuild_without_its_weights_file_is_refused_unless_weights_are_named(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    (tmp_path / "w").mkdir()
    recorded = str(tmp_path / "w" / "synth.safetensors")
    shutil.copy(SYNTH, recorded)
    model, path = _trained_on_weights_file(tmp_path, recorded)
    moved = shutil.move(recorded, tmp_path / "elsewhere.safetensors")
    with pytest.raises(CheckpointError) as info:
        model_from_checkpoint(path)
    assert str(info.value) == (
        f"model.safetensors was trained on the weights file {recorded}, which is not on this machine: "
        f"pass it with --weights PATH (or set {WEIGHTS_ENV})"
    )
    _same_predictions(model_from_checkpoint(path, weights=str(moved)), model)
    monkeypatch.setenv(WEIGHTS_ENV, str(moved))
    _same_predictions(model_from_checkpoint(path), model)


def test_a_checkpoint_keeps_its_own_model_config(tiny_backbone, tmp_path):
    config = ModelConfig(prompt=PromptConfig(n_ctx=4))
    model = make_trained(tiny_backbone, config=config)
    path = save_checkpoint(model, tmp_path / "short.safetensors")
    rebuilt = model_from_checkpoint(path, device="cpu").eval()
    assert rebuilt.config.prompt.n_ctx == 4 and rebuilt.prompts.ctx.shape == model.prompts.ctx.shape
    x = images(7)
    torch.testing.assert_close(rebuilt.predict_logits(x), model.predict_logits(x), atol=1e-6, rtol=0)


def test_another_pretrained_tag_is_refused(trained, tiny_backbone, tmp_path):
    _, path = trained
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["capnet"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta["backbone"]["pretrained"] = " OpenAI "  # read as the tag it names
    other = tmp_path / "tagged.safetensors"
    save_file(tensors, str(other), metadata={"capnet": json.dumps(meta)})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(CapNet(tiny_backbone(), CLASSES), other)
    assert str(info.value) == (
        "tagged.safetensors was trained on backbone capnet-tiny (OpenAI), "
        "but the model uses capnet-tiny (None)"
    )


def test_the_class_list_message_names_both_sides(trained, tiny_backbone):
    _, path = trained
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(CapNet(tiny_backbone(), ["cat", "dog", "bird"]), path)
    assert str(info.value) == (
        "model.safetensors has a different class list (not in the model: ['traffic light']; not in the "
        "checkpoint: ['bird']); the checkpoint's classes: ['cat', 'dog', 'traffic light']"
    )
    with pytest.raises(CheckpointError) as info:  # a class missing on one side only is not "order"
        load_checkpoint(CapNet(tiny_backbone(), ["cat", "dog"]), path)
    assert str(info.value) == (
        "model.safetensors has a different class list (not in the model: ['traffic light']; not in the "
        "checkpoint: []); the checkpoint's classes: ['cat', 'dog', 'traffic light']"
    )
