"""bioaug: balance rare classes in biological image datasets with a class-conditional GAN,
and measure on held-out real data whether that helps a classifier.

Where things live (one rule of workflow/rules/*.smk = one module of stages/):
  config.py          the config validated once: schema (types, ranges, defaults), cross-key rules
  runtime.py         BioaugError, logging, progress, atomic writes, JAX set-up, stage()
  stages/            one module per rule, one entry point `run` each (see stages/__init__.py):
                     download, index, split, tile, train_gan, generate, balance,
                     feature_classifier, gan_quality, classify, report
  formats/           one module per artefact, its only reader and writer: items, shards,
                     synthetic, balanced, classify_results, images (source images)
  gan/               the class-conditional GAN: networks, ops, losses, step, state, devices,
                     augment, noise_model, input_pipeline, sample, train (see gan/__init__.py)
  classifier/        the downstream CNN and its training loop (one arm, one seed)
  metrics/           every metric its own module behind one registry
  archives.py        safe extraction of dataset archives (by content, with limits)
  arms.py            the arms compared (real, real+classic, oversample, ..., gan_only)
  balance_policy.py  how many tiles each class should have after balancing
  histogram_match.py a class's synthetic pixel values mapped to its real tiles' distribution
  run_times.py       where a run's time went: Snakemake benchmark files summed per rule
  verdicts.py        the verdict rule: paired bootstrap intervals, per-class verdicts
  tiling_rules.py    how an image becomes tiles (image_mode, normalise): shared by index and tile
  simulate.py        the built-in dataset (synthetic fluorescence fields)
  viz.py             tile grids for sample and report figures
"""

__version__ = "0.1.0"
