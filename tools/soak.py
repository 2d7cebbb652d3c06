"""A bounded soak of the app on localhost: memory at peak and once idle, under concurrent large predictions.

python tools/soak.py                     # `make soak`: 20 rounds of 8 concurrent 16-image requests
python tools/soak.py --rounds 5 --format png

It starts `python app.py` serving the offline default (the synthetic world's tiny CLIP), sends one
warm-up request, records the server's resident memory (RSS) once idle, then runs the rounds while
sampling RSS every 50 ms, and reads it again after an idle pause. Every image is at the 40-megapixel
limit (8000x5000, a single colour, so the upload stays small while the decode is full size).
The target (issue 10): peak <= 2.5 GiB, idle within 300 MiB of the post-warm-up figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.limits import MAX_IMAGES, MAX_PIXELS  # noqa: E402

GIB, MIB = 2**30, 2**20
SIZE = (8000, MAX_PIXELS // 8000)  # exactly at the limit
LABELS = "Scenes (synthetic)"


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss(self.pid))
            time.sleep(0.05)


def make_images(folder: Path, fmt: str) -> list[Path]:
    from PIL import Image

    paths = []
    for i in range(MAX_IMAGES):
        path = folder / f"big{i:02d}.{'jpg' if fmt == 'jpeg' else 'png'}"
        Image.new("RGB", SIZE, (15 * i, 255 - 15 * i, 128)).save(path)
        paths.append(path)
    return paths


def start_app(work: Path, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(work / "hf"),  # no cached CLIP weights: the app falls back to the synthetic world
        "TMPDIR": str(work / "tmp"),
        "GRADIO_TEMP_DIR": str(work / "gradio"),
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    env.pop("CAPNET_CLIP_WEIGHTS", None)
    (work / "tmp").mkdir()
    log = open(work / "app.log", "w")  # noqa: SIM115 (the server writes to it until it stops)
    cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--checkpoint", ""]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit((work / "app.log").read_text()[-2000:]) from None
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the app did not start within 180 s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--format", choices=["jpeg", "png"], default="jpeg")
    parser.add_argument("--port", type=int, default=7870)
    parser.add_argument("--idle", type=float, default=15.0, help="seconds of idle before reading RSS")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args()

    from gradio_client import Client, handle_file

    with tempfile.TemporaryDirectory(prefix="capnet-soak-") as tmp:
        work = Path(tmp)
        files = [handle_file(str(p)) for p in make_images(work, args.format)]
        proc = start_app(work, args.port)
        try:
            url = f"http://127.0.0.1:{args.port}"
            clients = [Client(url, verbose=False) for _ in range(args.concurrency)]
            start_rss = rss(proc.pid)

            def one(client: Client) -> float:
                began = time.monotonic()
                message = client.predict(files, [], LABELS, "", 0.5, False, api_name="/predict")[0]
                if not message.startswith(f"{MAX_IMAGES} image"):
                    raise SystemExit(f"unexpected answer: {message[:300]}")
                return time.monotonic() - began

            one(clients[0])  # warm-up: models loaded, calibrated, first buffers allocated
            time.sleep(args.idle)
            warm = rss(proc.pid)
            sampler = PeakSampler(proc.pid)
            sampler.start()
            latencies = []
            began = time.monotonic()
            with ThreadPoolExecutor(args.concurrency) as pool:
                for r in range(args.rounds):
                    latencies += list(pool.map(one, clients))
                    print(f"round {r + 1}/{args.rounds}: RSS {rss(proc.pid) / GIB:.2f} GiB", flush=True)
            elapsed = time.monotonic() - began
            time.sleep(args.idle)
            idle = rss(proc.pid)
            sampler.running = False
            sampler.join()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    result = {
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "images_per_request": MAX_IMAGES,
        "image": f"{SIZE[0]}x{SIZE[1]} {args.format}",
        "rss_at_start_gib": round(start_rss / GIB, 3),
        "rss_after_warmup_gib": round(warm / GIB, 3),
        "rss_peak_gib": round(sampler.peak / GIB, 3),
        "rss_idle_after_gib": round(idle / GIB, 3),
        "idle_minus_warm_mib": round((idle - warm) / MIB),
        "seconds": round(elapsed, 1),
        "latency_s": {
            "median": round(sorted(latencies)[len(latencies) // 2], 2),
            "max": round(max(latencies), 2),
        },
        "cpus": os.cpu_count(),
    }
    ok = sampler.peak <= 2.5 * GIB and idle - warm <= 300 * MIB
    result["target_met"] = ok
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
