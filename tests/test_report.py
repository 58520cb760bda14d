"""Summary table and figures come from the per-job metric files."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bioaug.formats.classify_results import read_results
from bioaug.stages.report import by_arm, plot_gan_losses, plot_recall_by_arm, summarise


def metric_file(tmp_path, arm, seed, recall_rare):
    m = {
        "arm": arm,
        "seed": seed,
        "n": 20,
        "accuracy": 0.9,
        "balanced_accuracy": 0.5 + recall_rare / 2,
        "macro_f1": 0.6,
        "macro_auc": 0.8,
        "best_epoch": 3,
        "seconds": 1.5,
        "per_class": {
            "common": {"precision": 1, "recall": 1.0, "f1": 1.0, "support": 18},
            "rare": {"precision": 1, "recall": recall_rare, "f1": recall_rare, "support": 2},
        },
    }
    path = tmp_path / f"{arm}-{seed}.json"
    path.write_text(json.dumps(m))
    return path


def test_summary_and_figures(tmp_path):
    files = [
        metric_file(tmp_path, "real", 0, 0.0),
        metric_file(tmp_path, "real", 1, 0.5),
        metric_file(tmp_path, "real+gan", 0, 1.0),
    ]
    summary = summarise(read_results(files))
    assert summary[["arm", "seed"]].values.tolist() == [["real", 0], ["real", 1], ["real+gan", 0]]
    assert summary["recall[rare]"].tolist() == [0.0, 0.5, 1.0]
    agg = by_arm(summary).set_index("arm")
    assert agg.loc["real", "recall[rare]_mean"] == pytest.approx(0.25)
    assert agg.loc["real", "balanced_accuracy_mean"] == pytest.approx(0.625)

    plot_recall_by_arm(summary, tmp_path / "recall.png")
    log = pd.DataFrame(
        {"step": [10, 20], "d_loss": [1.9, 1.5], "g_loss": [0.3, 0.6], "d_real": [0.1, 0.4], "d_fake": [-0.1, -0.3]}
    )
    plot_gan_losses(log, tmp_path / "losses.png")
    for png in ("recall.png", "losses.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:4] == b"\x89PNG" and len(data) > 5000
