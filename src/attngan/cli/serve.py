"""``attngan serve``: the HTTP API and web page of :mod:`attngan.serve` (a thin layer over ``create_app``)."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

import click

from ..errors import UserError
from .options import CHECKPOINT_HELP, DEVICE, PathType
from .sample import load_pipeline, resolve_device

_FILE = PathType(dir_okay=False, path_type=Path)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command()
@click.option(
    "--checkpoint", type=PathType(path_type=Path), help=CHECKPOINT_HELP
)
@click.option(
    "--original-generator", type=_FILE, help="The original release's generator, e.g. bird_AttnGAN2.pth."
)
@click.option("--original-text-encoder", type=_FILE, help="The original release's text_encoder200.pth.")
@click.option(
    "--captions-pickle", type=_FILE, help="The original release's captions.pickle (its vocabulary)."
)
@click.option(
    "--host", default="127.0.0.1", help="Address to listen on; loopback unless you mean to share it."
)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, help="TCP port to listen on.")
@click.option(
    "--device", type=DEVICE, default="auto", help="Where to run: auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps."
)
@click.option("--max-batch", type=click.IntRange(1, 256), default=8, help="Most images per forward pass.")
@click.option(
    "--max-images", type=click.IntRange(1, 64), default=4, help="Most images one request may ask for."
)
@click.option(
    "--max-caption-chars", type=click.IntRange(1, 10000), default=300, help="Longer captions get a 422."
)
@click.option(
    "--queue-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    help="Seconds a request may wait for the model before it gets a 503.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds a connection may stay open without sending a whole request before the server closes it.",
)
@click.option(
    "--tune-malloc/--no-tune-malloc", default=True, show_default=True,
    help="Linux/glibc: keep freed memory for reuse instead of returning large blocks to the system at every "
         "free. The worker thread's pipeline call then runs as fast as a direct call (without it, up to 17 ms "
         "slower per birds image in benchmarks/bench_serve.py --paired); the process keeps its peak memory.",
)  # fmt: skip
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    help="Detail of the server's log (uvicorn's): one line per request at info.",
)
def serve(
    checkpoint: Path | None,
    original_generator: Path | None,
    original_text_encoder: Path | None,
    captions_pickle: Path | None,
    host: str,
    port: int,
    device: str,
    max_batch: int,
    max_images: int,
    max_caption_chars: int,
    queue_timeout: float,
    idle_timeout: float,
    tune_malloc: bool,
    log_level: str,
) -> None:
    """Serve a web page and a JSON API that draw images from sentences.

    Open http://127.0.0.1:8000/ for the page; the API is POST /api/v1/generate with
    {"caption": "...", "seed": 0, "n": 1}; /docs describes it.

    \b
    Examples:
      attngan serve --checkpoint runs/00001-shapes-attngan
      attngan serve --original-generator bird_AttnGAN2.pth \\
          --original-text-encoder text_encoder200.pth --captions-pickle captions.pickle
    """
    try:
        import uvicorn

        from ..serve import create_app, idle_closing_protocol
    except ImportError as exc:
        raise UserError(
            f"attngan serve needs FastAPI and uvicorn ({exc}); install them with pip install -e '.[serve]' in the "
            "attngan checkout, or pip install fastapi uvicorn"
        ) from None
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if tune_malloc:
        from ..training.cpu import tune_cpu_allocator

        tune_cpu_allocator()
    pipeline = load_pipeline(
        checkpoint, original_generator, original_text_encoder, captions_pickle, resolve_device(device)
    )
    if checkpoint is not None:
        from ..pipeline import resolve_model_dir

        path = resolve_model_dir(checkpoint).resolve()
        name = f"{path.parent.name}/{path.name}" if path.name == "model" else path.name
    else:
        name = Path(original_generator).name
    app = create_app(
        pipeline,
        max_caption_chars=max_caption_chars,
        max_images=max_images,
        queue_timeout=queue_timeout,
        max_batch=max_batch,
        model_name=name,
        caption_check=_caption_check(checkpoint),
    )
    if not is_loopback(host):
        click.echo(
            f"Warning: listening on {host}, not loopback: anyone who can reach this machine can use the model.",
            err=True,
        )
    _check_port_free(host, port)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"Serving {name} on {pipeline.device} at http://{shown}:{port}/ (Ctrl-C to stop)")
    uvicorn.run(app, host=host, port=port, log_level=log_level, http=idle_closing_protocol(idle_timeout))


def _check_port_free(host: str, port: int) -> None:
    """A port in use (or a host that is not this machine's) is a one-line error before the model serves."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host") from None


def _caption_check(checkpoint: Any):
    """caption -> the warnings of ``attngan sample`` for a caption unlike the run's training captions."""
    from .sample import training_data, unlike_training

    data = training_data(Path(checkpoint)) if checkpoint is not None else None
    if not data:
        return None
    return lambda caption: [w.replace("sentence 1 ", "the caption ", 1) for w in unlike_training([caption], data)]
