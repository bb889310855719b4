"""The JSON bodies of :mod:`attngan.serve`: requests (with the app's limits, so that ``/openapi.json``
documents them) and responses."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MAX_SEED", "StageImage", "WordMap", "AttentionStage", "GeneratedImage", "GenerateResponse", "HealthResponse",
    "request_models",
]  # fmt: skip

MAX_SEED = 2**31 - 1  # image k of a request uses seed + k, which must stay <= MAX_SEED


class StageImage(BaseModel):
    stage: int = Field(description="0 for the first generator G_0, up to m - 1")
    size: int = Field(description="side of the square image in pixels")
    image: str = Field(description="PNG as a data URL")


class WordMap(BaseModel):
    word: str
    index: int = Field(description="position of the word in `tokens`")
    score: float = Field(description="sum over regions of the attention weights kept by Eq. 15")
    share: float = Field(description="score / the sum of the scores of all words of this stage")
    map: str = Field(
        description="the word's attention weights on the stage's grid (size x size regions) as a greyscale PNG data "
        "URL: weight = pixel / 255 * map_max"
    )
    map_max: float = Field(description="the word's largest attention weight on the grid (pixel 255 of `map`)")
    overlay: str | None = Field(
        default=None,
        description="with `overlays`: the map upsampled with a Gaussian filter and tinted red over the image this "
        "stage drew (64-128 px), PNG data URL",
    )


class AttentionStage(BaseModel):
    stage: int = Field(description="the stage whose image this attention produced (1 .. m - 1)")
    size: int = Field(description="side of the attention grid (the features of the previous stage)")
    words: list[WordMap] = Field(description="the top words by Eq. 15, best first")


class GeneratedImage(BaseModel):
    seed: int
    stages: list[StageImage]
    attention: list[AttentionStage]


class GenerateResponse(BaseModel):
    caption: str
    tokens: list[str] = Field(description="the words fed to the model")
    unknown_words: list[str] = Field(description="words not in the vocabulary (ignored)")
    warnings: list[str] = Field(
        default_factory=list,
        description="why the caption is unlike the training captions (e.g. more objects)",
    )
    seeds: list[int]
    images: list[GeneratedImage]
    time_ms: float = Field(description="from receiving the request to the response, in ms")
    queue_ms: float = Field(description="time waiting for the model, in ms")
    compute_ms: float = Field(description="time of the model's batch, in ms")
    batch_images: int = Field(description="images computed in the same batch as this request's")


class HealthResponse(BaseModel):
    status: str
    device: str
    model: dict[str, Any]
    limits: dict[str, Any]
    queue: dict[str, Any]
    examples: list[str]


def request_models(max_caption_chars: int, max_images: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """The bodies of ``POST /api/v1/generate`` and ``POST /api/v1.0/bird`` with the app's limits."""

    class GenerateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        caption: str = Field(
            min_length=1,
            max_length=max_caption_chars,
            strict=True,
            description=f"the sentence, 1 to {max_caption_chars} characters, with at least one known word",
            examples=["a small red circle at the top left"],
        )
        seed: int | None = Field(
            default=None,
            ge=0,
            le=MAX_SEED,
            strict=True,
            description=f"image k uses seed + k (0 .. {MAX_SEED}); none: a random seed, returned",
        )
        n: int = Field(default=1, ge=1, le=max_images, strict=True, description="number of images")
        overlays: bool = Field(
            default=False,
            strict=True,
            description="also send each word's map upsampled and tinted over its image (`overlay`); "
            "about 1 ms of the server's time per map",
        )

    class BirdRequest(BaseModel):
        caption: str = Field(min_length=1, max_length=max_caption_chars, strict=True)

    return GenerateRequest, BirdRequest
