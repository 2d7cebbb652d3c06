"""Entry point: `python app.py` starts the capnet Gradio app (flags or CAPNET_* environment variables)."""

from __future__ import annotations

import argparse
import os

from app.limits import MAX_UPLOAD_BYTES
from app.models import ModelChoice, load_served_models
from app.ui import CSS, build_demo
from capnet.config import BackboneConfig


def parse_args() -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__)
    # Hugging Face Spaces set GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; locally the app stays on localhost.
    parser.add_argument("--host", default=env("CAPNET_HOST") or env("GRADIO_SERVER_NAME") or "127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=int(env("CAPNET_PORT") or env("GRADIO_SERVER_PORT") or 7860)
    )
    parser.add_argument("--model", default=env("CAPNET_MODEL", "ViT-B-16"), help="open_clip model name")
    parser.add_argument("--pretrained", default=env("CAPNET_PRETRAINED", "openai"), help="open_clip tag")
    parser.add_argument("--weights", default=env("CAPNET_CLIP_WEIGHTS"), help="local CLIP weights file")
    parser.add_argument(
        "--checkpoint", default=env("CAPNET_CHECKPOINT"), help="capnet .safetensors checkpoint"
    )
    parser.add_argument("--device", default=env("CAPNET_DEVICE", "auto"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    backbone = BackboneConfig(
        name=args.model, pretrained=args.pretrained or None, weights=args.weights, device=args.device
    )
    choice = ModelChoice(backbone, args.checkpoint)
    demo = build_demo(load_served_models(choice))
    demo.queue(default_concurrency_limit=2).launch(
        server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD_BYTES, css=CSS
    )


if __name__ == "__main__":
    main()
