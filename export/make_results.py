#!/usr/bin/env python
"""Regenerate docs/results.md from the committed models (the "results command").

    python export/make_results.py                      # full run: 1000 images, n=10000
    python export/make_results.py --limit 20 --n 1000 --empirical-limit 20 --scratch /tmp/results

Certification goes through the real gRPC server (``smoothserve_dev.testing.ServerProcess`` on
``model_repo``) and the client; the empirical robust accuracy is the SmoothAdv PGD attack in
torch on ``checkpoints/<name>.pt``. Needs the installed packages
(``pip install -e ./clients -e . -e ./dev -e ./export``).
"""

from smoothtrain.results_cli import main

if __name__ == "__main__":
    main()
