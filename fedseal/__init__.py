"""FedSeal shared formats: wire protocol, envelope, binding, adapter spec, log format and proofs, and the auditor tool.

Neither the aggregator nor the client SDK is imported from here: both sides import this package.
"""
