"""Memory: peak resident memory of starting the app and of one prediction (and peak CUDA memory on a GPU).

The app is started as a user would (``python app.py``, with HF_HUB_OFFLINE=1: offline it serves the tiny
fallback model), and once with a randomly initialised ViT-B/16 (``--model ViT-B-16 --pretrained ''``),
which costs what the real weights cost. Its peak RSS (VmHWM) is read once the server answers on its
port; then one prediction is asked of it through gradio_client where that is installed (sample photo,
default label set), and the peak is read again. One prediction through the library alone (load the
backbone, build CapNet, PIL image -> image_transform() -> predict) runs in a fresh interpreter per model.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402

from benchmarks.common import (  # noqa: E402
    ROOT,
    PeakMemory,
    finish,
    load_random,
    model_names,
    new_result,
    parser,
    peak_rss_mb,
    photo,
    rss_mb,
    run_worker,
    setup,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def ask_for_a_prediction(url: str, timeout: float) -> tuple[float | None, str]:
    """One prediction through the app's own API (its predict endpoint: the one taking sample photos)."""
    try:
        from gradio_client import Client
    except ImportError:
        return None, "gradio_client is not installed"
    try:
        client = Client(url, verbose=False)
        api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        for name, spec in api.items():
            params = {p["parameter_name"]: p for p in spec["parameters"]}
            if "picked" not in params:
                continue
            kwargs = {}
            choices = params["picked"].get("type", {}).get("items", {}).get("enum") or ["astronaut"]
            for pname, p in params.items():
                if pname == "picked":
                    kwargs[pname] = [choices[0]]
                elif pname == "files":
                    kwargs[pname] = []
                elif not p.get("parameter_has_default"):
                    kwargs[pname] = ""
            began = time.perf_counter()
            job = client.submit(api_name=name, **kwargs)
            job.result(timeout=timeout)
            return time.perf_counter() - began, f"{name} (sample photo {choices[0]!r}, default label set)"
        return None, "no endpoint of the app takes sample photos"
    except Exception as exc:  # the app is edited independently: report, never fail the benchmark
        return None, f"prediction request failed: {type(exc).__name__}: {str(exc)[:120]}"


def app_memory(label: str, flags: list[str], timeout: float, predict: bool) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("CAPNET_CHECKPOINT", None)
    with tempfile.TemporaryFile(mode="w+") as log:
        cmd = [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port), *flags]
        began = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        row: dict = {"app": label, "command": f"HF_HUB_OFFLINE=1 python app.py {shlex.join(flags)}".strip()}
        try:
            up = wait_until_serving(url, proc, timeout)
            row["start s"] = time.perf_counter() - began if up else None
            row["peak RSS at start MiB"] = peak_rss_mb(proc.pid) if up else None
            if up and predict:
                seconds, how = ask_for_a_prediction(url, timeout)
                row["prediction s"] = seconds
                row["peak RSS after one prediction MiB"] = peak_rss_mb(proc.pid) if seconds else None
                row["prediction"] = how
            if not up:
                log.seek(0)
                row["error"] = " | ".join(log.read().strip().splitlines()[-3:])[:300]
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return row


def library_prediction(payload: dict) -> dict:
    """Fresh interpreter: RSS after imports, after loading the model, and the peak of one prediction."""
    import torch

    from capnet.backbone import select_device
    from capnet.labelsets import COCO
    from capnet.model import CapNet

    device = select_device(payload["device"])
    imported = rss_mb()
    backbone = load_random(payload["model"], device)
    model = CapNet(backbone, list(COCO)).eval()
    model.cached_class_features()  # built once per model, not per prediction
    loaded = rss_mb()
    image = photo()
    with PeakMemory(device) as peak:
        transform = model.image_transform()
        model.predict(torch.stack([transform(image)]))
    return {
        "model": payload["model"],
        "RSS after imports MiB": imported,
        "RSS with model loaded MiB": loaded,
        "peak RSS MiB": peak_rss_mb(),
        "prediction's increase MiB": peak.result["peak_rss_increase_mb"],
        "peak CUDA MiB (prediction)": peak.result["peak_cuda_mb"],
    }


def run(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-app", action="store_true", help="skip starting the app")
    p.add_argument("--app-timeout", type=float, default=300, help="seconds to wait for the app")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(library_prediction(json.loads(args.worker))), flush=True)
        return {}
    device = setup(args)
    result = new_result("memory", args, device)
    if not args.no_app:
        apps = [("offline fallback (capnet-tiny)", [])]
        if not args.quick:
            apps.append(("ViT-B-16, random weights", ["--model", "ViT-B-16", "--pretrained", ""]))
        rows = [app_memory(label, flags, args.app_timeout, predict=not args.quick) for label, flags in apps]
        result["tables"]["The app (python app.py)"] = rows
        for row in rows:
            key = "tiny" if "tiny" in row["app"] else "ViT-B-16"
            result["ratios"][f"app_start_peak_rss_mb[{key}]"] = row.get("peak RSS at start MiB")
            if row.get("peak RSS after one prediction MiB"):
                result["ratios"][f"app_prediction_peak_rss_mb[{key}]"] = row[
                    "peak RSS after one prediction MiB"
                ]
    rows = []
    for name in model_names(args):
        payload = {"model": name, "device": str(device)}
        rows.append(library_prediction(payload) if args.quick else run_worker(Path(__file__), payload))
    result["tables"]["One prediction through the library (fresh process, one 640x480 image)"] = rows
    for row in rows:
        result["ratios"][f"library_prediction_peak_rss_mb[{row['model']}]"] = row["peak RSS MiB"]
    result["notes"].append(
        "RSS figures are MiB; peaks are VmHWM, the kernel's high-water mark of resident memory"
    )
    return finish(result, args)


if __name__ == "__main__":
    run()
