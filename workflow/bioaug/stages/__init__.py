"""One module per Snakemake rule, named as the rule; each has one entry point, `run`, that the
rule's script calls with explicit arguments. A stage never imports another stage
(tests/test_layout.py checks it): what two stages share lives in formats/, arms.py,
balance_policy.py, verdicts.py or the model packages.

  download            fetch / copy / simulate a dataset; safe archive extraction
  index               annotations of any format -> one item table; rejected inputs
  split               grouped, stratified, seeded train/val/test split
  tile                crops, sliding windows and per-image normalisation -> tile shards
  train_gan           the class-conditional GAN on the train split
  generate            synthetic tiles of one class (selective synthesis optional)
  balance             the balanced dataset (real train + synthetic tiles)
  feature_classifier  the real-trained classifier behind the GAN metrics and the filter
  gan_quality         FID/KID, precision/recall, density/coverage, memorisation audit
  classify            one (arm, seed) model, scored once on the test split
  report              tables, verdicts and figures of one dataset
"""
