"""FedSeal's shared formats and the auditor's tool.

Wire protocol, envelope, attestation binding, adapter spec, round config, log format,
Merkle proofs, signed notes and receipts live here. Neither the aggregator nor the client
SDK is imported from this package: both sides import it.
"""
