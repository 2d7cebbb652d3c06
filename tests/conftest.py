"""Shared fixtures: tiny registered open_clip architectures with fixed random weights."""

from __future__ import annotations

import json

import pytest
import torch

from capnet.backbone import load_backbone
from tests.common import official_file


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the test item, so a fixture can tell that its test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def tiny_backbone():
    """A factory: a fresh, deterministic tiny backbone per call (models attach adapters in place)."""

    def make(name: str = "capnet-tiny", seed: int = 0, **kwargs):
        torch.manual_seed(seed)
        return load_backbone(name=name, pretrained=None, device="cpu", init_seed=seed, **kwargs)

    return make


@pytest.fixture
def lt_summary():
    """The official splits' summary (group lists and training class counts of VOC-LT and COCO-LT)."""
    return json.loads(official_file("lt_summary.json").read_text())
