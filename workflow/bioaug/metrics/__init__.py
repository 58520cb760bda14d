"""Metric registry: name -> function scoring one split.

``METRICS["classification"]`` is :func:`classification_metrics`
(``(y_true, y_pred, proba, class_names) -> dict``). Look metrics up with
:func:`get_metric`, which names the known metrics when asked for an unknown one.
"""

from __future__ import annotations

from collections.abc import Callable

from .classification import classification_metrics

METRICS: dict[str, Callable] = {
    "classification": classification_metrics,
}


def get_metric(name: str) -> Callable:
    """The metric function registered as ``name``; KeyError listing known names otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known metrics: {', '.join(sorted(METRICS))}") from None


__all__ = ["METRICS", "classification_metrics", "get_metric"]
