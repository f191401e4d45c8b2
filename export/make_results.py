#!/usr/bin/env python
"""Regenerate docs/results.md from the committed models (the "results command").

    python export/make_results.py                      # full run: 1000 images, n=10000
    python export/make_results.py --limit 20 --n 1000 --empirical-limit 20 --scratch /tmp/results

Certification goes through the real gRPC server (``smoothserve.testing.ServerProcess`` on
``model_repo``) and the client; the empirical robust accuracy is the SmoothAdv PGD attack in
torch on ``checkpoints/<name>.pt``.
"""

import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parent / "server", HERE.parent / "clients"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


if __name__ == "__main__":
    importlib.import_module("smoothtrain.results_cli").main()
