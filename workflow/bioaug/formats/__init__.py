"""One module per artefact, each the only reader and writer of its files.

  items.py             index.csv / items.csv (the item table), rejected.csv; class order
  shards.py            tile shards (.npy + .csv + .norm.csv) and which images each holds
  synthetic.py         synthetic/<class>.{npy,csv,json}
  balanced.py          balanced/<class>/*.{tif,png} + manifest.csv + README.txt (balance.format)
  png_files.py         the PNG files of balanced.py (8- and 16-bit, through pypng)
  classify_results.py  classify/<arm>/seed-<n>.json
  images.py            source images (TIFF, PNG, JPEG, NPZ members), read region by region
The GAN's own artefacts (checkpoints, the exported generator, train_log.csv) belong to
bioaug.gan; the feature classifier's folder to bioaug.classifier.
"""
