"""The enclave core: the only code in FedSeal that ever holds an update's plaintext.

Everything here runs inside the confidential VM. Plaintext exists only in memory: it is
decrypted chunk by chunk into one preallocated buffer (`_receive.py`), parsed and checked
against the round's adapter spec, prepared (DP clip, norm: `_aggregation.py`, `_dp.py`),
folded into the strategy's accumulator (`strategies/`), and dropped. The rest of the
aggregator holds this package's objects as opaque handles and imports no tensor library
(tests/test_enclave_boundary.py). Strategies that need every update at once (median, trimmed
mean, Krum, exact LoRA) re-seal each update under a fresh in-memory key and spool only that
ciphertext to an unlinked temporary file (`_spool.py`), crypto-erased when the round ends.
Nothing in this package writes plaintext to disk or logs tensor data. Keys are made here in
memory (`_keys.py`, `_spool.py`) and never serialised.

Crypto-erasure, what is claimed: when a round closes or fails, its strategy is discarded
(`RoundAggregator.close`/`discard` in `_aggregation.py`), which drops every per-update
spool key and closes the unlinked spool file, so whatever the host kept of that file can
never be decrypted again
(tests/test_approval.py shows a reader of a closed round failing on its own slot); each
upload's decrypted buffer is zeroed when it has been folded in, as are the copies made to
fold it in (DP clip, dtype conversions, scratch for norms); each client's data key
lives only inside its receiver. The client's own wire ciphertext is sealed to its round's
HPKE key (`_roundkey.py`), made here when the round opens and dropped when it closes or
fails, so a recording of it cannot be opened once the round is over (tests/test_round_keys.py).
What is not claimed: Python keeps no promise to overwrite released bytes (a data key
returned by HPKE is a `bytes` object); the round's private key itself is only ever an
OpenSSL key object, which OpenSSL clears when it is freed.
"""
