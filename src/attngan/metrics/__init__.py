"""Evaluation metrics (layer 3): each receives what it measures (images, encoders, features) as arguments
and never imports ``attngan.training``.

Registry after ``NVlabs/stylegan2-ada-pytorch:metrics/metric_main.py``: ``calc_metric(name, **opts)``
returns a dict that names its protocol, sample count and feature extractor; ``report_metric(result,
run_dir)`` appends it as one JSON line to ``<run_dir>/metric-<name>.jsonl``.

Metrics: ``inception_score`` (Salimans et al. 2016), ``fid`` (Heusel et al. 2017), ``r_precision``
(AttnGAN Sec. 4), ``clip_score`` (optional, user CLIP model), ``attribute_accuracy`` and ``attention_grounding`` (built-in
shapes dataset).
"""

# Importing the metric modules registers their metrics.
from . import attributes, clip_score, fid, grounding, inception_score, r_precision
from .features import FeatureStats, cached_feature_stats, compute_feature_stats
from .fid import frechet_distance
from .inception_score import inception_score as inception_score_from_probs
from .r_precision import r_precision as r_precision_from_vectors
from .registry import REQUIRED_KEYS, calc_metric, get_metric, list_metrics, register_metric, report_metric

__all__ = [
    "REQUIRED_KEYS",
    "register_metric",
    "list_metrics",
    "get_metric",
    "calc_metric",
    "report_metric",
    "FeatureStats",
    "compute_feature_stats",
    "cached_feature_stats",
    "frechet_distance",
    "inception_score_from_probs",
    "r_precision_from_vectors",
    "attributes",
    "clip_score",
    "fid",
    "grounding",
    "inception_score",
    "r_precision",
]
