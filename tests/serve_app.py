"""`python app.py` for the browser and hostile-input tests, with a fixed pause before every training step.

The bundled sample fine-tunes 20 epochs in about a second here, too fast for a browser to press Cancel
while the run is under way; a pause of 0.2 s per step stretches it to about 20 s. Nothing else changes.
``running_app`` starts it on a free port for a test module.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEP_PAUSE_S = 0.2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(
    home: Path, env: dict[str, str] | None = None, args: list[str] | None = None
) -> Iterator[tuple[str, Path, int]]:
    """The URL, log file and process id of the app serving the tiny random model from ``home``.

    ``args`` come last, so they override (``["--checkpoint", PATH]`` serves that checkpoint instead).
    """
    port = _free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(home),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    cmd = [sys.executable, __file__, "--model", "capnet-tiny", "--pretrained", "", "--port", str(port)]
    log_path = home / "app.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [*cmd, "--checkpoint", "", *(args or [])], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(url, timeout=2)
                    break
                except OSError:
                    if proc.poll() is not None:
                        raise RuntimeError(log_path.read_text()[-3000:]) from None
                    if time.monotonic() > deadline:
                        raise RuntimeError("the app did not start within 120 s") from None
                    time.sleep(0.5)
            yield url, log_path, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _main() -> None:
    sys.path.insert(0, str(ROOT))
    from capnet.engine.trainer import Trainer

    fit = Trainer.fit

    def paused_fit(self, resume=False, stop_after=None, should_stop=None):
        def ask() -> bool:
            time.sleep(STEP_PAUSE_S)
            return should_stop is not None and should_stop()

        return fit(self, resume, stop_after, ask)

    Trainer.fit = paused_fit
    runpy.run_path(str(ROOT / "app.py"), run_name="__main__")


if __name__ == "__main__":
    _main()
