"""Offline training and export of base classifiers for randomized smoothing.

Gaussian noise augmentation (Cohen, Rosenfeld and Kolter, ICML 2019) and SmoothAdv
(Salman et al., NeurIPS 2019): adversarial training of the smoothed soft classifier.
The exported ONNX graphs take float32 pixels in [0, 1]; normalisation is their first layer.
"""

__version__ = "0.1.0"
