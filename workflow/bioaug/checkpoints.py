"""Where a GAN run keeps its resumable checkpoints.

A run resumes only from checkpoints of the same run: the folder is named by a hash of the
GAN settings and the training item ids, so changing either starts afresh instead of
silently continuing an older model on other data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def run_id(gan_cfg: dict, train_item_ids) -> str:
    h = hashlib.sha256(json.dumps(gan_cfg, sort_keys=True).encode())
    h.update("\n".join(sorted(map(str, train_item_ids))).encode())
    return h.hexdigest()[:16]


def checkpoint_dir_for(root: str | Path, gan_cfg: dict, train_item_ids) -> Path:
    return (Path(root) / run_id(gan_cfg, train_item_ids)).resolve()
