"""``smoothserve-key``: make a signing key, or print the public key that checks records.

    smoothserve-key generate signing.pem     # private key (mode 0600) and signing.pem.pub
    smoothserve-key public signing.pem       # the public key of a private key file
    smoothserve-key fetch --server host:port # the public key a running server signs with
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from smoothserve_client import SmoothServeClient, SmoothServeError

from .records import key_id, load_private_key, private_key_pem, public_key_pem


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smoothserve-key", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="write a new Ed25519 private key")
    generate.add_argument("path", type=Path)
    public = commands.add_parser("public", help="print the public key of a private key file")
    public.add_argument("path", type=Path)
    fetch = commands.add_parser("fetch", help="print the public key a running server uses")
    fetch.add_argument("--server", default="127.0.0.1:50051")
    fetch.add_argument("--token", help="bearer token, if the server requires one")
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            if args.path.exists():
                raise ValueError(f"{args.path} exists; it is not overwritten")
            key = Ed25519PrivateKey.generate()
            descriptor = os.open(args.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as out:
                out.write(private_key_pem(key))
            pub = args.path.with_name(args.path.name + ".pub")
            pub.write_text(public_key_pem(key.public_key()))
            print(f"key {key_id(key.public_key())}: private key {args.path}, public key {pub}")
        elif args.command == "public":
            key = load_private_key(args.path.read_bytes())
            print(public_key_pem(key.public_key()), end="")
        else:
            with SmoothServeClient(args.server, timeout=10, token=args.token) as client:
                served = client.signing_key()
            note = "" if served.persistent else " (made for this server process only)"
            print(f"# key {served.key_id}, {served.algorithm}{note}", file=sys.stderr)
            print(served.public_key_pem, end="")
    except (OSError, ValueError, SmoothServeError) as exc:
        print(f"smoothserve-key: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
