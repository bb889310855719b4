"""Measure a trained model the way the paper did (Xu et al., "AttnGAN", CVPR 2018, Sec. 4 "Evaluation").

``evaluate_model`` generates ``n_images`` images (the last stage, as the paper's 30,000) from randomly
drawn test captions (seeded), then computes the requested metrics of :mod:`attngan.metrics` on them:

* ``r_precision``: DAMSM global image vector of each generated image vs the sentence vectors of its
  caption and 99 random mismatching ones, R = 1, 10 splits (paper Sec. 4);
* ``is``: Inception score, 10 splits (ImageNet Inception-v3 by default; the paper's CUB numbers used a
  CUB-fine-tuned Inception, pass it as ``is_classifier``);
* ``fid``: FID against the real test images (standard FID Inception weights; real statistics cached);
* ``attributes``: colour / shape / size / position accuracy on the built-in shapes dataset;
* ``attention_grounding``: share of the colour and shape words' attention inside their objects, on the
  built-in shapes dataset (:mod:`attngan.metrics.grounding`);
* ``clip``: CLIP score with a user-supplied CLIP model (skipped otherwise).

Captions are drawn like the original evaluation loop, which went over the shuffled test set as often as
needed: the test images in a seeded random order (a new permutation per pass), one random caption of each
(truncated to the dataset's ``words_num``; ``attngan evaluate`` sets it to the original's evaluation length,
:data:`EVAL_WORDS_NUM`, for birds and coco). Image k uses noise seed ``seed + k``, so the images do not
depend on the batch size. Every figure names its protocol and sample count; a metric whose weights are
missing is reported as skipped with a message saying how to provide them.

One job per module:

* :mod:`.captions`: the test captions of an evaluation (:func:`draw_test_captions`);
* :mod:`.images`: the generated images, in memory or in a temporary file;
* :mod:`.networks`: the metric networks: their weights, a trial run, the user's CLIP model;
* :mod:`.reference`: the real test images: their identity (FID cache key), the images, the attributes;
* :mod:`.model`: :func:`evaluate_model`, one model measured end to end;
* :mod:`.table`: the result as a text table (:func:`format_table`).

Layer 4 (like ``training``): composes the pipeline, the data and the metrics; nothing imports it but the
CLI (``attngan evaluate``); the demo (training layer) computes its own small table.
"""

from .captions import EVAL_WORDS_NUM, EvalCaptions, draw_test_captions
from .images import check_image_space
from .model import ATTRIBUTE_CLASSIFIER_SIZE, MAX_IMAGES, METRICS, PROTOCOL, evaluate_model, parse_metrics
from .networks import ClipModel, weights_problem
from .table import PAPER_MISMATCHES, PAPER_SPLITS, format_table, protocol_changes

__all__ = [
    "METRICS",
    "EVAL_WORDS_NUM",
    "ATTRIBUTE_CLASSIFIER_SIZE",
    "MAX_IMAGES",
    "PROTOCOL",
    "PAPER_MISMATCHES",
    "PAPER_SPLITS",
    "parse_metrics",
    "EvalCaptions",
    "draw_test_captions",
    "check_image_space",
    "ClipModel",
    "weights_problem",
    "evaluate_model",
    "format_table",
    "protocol_changes",
]
