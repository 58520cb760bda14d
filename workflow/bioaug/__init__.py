"""bioaug: balance rare classes in biological image datasets with a class-conditional GAN.

Where things live:
  simulate.py        the built-in dataset (synthetic fluorescence fields)
  download.py        download stage: builtin / URL / local path
  annotations.py     readers for the input formats -> one item table
  split.py           grouped, stratified, seeded train/val/test split
  tiling.py          object-centred crops + per-image percentile normalisation
  tilestore.py       the tile shard format shared by all later stages
  gan/               class-conditional GAN (networks, augment, losses, train loop, sampling)
  generate.py        how many tiles each class needs, and writing them
  balance.py         the balanced dataset (TIFF class folders + manifest.csv)
  classifier/        downstream CNN and its training loop (one arm, one seed)
  metrics/           metric registry (classification, ...)
  report.py          summary tables and figures
  runtime.py         logging, progress, JAX set-up shared by every stage
"""

__version__ = "0.1.0"
