#!/usr/bin/env python
"""Train a base classifier for randomized smoothing and export it to the model repository.

Examples (from the repository root)::

    python export/train_and_export.py --name fmnist_cnn_gauss_s025 --sigma 0.25
    python export/train_and_export.py --name fmnist_cnn_smoothadv_s025 --method smoothadv \\
        --attack pgd --sigma 0.25 --epsilon 0.5 --num-steps 2 --num-noise-vec 4 --warmup 5
    # interrupted? the same command with --resume continues from runs/<name>/last.pt
"""

import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parent / "server", HERE.parent / "clients"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


if __name__ == "__main__":
    importlib.import_module("smoothtrain.cli").main()
