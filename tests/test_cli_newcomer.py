"""The command line as a newcomer meets it (issue 16): their own CSV data through train, eval and predict on
random and on local weights, resume that refuses what it cannot continue, one-line errors in the user's
vocabulary, output and help."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open

from capnet import cli
from capnet.checkpoint import model_from_checkpoint
from capnet.config import RunConfig, from_dict, load_run_config
from capnet.world.squares import COLOURS, write_csv_dataset

ROOT = Path(__file__).resolve().parents[1]
SYNTH = ROOT / "checkpoints" / "capnet-synth.safetensors"
CLASSES = sorted(COLOURS)


def make_data(root: Path) -> Path:
    """train/labels.csv and test/labels.csv, each beside its images (every class in both splits)."""
    write_csv_dataset(root / "train", 40, 2)
    write_csv_dataset(root / "test", 24, 13)
    return root


def config(tmp_path: Path, **model) -> dict:
    backbone = {"name": "capnet-tiny", "pretrained": None, "device": "cpu", **model}
    return {
        "name": "mine",
        "model": {"backbone": backbone, "prompt": {"n_ctx": 4}, "adapter": {"kind": "none"}},
        "data": {"format": "csv", "root": "data", "train": "train/labels.csv", "test": "test/labels.csv",
                 "num_workers": 0, "val_fraction": 0.25},
        "train": {"epochs": 2, "batch_size": 16, "optimizer": "adamw", "lr": 0.003, "warmup_epochs": 0.5,
                  "cache_dir": "cache", "out_dir": "runs"},
        "eval": {"tta": False, "batch_size": 32},
    }  # fmt: skip


def write_config(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.yaml").write_text(yaml.safe_dump(data))
    return folder / "run.yaml"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder with data and a config (relative paths), and a different current folder."""
    make_data(tmp_path / "project" / "data")
    cfg = write_config(tmp_path / "project", config(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("CAPNET_CLIP_WEIGHTS", raising=False)
    return cfg


def one_line_error(capsys, *needles: str) -> str:
    """The error is one line, the last on stderr (progress lines of the work done before may precede it)."""
    lines = capsys.readouterr().err.strip().splitlines()
    err = lines[-1] if lines else ""
    assert err.startswith("capnet: error: "), lines
    assert not any(line.startswith(("Traceback", "capnet: error")) for line in lines[:-1]), lines
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------- item 1
def test_random_weights_train_then_eval_and_predict_in_other_processes(project, tmp_path, capsys):
    assert cli.main(["train", "--config", str(project)]) == 0
    out = capsys.readouterr().out
    checkpoint = project.parent / "runs" / "mine" / "model.safetensors"
    assert f"checkpoint: {checkpoint}" in out
    with safe_open(str(checkpoint), framework="pt") as f:
        meta = json.loads(f.metadata()["capnet"])
    assert meta["config"]["backbone"]["init_seed"] == 0 and meta["config"]["backbone"]["pretrained"] is None

    torch.manual_seed(12345)  # the global random state no longer decides the random tower
    assert cli.main(["eval", "--config", str(project), "--checkpoint", str(checkpoint), "--out", "ev"]) == 0
    report = json.loads(Path("ev/report.json").read_text())
    train_report = json.loads((project.parent / "runs" / "mine" / "report.json").read_text())
    assert report["results"]["single"] == train_report["results"]["single"]

    # Another process: same tower, so the checkpoint loads and gives the same probabilities.
    image = sorted((project.parent / "data" / "test" / "images").glob("*"))[0]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "capnet.cli", "predict", str(image), "--checkpoint", str(checkpoint),
           "--format", "json", "--workers", "0"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    theirs = json.loads(result.stdout)[0]["probabilities"]
    model = model_from_checkpoint(checkpoint, device="cpu").eval()
    ours = model.predict(model.image_transform()(Image.open(image)).unsqueeze(0))[0]
    assert np.allclose([theirs[c] for c in model.class_names], ours.numpy(), atol=1e-5)
    assert "No pretrained weights loaded" not in result.stderr  # the random weights were asked for


# ----------------------------------------------------------------------------------------- items 2, 3
@pytest.mark.parametrize(
    ("change", "named"),
    [
        (f"data.class_names={list(reversed(CLASSES))}", "class list differs (same names in another order"),
        ("rename", "class list differs (only in this config ['boats'], only in the run ['boat'])"),
        (
            "model.backbone.name=capnet-tiny-rn",
            "the backbone differs: capnet-tiny-rn here, capnet-tiny in the run",
        ),
        ("model.backbone.init_seed=1", "the backbone weights (fingerprint) differs"),
        ("model.prompt.n_ctx=8", "model.prompt.n_ctx is 8 here but 4 in the run"),
    ],
)
def test_resume_refuses_what_it_cannot_continue_and_writes_nothing(project, capsys, change, named):
    assert cli.main(["train", "--config", str(project), "--no-eval", "--set", "train.epochs=3"]) == 0
    if change == "rename":  # the data now name another class: the class list read from the CSVs differs
        for split in ("train", "test"):
            csv = project.parent / "data" / split / "labels.csv"
            csv.write_text(csv.read_text().replace("boat", "boats"))
        change = "train.epochs=3"
    run = project.parent / "runs" / "mine"
    before = files_of(run)
    capsys.readouterr()
    assert cli.main(["train", "--config", str(project), "--resume", "--set", change]) == 2
    one_line_error(capsys, f"cannot resume {run}", named)
    assert files_of(run) == before


def test_resume_with_the_same_config_continues(project, capsys):
    assert cli.main(["train", "--config", str(project), "--no-eval", "--set", "train.epochs=1"]) == 0
    assert cli.main(["train", "--config", str(project), "--no-eval", "--resume"]) == 0
    log = [json.loads(x) for x in (project.parent / "runs" / "mine" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]


# ------------------------------------------------------------------------------------------- item 4
def test_csv_paths_are_relative_to_the_config_and_data_root_from_any_folder(project, tmp_path, capsys):
    cfg = load_run_config(project)
    assert (
        Path(cfg.data.root) == project.parent / "data" and Path(cfg.train.out_dir) == project.parent / "runs"
    )
    # A path given with --set is the user's, typed in the current folder.
    assert Path(load_run_config(project, ["data.root=here"]).data.root) == Path("here")
    assert cli.main(["train", "--config", str(project), "--no-eval", "--set", "train.epochs=1"]) == 0
    assert cli.main(["train", "--config", str(project), "--set", "data.train=nothing.csv"]) == 2
    one_line_error(capsys, f"looked for {project.parent / 'data' / 'nothing.csv'}", "relative to data.root")


# ------------------------------------------------------------------------------------------- item 5
def _fields(cls) -> dict:
    """Every field of a config dataclass, sections as nested dicts."""
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        out[f.name] = _fields(type(default)) if dataclasses.is_dataclass(default) else None
    return out


def _keys(data: dict) -> dict:
    return {k: _keys(v) if isinstance(v, dict) else None for k, v in data.items()}


def test_voc_lt_yaml_spells_out_every_field():
    written = yaml.safe_load((ROOT / "configs" / "voc_lt.yaml").read_text())
    assert _keys(written) == _fields(RunConfig)


def test_the_synthetic_world_config_trains_and_evaluates_on_capnet_synth(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CAPNET_CLIP_WEIGHTS", raising=False)
    make_data(tmp_path / "synth")
    cfg = load_run_config(ROOT / "configs" / "synth_lt.yaml")
    assert (cfg.model.backbone.name, cfg.model.backbone.pretrained) == ("capnet-synth", None)
    assert Path(cfg.model.backbone.weights) == SYNTH
    sets = [f"data.root={tmp_path / 'synth'}", "train.epochs=1", "data.num_workers=0", "eval.tta=false",
            f"train.out_dir={tmp_path / 'runs'}", f"train.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    sets = [part for s in sets for part in ("--set", s)]
    assert cli.main(["train", "--config", str(ROOT / "configs" / "synth_lt.yaml"), *sets]) == 0
    checkpoint = tmp_path / "runs" / "synth_lt" / "model.safetensors"
    assert "test mAP (single view): total" in capsys.readouterr().out
    # Predict finds the weights the checkpoint was trained with.
    image = sorted((tmp_path / "synth" / "test" / "images").glob("*"))[0]
    assert cli.main(["predict", str(image), "--checkpoint", str(checkpoint), "--workers", "0"]) == 0


def test_weights_rules_are_the_same_for_every_command(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CAPNET_CLIP_WEIGHTS", raising=False)
    folder = tmp_path / "imgs"
    write_csv_dataset(folder, 3, 1)
    base = ["predict", str(folder / "images"), "--model", "capnet-synth", "--labels", "red,blue",
            "--format", "json", "--workers", "0"]  # fmt: skip
    # capnet-synth has no 'openai' tag: --weights alone works (no --pretrained '' needed).
    assert cli.main([*base, "--weights", str(SYNTH)]) == 0
    with_flag = json.loads(capsys.readouterr().out)
    # The environment variable is honoured with no tag too: the same weights, the same numbers.
    monkeypatch.setenv("CAPNET_CLIP_WEIGHTS", str(SYNTH))
    assert cli.main([*base, "--pretrained", "none"]) == 0
    assert json.loads(capsys.readouterr().out) == with_flag
    monkeypatch.setenv("CAPNET_CLIP_WEIGHTS", str(tmp_path / "gone.safetensors"))
    assert cli.main([*base, "--pretrained", "none"]) == 2
    one_line_error(capsys, "weights file not found", "CAPNET_CLIP_WEIGHTS")
    monkeypatch.delenv("CAPNET_CLIP_WEIGHTS")
    # A tag the model lacks: the message names the flag that fixes it.
    assert cli.main([*base, "--pretrained", "openai", "--weights", str(SYNTH)]) == 2
    one_line_error(capsys, "not a pretrained tag of capnet-synth", "--pretrained none")


# ------------------------------------------------------------------------------------------- item 6
def test_eval_and_predict_use_the_weights_of_the_config_and_never_fall_back_to_random(
    project, tmp_path, capsys
):
    weights = tmp_path / "w" / "synth.safetensors"
    weights.parent.mkdir()
    shutil.copy(SYNTH, weights)
    data = config(tmp_path, name="capnet-synth", weights=str(weights))
    cfg = write_config(project.parent, data)
    assert cli.main(["train", "--config", str(cfg), "--no-eval", "--set", "train.epochs=1"]) == 0
    checkpoint = project.parent / "runs" / "mine" / "model.safetensors"
    moved = tmp_path / "moved.safetensors"
    weights.rename(moved)
    capsys.readouterr()
    image = sorted((project.parent / "data" / "test" / "images").glob("*"))[0]
    assert cli.main(["predict", str(image), "--checkpoint", str(checkpoint), "--workers", "0"]) == 2
    one_line_error(capsys, "was trained on the weights file", "--weights PATH")
    assert cli.main(["eval", "--config", str(cfg), "--checkpoint", str(checkpoint), "--out", "e"]) == 2
    capsys.readouterr()
    # The config names where the weights are now: eval uses them.
    sets = ["--set", f"model.backbone.weights={moved}"]
    assert cli.main(["eval", "--config", str(cfg), "--checkpoint", str(checkpoint), "--out", "e", *sets]) == 0
    assert cli.main(["predict", str(image), "--checkpoint", str(checkpoint), "--weights", str(moved)]) == 0


# ------------------------------------------------------------------------------------------- item 7
def test_foreign_weights_are_named_not_a_dtype_error(project, tmp_path, capsys):
    assert cli.main(["train", "--config", str(project), "--no-eval", "--set", "train.epochs=1"]) == 0
    checkpoint = project.parent / "runs" / "mine" / "model.safetensors"
    capsys.readouterr()
    image = sorted((project.parent / "data" / "test" / "images").glob("*"))[0]
    assert cli.main(["predict", str(image), "--checkpoint", str(checkpoint), "--weights", str(SYNTH)]) == 2
    one_line_error(capsys, "does not hold capnet-tiny weights", "positional_embedding")


def test_every_input_skipped_is_one_line(tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(b"not an image")
    (tmp_path / "b.jpg").write_bytes(b"")
    assert cli.main(["predict", str(tmp_path), "--model", "capnet-tiny", "--pretrained", "none",
                     "--labels", "cat", "--workers", "0"]) == 2  # fmt: skip
    one_line_error(capsys, "none of the 2 files could be read as an image")


def test_a_misspelt_class_is_caught_before_training(project, capsys):
    csv = project.parent / "data" / "train" / "labels.csv"
    lines = csv.read_text().splitlines()
    lines[1] = lines[1].replace("bird", "brid") if "bird" in lines[1] else lines[1] + ";brid"
    csv.write_text("\n".join(lines) + "\n")
    assert cli.main(["train", "--config", str(project)]) == 2
    one_line_error(capsys, "only in the training data: 'brid' (did you mean 'bird'?)", "data.class_names")
    assert not (project.parent / "runs").exists()  # nothing trained, nothing written


def test_set_mistakes_are_named_as_set_not_as_the_file(project, capsys):
    assert cli.main(["train", "--config", str(project), "--set", "train.epoch=3"]) == 2
    err = one_line_error(capsys, "--set train.epoch=3: train: unknown key(s) ['epoch']")
    assert "run.yaml" not in err
    assert cli.main(["train", "--config", str(project), "--set", "train.epochs=[3"]) == 2
    one_line_error(capsys, "--set train.epochs=[3: the value is not valid YAML")


def test_weight_hints_speak_flags_and_config_keys_not_python(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("CAPNET_CLIP_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    write_csv_dataset(tmp_path / "d", 1, 1)
    assert cli.main(["predict", str(tmp_path / "d" / "images"), "--labels", "cat", "--model", "RN50"]) == 2
    err = one_line_error(capsys, "--weights PATH", "--pretrained none")
    assert "pretrained=None" not in err and "weights=PATH" not in err


# ------------------------------------------------------------------------------------------- item 8
def test_labels_with_a_checkpoint_are_refused_not_ignored(project, capsys):
    assert cli.main(["train", "--config", str(project), "--no-eval", "--set", "train.epochs=1"]) == 0
    checkpoint = project.parent / "runs" / "mine" / "model.safetensors"
    capsys.readouterr()
    for flag in (["--labels", "dog,cat"], ["--preset", "VOC"]):
        assert cli.main(["predict", ".", "--checkpoint", str(checkpoint), *flag]) == 2
        one_line_error(capsys, "a checkpoint brings its own")


# ------------------------------------------------------------------------------------------- item 9
def test_training_prints_a_line_per_epoch_and_a_readable_summary(project, capsys, caplog):
    caplog.set_level(logging.WARNING)
    assert cli.main(["train", "--config", str(project), "--set", "train.epochs=2"]) == 0
    out, err = capsys.readouterr()  # progress goes to stderr, the result to stdout
    assert re.search(r"^epoch 1/2: loss \d+\.\d{4}, validation mAP \d+\.\d \(best: epoch 1\)$", err, re.M), (
        err
    )
    assert re.search(r"^epoch 2/2: loss \d+\.\d{4}, validation mAP \d+\.\d \(best: epoch [12]\)$", err, re.M)
    run = project.parent / "runs" / "mine"
    report = json.loads((run / "report.json").read_text())
    single = report["results"]["single"]
    expected = ", ".join(
        f"{g} {100 * single[g]:.1f}" for g in ("total", "head", "medium", "tail") if single[g] is not None
    )
    assert expected.split(",")[0] in out and f"report: {run / 'report.json'}" in out
    assert re.search(r"^checkpoint: .*model.safetensors \(best validation epoch [12] of 2\)$", out, re.M)
    assert "No pretrained weights loaded" not in caplog.text

    assert cli.main(["train", "--config", str(project), "--set", "train.epochs=1", "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)  # nothing but the JSON on stdout
    assert summary["kept"]["epoch"] == 1 and summary["checkpoint"].endswith("model.safetensors")
    assert all(len(str(v).split(".")[-1]) <= 4 for v in summary["single"].values() if isinstance(v, float))

    assert cli.main(["train", "--config", str(project), "--set", "train.epochs=1", "--no-eval"]) == 0
    assert re.search(
        r"^checkpoint: .*model.safetensors \(best validation epoch 1 of 1\)$", capsys.readouterr().out, re.M
    )


def test_predict_marks_labels_above_the_threshold(project, capsys):
    assert cli.main(["train", "--config", str(project), "--no-eval", "--set", "train.epochs=1"]) == 0
    checkpoint = project.parent / "runs" / "mine" / "model.safetensors"
    images = project.parent / "data" / "test" / "images"
    capsys.readouterr()
    base = ["predict", str(images), "--checkpoint", str(checkpoint), "--workers", "0", "--top", "5"]
    assert cli.main([*base, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    probs = sorted(p for r in rows for p in r["probabilities"].values())
    threshold = round(float(np.median(probs)), 6)  # some above, some below
    assert cli.main([*base, "--threshold", str(threshold)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()[:-1]
    for line, row in zip(lines, rows):
        assert line.startswith(row["path"] + " ")
        for name, p in row["top"].items():
            marked = re.search(rf"\b{name} {p:.2f}(\*?)", line).group(1) == "*"
            assert marked == (p >= threshold), (line, name, p)


# ------------------------------------------------------------------------------------------ item 10
def test_help_explains_every_command_and_option():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) >= {"train", "eval", "predict", "build-lt"}
    for name, p in sub.choices.items():
        text = p.format_help()
        assert "example:\n  capnet " + name in text, name
        for action in p._actions:
            assert action.help, (name, action.dest)
        assert "(default: None)" not in text
    assert "(default: 0.5)" in sub.choices["predict"].format_help()


def test_version_and_help_load_neither_torch_nor_open_clip(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"capnet {cli.__version__}"
    code = (
        "import sys; from capnet import cli; cli.build_parser().format_help(); "
        "print(sorted(m for m in ('torch', 'open_clip', 'numpy', 'pandas') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert result.stdout.strip() == "[]", result.stderr


def test_commands_register_through_the_decorator():
    before = list(cli.COMMANDS)
    try:

        @cli.command
        def add_hello(sub):
            p = cli.subparser(sub, "hello", "say hello", "Says hello.", "capnet hello")
            p.set_defaults(func=lambda args: 0)

        assert cli.main(["hello"]) == 0
    finally:
        cli.COMMANDS[:] = before


def test_make_help_lists_the_targets_and_pretrain_keeps_the_shipped_file():
    makefile = (ROOT / "Makefile").read_text()
    result = subprocess.run(["make", "-s", "help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0
    for target in ("install", "test", "lint", "app", "bench", "pretrain", "ablation", "clean"):
        assert re.search(rf"^  {target} ", result.stdout, re.M), target
    (line,) = [x for x in makefile.splitlines() if "capnet.world.pretrain" in x]
    assert "runs/" in line and "--out checkpoints/" not in line


# ------------------------------------------------------------------------------- README walkthrough
def readme_walkthrough() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Your own data in five commands") :]
    start = section.index("```bash\n") + len("```bash\n")
    block = section[start : section.index("\n```", start)]
    commands = [line.split("  #")[0].strip() for line in block.splitlines() if line.startswith("capnet ")]
    assert len(commands) == 5
    return commands


def test_readme_walkthrough_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CAPNET_CLIP_WEIGHTS", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs" / "my_data.yaml", tmp_path / "configs")
    (tmp_path / "checkpoints").symlink_to(ROOT / "checkpoints")
    make_data(tmp_path / "mydata")
    for line in readme_walkthrough():
        args = shlex.split(line)[1:]
        if args[0] == "train":
            args += ["--set", "train.epochs=2"]  # the README's 15 epochs, cut for the test
        assert cli.main(args) == 0, line
    out = capsys.readouterr().out
    assert (tmp_path / "runs" / "mine" / "model.safetensors").is_file()
    assert (tmp_path / "runs" / "mine" / "eval" / "report.json").is_file()
    frame = pd.read_csv(tmp_path / "runs" / "mine" / "predictions.csv")
    assert len(frame) == 24 and list(frame.columns[2:]) == CLASSES
    assert "test mAP" in out and "mydata/test/images/0000.jpg" in out
    cfg = from_dict(RunConfig, yaml.safe_load((ROOT / "configs" / "my_data.yaml").read_text()))
    assert cfg.data.format == "csv"
