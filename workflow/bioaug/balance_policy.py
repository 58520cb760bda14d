"""The balance policy: how many tiles each class should have after balancing.

`balance.target: max_class` brings every class up to the largest class; `fixed` brings every
class up to `balance.count`. Real tiles are never dropped, so a class already above a fixed
count keeps them all. The generate stage makes the difference with synthetic tiles.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .formats.items import class_names
from .runtime import BioaugError


def class_targets(items: pd.DataFrame, balance_cfg: dict) -> pd.DataFrame:
    """Per class: real train tiles, the target count and the synthetic tiles needed.

    `max_class` brings every class up to the largest; `fixed` up to `count`. Real tiles are
    never dropped, so a class already above a fixed count keeps them all (target = real).
    """
    train = items[items["split"] == "train"]
    n_real = train["label"].value_counts().reindex(class_names(items), fill_value=0)
    if (n_real == 0).any():
        raise BioaugError(f"class {n_real[n_real == 0].index[0]!r} has no items in the train split")
    goal = int(n_real.max()) if balance_cfg["target"] == "max_class" else int(balance_cfg["count"])
    table = pd.DataFrame({"label": n_real.index, "n_real": n_real.to_numpy()})
    table["target"] = np.maximum(table["n_real"], goal)
    table["n_synthetic"] = table["target"] - table["n_real"]
    return table
