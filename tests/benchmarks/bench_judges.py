"""The judge against a stronger one (issue 16): the `real` arm (or another real-tile arm) trained
with the small CNN of the run's config and with a ResNet, several seeds each, on a finished run's
own tiles and split.

    .venv/bin/python tests/benchmarks/bench_judges.py results/demo --configfile config.yaml
    .venv/bin/python tests/benchmarks/bench_judges.py results/bccd --configfile my.yaml \\
        --resnet-width 32 --seeds 0 1 2 --out judges.json
    # a practitioner's recipe: online flips / rotations / jitter, cosine schedule, weight decay
    .venv/bin/python tests/benchmarks/bench_judges.py results/demo --arm real+classic \\
        --schedule cosine --weight-decay 5e-4

Each model is what the classify stage trains for `real` (`stages.classify.run_arm`: the same
budget, validation-selected epoch, test scored once); models run seed by seed, judges
interleaved, all in this one process, so the first model of each judge also pays its
compile (reported apart as `first_model_s`). Prints a table; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "workflow"))


def judges(classifier: dict, width: int, blocks: list[int], recipe: dict) -> dict[str, dict]:
    """{name: classifier section}: the config's own judge and the ResNet of the same recipe
    (`recipe`: overrides of classifier keys for both, e.g. epochs, schedule, weight_decay)."""
    base = {**classifier, "command": None, "init_weights": None, **recipe}
    small = {**base, "architecture": "small_cnn"}
    resnet = {**base, "architecture": "resnet", "width": width, "blocks": list(blocks)}
    name = f"resnet width {width} blocks {list(blocks)}"
    return {f"small_cnn {list(small['channels'])}": small, name: resnet}


def summarise(results: list[dict]) -> dict:
    def stats(values):
        return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}

    names = results[0]["class_names"]
    return {
        "models": len(results),
        "accuracy": stats([r["accuracy"] for r in results]),
        "macro_f1": stats([r["macro_f1"] for r in results]),
        "per_class_f1": {c: statistics.fmean(r["per_class"][c]["f1"] for r in results) for c in names},
        "train_steps": results[0]["train_steps"],
        "seconds_per_model": statistics.fmean(r["seconds"] for r in results[1:]) if len(results) > 1 else None,
        "first_model_s": results[0]["seconds"],
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a finished run's results/<dataset> folder (tiles/, fold-<f>/items.csv)")
    ap.add_argument("--configfile", type=Path, default=REPO / "config.yaml", help="the run's config (its classifier)")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--resnet-width", type=int, default=64)
    ap.add_argument("--resnet-blocks", type=int, nargs="+", default=[2, 2, 2, 2])
    ap.add_argument("--arm", default="real", help="a real-tile arm: real | real+classic | oversample | class_weights")
    ap.add_argument("--epochs", type=int, default=None, help="override classifier.epochs (both judges)")
    ap.add_argument("--schedule", choices=["constant", "cosine"], default=None, help="override classifier.schedule")
    ap.add_argument("--weight-decay", type=float, default=None, help="override classifier.weight_decay")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)

    import yaml

    from bioaug.arms import ARMS
    from bioaug.config import dataset_section, validate_config
    from bioaug.formats.items import read_items
    from bioaug.stages.classify import run_arm

    real_arms = [k for k, v in ARMS.items() if v["data"] == "real"]
    if a.arm not in real_arms:
        raise SystemExit(f"--arm {a.arm}: not an arm on real tiles ({', '.join(real_arms)})")
    config = validate_config(yaml.safe_load(a.configfile.read_text()))
    items = read_items(a.results / f"fold-{a.fold}" / "items.csv")
    shards = sorted(str(p) for p in (a.results / "tiles").glob("shard-*.npy"))
    if not shards:
        raise SystemExit(f"no tile shards in {a.results / 'tiles'}: run the pipeline first")
    classifier = dataset_section(config, a.results.name, "classifier")  # results/<dataset>
    overrides = {"epochs": a.epochs, "schedule": a.schedule, "weight_decay": a.weight_decay}
    runs = judges(classifier, a.resnet_width, a.resnet_blocks, {k: v for k, v in overrides.items() if v is not None})
    results: dict[str, list[dict]] = {name: [] for name in runs}
    t_all = time.perf_counter()
    for seed in a.seeds:  # judges interleaved, so a busy machine slows both alike
        for name, cfg in runs.items():
            r = run_arm(a.arm, seed, items, shards, cfg)
            results[name].append(r)
            print(f"{name} seed {seed}: accuracy {r['accuracy']:.3f} macro F1 {r['macro_f1']:.3f} "
                  f"({r['seconds']:.0f} s, {r['train_steps']} steps)", flush=True)  # fmt: skip
    out = {
        "results": str(a.results),
        "fold": a.fold,
        "arm": a.arm,
        "recipe": {k: runs[next(iter(runs))][k] for k in ("epochs", "batch_size", "lr", "schedule", "weight_decay")},
        "seeds": a.seeds,
        "n_test": results[next(iter(runs))][0]["n"],
        "wall_s": time.perf_counter() - t_all,
        "judges": {name: summarise(rs) for name, rs in results.items()},
    }
    print(f"\n{'judge':<36} {'accuracy':>14} {'macro F1':>14} {'s/model':>8}")
    for name, s in out["judges"].items():
        per_model = s["seconds_per_model"] or s["first_model_s"]
        print(f"{name:<36} {s['accuracy']['mean']:.3f} +- {s['accuracy']['sd']:.3f} "
              f"{s['macro_f1']['mean']:.3f} +- {s['macro_f1']['sd']:.3f} {per_model:8.0f}")  # fmt: skip
        print("    per class F1: " + ", ".join(f"{c} {f:.2f}" for c, f in s["per_class_f1"].items()))
    text = json.dumps(out)
    if a.out:
        a.out.write_text(text + "\n")
    print(text)
    return out


if __name__ == "__main__":
    main()
