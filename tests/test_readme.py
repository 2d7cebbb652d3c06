"""The README's offline Python example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_offline_example_runs():
    offline = [b for b in _python_blocks() if "capnet-tiny" in b]
    assert len(offline) == 1
    result = subprocess.run([sys.executable, "-c", offline[0]], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    trainable, shape = result.stdout.strip().split(" ", 1)
    assert int(trainable) > 0 and shape == "torch.Size([3, 3])"
