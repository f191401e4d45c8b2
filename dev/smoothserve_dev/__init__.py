"""Development harnesses for SmoothServe's tests, benchmarks and scripts.

``testing.ServerProcess`` runs a real server on loopback, ``triton_twin`` a real Triton with a
CPU twin of the model repository, ``models`` writes ONNX models whose smoothed behaviour is
known exactly. Nothing in the ``smoothserve`` package imports this one.
"""
