#!/usr/bin/env python3
"""Packs a published `.tiktoken` vocabulary (one base64 token and its rank per line, ranks 0, 1, 2, ...)
into the `.bpe` layout that `src/billing/bpe.rs` embeds: the token count (u32, little-endian), then one
length byte per token in rank order, then every token's bytes back to back in rank order.

    python3 pack.py o200k_base.tiktoken o200k_base.bpe
"""
import base64
import struct
import sys


def pack(source: str, target: str) -> None:
    tokens = []
    with open(source, "rb") as f:
        for rank, line in enumerate(f):
            token, given = line.split()
            if int(given) != rank:
                sys.exit(f"{source}: line {rank + 1} has rank {int(given)}; the layout needs ranks in order")
            tokens.append(base64.b64decode(token, validate=True))
    if any(not 0 < len(t) < 256 for t in tokens):
        sys.exit(f"{source}: a token is empty or longer than 255 bytes")
    with open(target, "wb") as f:
        f.write(struct.pack("<I", len(tokens)))
        f.write(bytes(len(t) for t in tokens))
        for t in tokens:
            f.write(t)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    pack(sys.argv[1], sys.argv[2])
