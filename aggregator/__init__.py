"""FedSeal aggregator: the gRPC service that runs inside a Hopper confidential VM.

Public API for embedding and tests; operators use the `fedseal-aggregator` command.
"""

from aggregator._config import JobConfig
from aggregator._identity import AccessConfig, AccessControl, AccessLimits, Caller
from aggregator._log import AuditLog, AuditLogError
from aggregator._rounds import RoundError, RoundManager
from aggregator._server import RunningAggregator, start_aggregator
from fedseal.roundconfig import ConfigError, RoundConfig

__all__ = [
    "AccessConfig",
    "AccessControl",
    "AccessLimits",
    "AuditLog",
    "AuditLogError",
    "Caller",
    "ConfigError",
    "JobConfig",
    "RoundConfig",
    "RoundError",
    "RoundManager",
    "RunningAggregator",
    "start_aggregator",
]
