"""Constants and helpers shared by tests."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path

import pytest

# The official split files are never committed: they sit beside the checkout (CI copies shared/ there),
# or where CAPNET_LTSPLITS says (as for the app).
LTSPLITS = Path(
    os.environ.get("CAPNET_LTSPLITS") or Path(__file__).resolve().parents[2] / "shared" / "ltsplits"
)
TRUTHY = frozenset({"1", "true", "yes", "on"})


def in_ci(environ: Mapping[str, str] | None = None) -> bool:
    """Whether CI is set to a usual truthy value: there, a missing test input fails instead of skipping."""
    value = (os.environ if environ is None else environ).get("CI", "")
    return value.strip().lower() in TRUTHY


CHROMIUM = "/usr/bin/chromium"


def require_browser() -> None:
    """At a browser test module's import: without Playwright or Debian's chromium the module is skipped
    on a developer machine and fails under CI."""
    if importlib.util.find_spec("playwright") is None or not Path(CHROMIUM).exists():
        reason = "Playwright or Debian's chromium is not installed (make test installs both)"
        if in_ci():
            pytest.fail(f"browser tests must run in CI: {reason}", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


def skip_or_fail(reason: str) -> None:
    """Skips on a developer machine; under CI fails the test with the reason as one line (no traceback)."""
    if in_ci():
        pytest.fail(f"{reason} (CI must not skip this test)", pytrace=False)
    pytest.skip(reason)


def official_file(*parts: str) -> Path:
    """A file of the official split folder, which under CI must exist."""
    path = LTSPLITS.joinpath(*parts)
    if not path.is_file():
        skip_or_fail(
            f"official split file {path} is missing"
            " (the folder ../shared/ltsplits beside the checkout, or CAPNET_LTSPLITS)"
        )
    return path


VOC_CLASSES = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]
ODD_NAMES = [
    "traffic light",
    "hair drier",
    "tvmonitor",
    "person",
    "a very long and unusual class name indeed",
]
