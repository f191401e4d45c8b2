#!/usr/bin/env python
"""Certify denoised smoothing through the server and write docs/results.md's "Denoised
smoothing" section and docs/results_denoised_certified_accuracy.png::

    python export/make_denoised_results.py           # 500 test images, n = 2,000 (~25 min)
    python export/make_denoised_results.py --limit 20 --n 500 --scratch /tmp/dr   # a quick look

Needs the models of ``python export/make_denoised.py`` and a server that serves ensembles.
"""

from smoothtrain.denoised_results import main

if __name__ == "__main__":
    main()
