#!/usr/bin/env python
"""Train a base classifier for randomized smoothing and export it to the model repository.

Examples (from the repository root, with the packages installed:
``pip install -e ./clients -e . -e ./dev -e ./export``)::

    python export/train_and_export.py --name fmnist_cnn_gauss_s025 --sigma 0.25
    python export/train_and_export.py --name fmnist_cnn_smoothadv_s025 --method smoothadv \\
        --attack pgd --sigma 0.25 --epsilon 0.5 --num-steps 2 --num-noise-vec 4 --warmup 5
    # interrupted? the same command with --resume continues from runs/<name>/last.pt
"""

from smoothtrain.cli import main

if __name__ == "__main__":
    main()
