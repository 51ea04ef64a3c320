"""The enclave core: the only code in FedSeal that ever holds an update's plaintext.

Everything here runs inside the confidential VM. Plaintext exists only in memory: it is
decrypted chunk by chunk into one preallocated buffer (`_receive.py`), parsed and checked
against the round's adapter spec, folded into the strategy's accumulator
(`strategies/`), and dropped. Nothing in this package writes to disk or logs tensor data.
Keys are made here in memory (`_keys.py`) and never serialised.
"""
