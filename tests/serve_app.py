"""`python app.py` for the browser tests, with a fixed pause before every training step.

The bundled sample fine-tunes 20 epochs in about a second here, too fast for a browser to press Cancel
while the run is under way; a pause of 0.2 s per step stretches it to about 20 s. Nothing else changes.
"""

from __future__ import annotations

import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from capnet.engine.trainer import Trainer  # noqa: E402 (needs the repository on the path)

STEP_PAUSE_S = 0.2
_fit = Trainer.fit


def _paused_fit(self, resume=False, stop_after=None, should_stop=None):
    def ask() -> bool:
        time.sleep(STEP_PAUSE_S)
        return should_stop is not None and should_stop()

    return _fit(self, resume, stop_after, ask)


Trainer.fit = _paused_fit
runpy.run_path(str(ROOT / "app.py"), run_name="__main__")
