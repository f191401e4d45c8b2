#!/usr/bin/env python
"""Certify the uniform-noise model's L1 radii and write docs/results.md's L1 section::

    python export/make_l1_results.py              # 1000 test images, n = 10,000 (about 10 min)
    python export/make_l1_results.py --limit 20 --n 1000 --scratch /tmp/l1   # a quick look
"""

from smoothtrain.l1_results import main

if __name__ == "__main__":
    main()
