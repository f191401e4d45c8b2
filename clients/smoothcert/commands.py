"""The console scripts ``smoothserve-verify`` and ``smoothserve-key``.

They need SciPy and cryptography, the client's ``verify`` extra. The tools are imported here
only when run, so that a client installed without the extra answers with one line naming the
extra (exit status 2) rather than a traceback.
"""

from __future__ import annotations

import importlib
import sys

VERIFY_EXTRA = "install the verify extra: pip install './clients[verify]'"
# The top-level modules the extra brings (cryptography's C part is cffi's).
EXTRA_MODULES = {"scipy", "cryptography", "_cffi_backend"}


def _run(module: str) -> int:
    try:
        tool = importlib.import_module(module)
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in EXTRA_MODULES:
            raise
        print(f"error: no module named {error.name!r}; {VERIFY_EXTRA}", file=sys.stderr)
        return 2
    return tool.main()


def verify() -> int:
    """``smoothserve-verify``: check a saved certificate record offline."""
    return _run("smoothcert.verify")


def key() -> int:
    """``smoothserve-key``: make a signing key, or print a public key."""
    return _run("smoothcert.keytool")
