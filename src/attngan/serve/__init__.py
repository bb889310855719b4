"""``attngan.serve``: an HTTP API and a web page that draw images from sentences (needs the ``serve`` extra:
``pip install -e '.[serve]'`` in the attngan checkout, or ``pip install fastapi uvicorn``). Start it with
``attngan serve --checkpoint RUN_OR_MODEL_DIR``, or::

    from attngan.pipeline import AttnGANPipeline
    from attngan.serve import BackgroundServer, create_app

    app = create_app(AttnGANPipeline.from_pretrained("runs/00001-shapes-attngan"))
    with BackgroundServer(app) as server:   # uvicorn in a thread on a free loopback port
        print(server.url)
"""

from .app import create_app, example_captions
from .batching import BatchWorker
from .limits import MAX_BODY_BYTES
from .schema import MAX_SEED
from .server import IDLE_TIMEOUT, BackgroundServer, idle_closing_protocol

__all__ = [
    "create_app", "BatchWorker", "BackgroundServer", "idle_closing_protocol", "IDLE_TIMEOUT", "example_captions",
    "MAX_SEED", "MAX_BODY_BYTES",
]  # fmt: skip
