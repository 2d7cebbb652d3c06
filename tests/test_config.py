"""Checks capnet.config: typed dict/YAML loading, its refusals and the to_dict/from_dict round trip."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from capnet.config import (
    AdapterConfig,
    BackboneConfig,
    ConfigError,
    GCNConfig,
    GraphConfig,
    ModelConfig,
    PromptConfig,
    from_dict,
    load_config,
    to_dict,
)

NON_DEFAULT = {
    "backbone": {"name": "ViT-B-32", "pretrained": None, "weights": "/w.pt", "quick_gelu": True},
    "prompt": {"n_ctx": 8, "init": "a photo of a", "init_std": 0.01},
    "graph": {"sparsify": "threshold", "threshold": 0.7, "p": 0.3, "templates": ["a {}.", "the {}"]},
    "gcn": {"enabled": False, "layers": 2, "hidden": 128},
    "adapter": {"kind": "lora", "lora_rank": 2, "lora_targets": ["mlp.c_fc"]},
    "init_logit_scale": 50.0,
    "learn_temperature": False,
}


def test_from_dict_builds_nested_dataclasses():
    cfg = from_dict(ModelConfig, NON_DEFAULT)
    assert isinstance(cfg, ModelConfig)
    assert isinstance(cfg.backbone, BackboneConfig) and isinstance(cfg.prompt, PromptConfig)
    assert isinstance(cfg.graph, GraphConfig) and isinstance(cfg.gcn, GCNConfig)
    assert isinstance(cfg.adapter, AdapterConfig)
    assert cfg.backbone.name == "ViT-B-32" and cfg.backbone.pretrained is None
    assert cfg.backbone.quick_gelu is True and cfg.backbone.device == "auto"  # default kept
    assert cfg.prompt.n_ctx == 8 and cfg.prompt.init == "a photo of a"
    assert cfg.graph.sparsify == "threshold" and cfg.graph.templates == ["a {}.", "the {}"]
    assert cfg.graph.topk == 4  # default kept
    assert cfg.gcn.enabled is False and cfg.gcn.hidden == 128
    assert cfg.adapter.kind == "lora" and cfg.adapter.lora_targets == ["mlp.c_fc"]
    assert cfg.adapter.bottleneck == 2
    assert cfg.init_logit_scale == 50.0 and cfg.learn_temperature is False


def test_empty_dict_gives_defaults():
    assert from_dict(ModelConfig, {}) == ModelConfig()
    assert from_dict(ModelConfig, {"gcn": {}}) == ModelConfig()


@pytest.mark.parametrize(
    "data, where, key",
    [
        ({"backbon": {}}, "config", "backbon"),
        ({"graph": {"topK": 3}}, "config.graph", "topK"),
        ({"adapter": {"kind": "lora", "rank": 2}}, "config.adapter", "rank"),
    ],
)
def test_unknown_keys_are_named_with_the_valid_keys(data, where, key):
    with pytest.raises(ConfigError) as info:
        from_dict(ModelConfig, data)
    msg = str(info.value)
    assert msg.startswith(f"{where}: unknown key(s) ['{key}']")
    section = ModelConfig if where == "config" else type(getattr(ModelConfig(), where.split(".")[1]))
    valid = sorted(f.name for f in dataclasses.fields(section))
    assert f"valid keys are {valid}" in msg


@pytest.mark.parametrize(
    "data, where",
    [
        ({"prompt": {"n_ctx": "16"}}, "config.prompt.n_ctx"),  # string for int
        ({"prompt": {"n_ctx": True}}, "config.prompt.n_ctx"),  # bool for int
        ({"graph": {"topk": 4.0}}, "config.graph.topk"),  # float for int
        ({"gcn": {"hidden": False}}, "config.gcn.hidden"),  # bool for int | None
        ({"prompt": {"init_std": "small"}}, "config.prompt.init_std"),  # non-numeric string for float
        ({"graph": {"p": True}}, "config.graph.p"),  # bool for float
        ({"gcn": {"enabled": 1}}, "config.gcn.enabled"),  # int for bool
        ({"backbone": {"name": 16}}, "config.backbone.name"),  # int for str
        ({"backbone": {"quick_gelu": "yes"}}, "config.backbone.quick_gelu"),  # str for bool | None
        ({"adapter": {"lora_targets": "mlp.c_fc"}}, "config.adapter.lora_targets"),  # str for list
        ({"adapter": {"lora_targets": ["mlp.c_fc", 3]}}, "config.adapter.lora_targets[1]"),
        ({"graph": {"templates": 3}}, "config.graph.templates"),  # fits neither str nor list[str]
        ({"backbone": "ViT-B-16"}, "config.backbone"),  # str for a section
        ({"init_logit_scale": "high"}, "config.init_logit_scale"),
    ],
)
def test_wrong_types_are_refused(data, where):
    with pytest.raises(ConfigError) as info:
        from_dict(ModelConfig, data)
    assert str(info.value).startswith(f"{where}:")


def test_ints_are_accepted_for_floats():
    cfg = from_dict(ModelConfig, {"prompt": {"init_std": 1}, "graph": {"p": 0}, "init_logit_scale": 50})
    assert cfg.prompt.init_std == 1.0 and type(cfg.prompt.init_std) is float
    assert cfg.graph.p == 0.0 and type(cfg.graph.p) is float
    assert cfg.init_logit_scale == 50.0 and type(cfg.init_logit_scale) is float


def test_optionals_accept_none():
    cfg = from_dict(
        ModelConfig, {"gcn": {"hidden": None}, "init_logit_scale": None, "prompt": {"init": None}}
    )
    assert cfg.gcn.hidden is None and cfg.init_logit_scale is None and cfg.prompt.init is None


def test_literal_fields_validate():
    for kind in ["auto", "none", "adaptformer", "lora", "bias_norm"]:
        assert from_dict(AdapterConfig, {"kind": kind}).kind == kind
    assert from_dict(GraphConfig, {"sparsify": "threshold"}).sparsify == "threshold"
    for data, field in [
        ({"adapter": {"kind": "LoRA"}}, "adapter.kind"),
        ({"adapter": {"kind": "prefix"}}, "adapter.kind"),
        ({"graph": {"sparsify": "knn"}}, "graph.sparsify"),
        ({"graph": {"sparsify": None}}, "graph.sparsify"),
    ]:
        with pytest.raises(ConfigError, match=rf"config\.{field}: .* is not one of \["):
            from_dict(ModelConfig, data)


def test_round_trip_default_and_non_default():
    for cfg in (ModelConfig(), from_dict(ModelConfig, NON_DEFAULT)):
        data = to_dict(cfg)
        assert isinstance(data, dict) and isinstance(data["graph"], dict)
        assert data == dataclasses.asdict(cfg)
        again = from_dict(ModelConfig, data)
        assert again == cfg
        # A plain-data copy: editing the dict never reaches the config.
        data["adapter"]["lora_targets"].append("x")
        assert "x" not in cfg.adapter.lora_targets
    assert from_dict(ModelConfig, NON_DEFAULT) != ModelConfig()


# ----------------------------------------------------------------------------- YAML files


def test_load_config_from_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "backbone:\n"
        "  name: RN50\n"
        "  pretrained: null\n"
        "prompt:\n"
        "  n_ctx: 4\n"
        "graph:\n"
        "  sparsify: threshold\n"
        "  templates:\n"
        "    - 'a photo of a {}.'\n"
        "    - 'art of the {}.'\n"
        "gcn:\n"
        "  enabled: false\n"
        "init_logit_scale: 30\n"
    )
    cfg = load_config(path)
    want = ModelConfig(
        backbone=BackboneConfig(name="RN50", pretrained=None),
        prompt=PromptConfig(n_ctx=4),
        graph=GraphConfig(sparsify="threshold", templates=["a photo of a {}.", "art of the {}."]),
        gcn=GCNConfig(enabled=False),
        init_logit_scale=30.0,
    )
    assert cfg == want


def test_yaml_round_trip(tmp_path):
    cfg = from_dict(ModelConfig, NON_DEFAULT)
    path = tmp_path / "dump.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert load_config(path) == cfg


def test_empty_yaml_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert load_config(path) == ModelConfig()


def test_load_config_other_class(tmp_path):
    path = tmp_path / "gcn.yaml"
    path.write_text("layers: 5\nhidden: 32\n")
    assert load_config(path, GCNConfig) == GCNConfig(layers=5, hidden=32)


def _one_line_error(path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "\n" not in msg and msg
    return msg


def test_missing_file(tmp_path):
    msg = _one_line_error(tmp_path / "absent.yaml")
    assert msg.startswith("config file not found:") and "absent.yaml" in msg
    assert _one_line_error(tmp_path).startswith("config file not found:")  # a folder


@pytest.mark.parametrize("text", ["backbone: [unclosed\n", "a: b: c\n", "key: 'open\n", "\tx: 1\n"])
def test_invalid_yaml(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    msg = _one_line_error(path)
    assert "not valid YAML" in msg and "bad.yaml" in msg


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_top_level(tmp_path, text):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    msg = _one_line_error(path)
    assert "top level must be a mapping" in msg


def test_yaml_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("graph:\n  topK: 3\n")
    msg = _one_line_error(path)
    assert msg.startswith("typo.yaml.graph: unknown key(s) ['topK']")
    path.write_text("prompt:\n  n_ctx: sixteen\n")
    assert _one_line_error(path).startswith("typo.yaml.prompt.n_ctx: expected int")


def test_yaml_exponent_floats_are_numbers(tmp_path):
    # PyYAML reads 1e-3 as a string (YAML 1.1); a config author means a number.
    path = tmp_path / "exp.yaml"
    path.write_text("prompt:\n  init_std: 1e-3\n")
    assert load_config(path).prompt.init_std == 0.001
