"""Throughput of fedseal.envelope against the bare AEAD on the same chunks (not a test).

Reference workload: a 67 MB update (LoRA r16 on q/k/v/o of a 7B model, f32) in 1 MiB chunks.
For each suite it times, best and median of several runs:

  seal         fedseal.envelope.seal (HPKE wrap + STREAM + ciphertext digest), keeping
               every chunk (fresh memory for the whole ciphertext)
  iter_seal, streamed
               the same, each chunk dropped once produced (as when streamed to gRPC)
  open, fresh buffer
               StreamOpener.open + feed every chunk + finish, HPKE unwrap and digest
               included, allocating (and first touching) a new plaintext buffer
  open, reused buffer
               the same, decrypting into a caller-supplied buffer reused across runs
  of which digest
               the SHA-256 ciphertext digest alone (part of both seal and open)
  raw encrypt  the suite's AEAD encrypting the same chunks with the same nonces and AAD
  raw decrypt  AEAD.decrypt of the same chunks (a new bytes object per chunk)
  raw decrypt_into
               AEAD.decrypt_into of the same chunks into one buffer reused across runs

GB/s are plaintext bytes (10**9) per second. Run: python benchmarks/bench_envelope.py
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import time
from collections.abc import Callable

import cryptography
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from fedseal.envelope import (
    HpkeSuite,
    SealContext,
    StreamOpener,
    chunk_nonce,
    compute_ciphertext_digest,
    iter_seal,
    seal,
)

PAYLOAD_SIZE = 16_777_216 * 4  # 16.8 M f32 parameters: 67.1 MB
CHUNK_SIZE = 1024 * 1024


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(best, median) seconds over `repeats` runs, after one warm-up run."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return min(samples), statistics.median(samples)


def report(label: str, seconds: tuple[float, float], size: int) -> None:
    best, median = seconds
    print(
        f"  {label:<20} {size / best / 1e9:6.2f} GB/s best  {size / median / 1e9:6.2f} GB/s median"
        f"  ({best * 1e3:7.2f} ms best)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=PAYLOAD_SIZE)
    parser.add_argument("--chunk-size", type=int, default=CHUNK_SIZE)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    size, chunk_size, repeats = args.size, args.chunk_size, args.repeats

    print(
        f"payload {size} bytes ({size / 1e6:.1f} MB), chunks of {chunk_size} bytes, "
        f"best/median of {repeats}; cryptography {cryptography.__version__}, "
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs"
    )
    plaintext = os.urandom(size)
    key = X25519PrivateKey.generate()
    for suite in HpkeSuite:
        bench_suite(suite, plaintext, key, chunk_size, repeats)


def bench_suite(
    suite: HpkeSuite, plaintext: bytes, key: X25519PrivateKey, chunk_size: int, repeats: int
) -> None:
    size = len(plaintext)
    context = SealContext(
        protocol_version=1,
        round_id=1,
        client_id="bench-client",
        adapter_spec_digest=hashlib.sha256(b"spec").digest(),
        num_examples=1000,
        binding=hashlib.sha256(b"binding").digest(),
        round_public_key=key.public_key().public_bytes_raw(),
        idempotency_key=os.urandom(16),
        chunk_size=chunk_size,
        suite=suite,
    )
    print(suite.name)
    sealed = seal(plaintext, key.public_key(), context)
    reused = bytearray(size)

    def do_seal() -> None:
        seal(plaintext, key.public_key(), context)

    def do_iter_seal() -> None:
        for _chunk in iter_seal(plaintext, key.public_key(), context):
            pass  # as when each chunk goes to the network and is dropped

    def do_open(buffer: bytearray | None) -> None:
        opener = StreamOpener.open(sealed.wrapped_key, key, context, size, buffer=buffer)
        for chunk in sealed.chunks:
            opener.feed(chunk)
        opener.finish()

    def do_digest() -> None:
        compute_ciphertext_digest(sealed.wrapped_key, sealed.chunks)

    report("seal", timed(do_seal, repeats), size)
    report("iter_seal, streamed", timed(do_iter_seal, repeats), size)
    report("open, fresh buffer", timed(lambda: do_open(None), repeats), size)
    report("open, reused buffer", timed(lambda: do_open(reused), repeats), size)
    report("  of which digest", timed(do_digest, repeats), size)

    # The peer: the bare AEAD on the same chunks, without HPKE, framing checks or digest.
    data_key = os.urandom(32)
    aead: AESGCM | ChaCha20Poly1305 = (
        AESGCM(data_key) if suite is HpkeSuite.X25519_SHA256_AES256GCM else ChaCha20Poly1305(data_key)
    )
    aad = context.aad()
    view = memoryview(plaintext)
    count = len(sealed.chunks)
    nonces = [chunk_nonce(i, i == count - 1) for i in range(count)]
    pieces = [view[i * chunk_size : (i + 1) * chunk_size] for i in range(count)]
    raw_chunks = [aead.encrypt(n, p, aad) for n, p in zip(nonces, pieces, strict=True)]
    out_view = memoryview(reused)

    def raw_encrypt() -> None:
        for n, p in zip(nonces, pieces, strict=True):
            aead.encrypt(n, p, aad)

    def raw_decrypt() -> None:
        for n, c in zip(nonces, raw_chunks, strict=True):
            aead.decrypt(n, c, aad)

    def raw_decrypt_into() -> None:
        for i, (n, c) in enumerate(zip(nonces, raw_chunks, strict=True)):
            start = i * chunk_size
            aead.decrypt_into(n, c, aad, out_view[start : start + len(c) - 16])

    report("raw encrypt", timed(raw_encrypt, repeats), size)
    report("raw decrypt", timed(raw_decrypt, repeats), size)
    report("raw decrypt_into", timed(raw_decrypt_into, repeats), size)


if __name__ == "__main__":
    main()
