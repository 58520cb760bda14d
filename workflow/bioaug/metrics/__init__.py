"""Metric registry: every metric its own module, looked up by name.

  classification      (y_true, y_pred, proba, class_names) -> dict     classification.py
  fid, kid            (features_a, features_b) -> float                 frechet.py
  precision_recall    (real, fake, k=3) -> {precision, recall}          manifold.py
  density_coverage    (real, fake, k=5) -> {density, coverage}          manifold.py
  memorisation        (train, test, synthetic) -> audit dict            memorisation.py
  two_sample          (real, fake, steps) -> {c2st_accuracy, ...}       two_sample.py
Look metrics up with :func:`get_metric`, which names the known ones when asked for another.
"""

from __future__ import annotations

from collections.abc import Callable

from .classification import classification_metrics
from .frechet import fid, kid
from .manifold import density_coverage, precision_recall
from .memorisation import memorisation_audit
from .two_sample import classifier_two_sample_test

METRICS: dict[str, Callable] = {
    "classification": classification_metrics,
    "fid": fid,
    "kid": kid,
    "precision_recall": precision_recall,
    "density_coverage": density_coverage,
    "memorisation": memorisation_audit,
    "two_sample": classifier_two_sample_test,
}


def get_metric(name: str) -> Callable:
    """The metric function registered as ``name``; KeyError listing known names otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known metrics: {', '.join(sorted(METRICS))}") from None


__all__ = ["METRICS", "classification_metrics", "get_metric"]
