"""What a signed certificate record costs the server per certificate: building the canonical
record and signing it with Ed25519, against CERTIFY's own statistics (the Clopper-Pearson bound
and the radius) as the baseline, measured in the same run; and what verifying costs.

    .venv/bin/python bench/records.py [--repeat 2000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from smoothcert.families import FAMILIES
from smoothcert.model_config import SmoothModelConfig
from smoothcert.procedures.fixed_n import certify
from smoothcert.verify import recompute
from smoothserve.records import Signer, certificate_record, check_signature
from smoothserve_client.types import PredictResult


def per_call(function, repeat: int) -> float:
    """Median microseconds per call over 5 rounds."""
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeat):
            function()
        rounds.append((time.perf_counter() - started) / repeat * 1e6)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    selection, counts = np.array([2, 98] + [0] * 8), np.array([120, 99_880] + [0] * 8)
    signer = Signer(Ed25519PrivateKey.generate(), persistent=True)
    gaussian = FAMILIES["gaussian"]
    answer = certify(selection, counts, gaussian, 0.5, 0.001)
    result = PredictResult(
        prediction=answer.prediction, label="trouser", abstain=False, radius=answer.radius,
        p_a_lower=answer.p_a_lower, p_value=0.0, candidate=answer.candidate,
        counts=tuple(int(c) for c in counts), selection_counts=tuple(int(c) for c in selection),
        mode="certify", n0=100, n=100_000, alpha=0.001, sigma=0.5, model_name="fmnist",
        model_version="1", model_sha256="0" * 64, server_time_seconds=1.0, seed=None,
    )  # fmt: skip
    config = SmoothModelConfig(name="fmnist", sigma=0.5, labels=tuple(map(str, range(10))),
                               input_shape=(1, 28, 28))  # fmt: skip
    record = certificate_record(result, "1" * 64, (1, 28, 28), "uint8", signer.key_id,
                                model_config=config)  # fmt: skip
    signature = signer.sign(record)
    public = Ed25519PrivateKey.generate().public_key()
    parsed = __import__("json").loads(record)

    baseline = per_call(lambda: certify(selection, counts, gaussian, 0.5, 0.001), args.repeat)
    build = per_call(lambda: certificate_record(result, "1" * 64, (1, 28, 28), "uint8",
                                                signer.key_id, model_config=config),
                     args.repeat)  # fmt: skip
    sign = per_call(lambda: signer.sign(record), args.repeat)
    verify = per_call(lambda: check_signature(record, signature, public), args.repeat)
    redo = per_call(lambda: recompute(parsed), args.repeat // 4)
    print(f"CERTIFY's statistics (baseline): {baseline:7.1f} us per certificate")
    print(f"build the record:                {build:7.1f} us ({build / baseline:.2f}x baseline)")
    print(f"sign it (Ed25519):               {sign:7.1f} us ({sign / baseline:.2f}x baseline)")
    print(f"record + signature:              {build + sign:7.1f} us "
          f"({(build + sign) / baseline:.2f}x baseline); {len(record)} bytes + 64")  # fmt: skip
    print(f"verify: signature {verify:.1f} us, answer recomputed {redo:.1f} us")


if __name__ == "__main__":
    main()
