#!/usr/bin/env python
"""Denoised smoothing on Fashion-MNIST: train the plain classifier (no noise) and the DnCNN
denoisers (MSE and stability objectives at sigma 0.25 and 0.5), and export them into
model_repo/ as Triton components plus one ensemble per denoiser::

    python export/make_denoised.py                # about 30 min on one CPU core
    python export/make_denoised.py --reuse        # reuse checkpoints of the same settings
    python export/make_denoised.py --classifier-epochs 1 --mse-epochs 1 --stab-epochs 1 \\
        --max-batches 2 --model-repo /tmp/repo --checkpoint-dir /tmp/ckpt --runs-dir /tmp/runs

Then ``python export/make_denoised_results.py`` certifies them through the server.
"""

from smoothtrain.denoise import main

if __name__ == "__main__":
    main()
