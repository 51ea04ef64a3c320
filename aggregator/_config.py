"""Job configuration (`fedseal-aggregator --job FILE`), as the operator writes it (JSON, strict).

A job config is a round template plus a number of rounds: the aggregator opens round 1 at
start and the next round whenever one closes or fails, until the job is done. The round
template is a round config (fedseal/roundconfig.py) without `round_id`. See
deploy/examples/job.json. With `"rounds": 0` (and no template) the aggregator opens no
round by itself: operators open them with signed requests.

`principals` names the keys that may sign operator-surface requests, each with one role
(`operator`: open a round, change the job, rotate the enrolment; `approver`: approve a
release): ``[{"name": "alice", "role": "operator", "key": "<base64 raw Ed25519 key>"}]``.
One key has one role, so the two duties need two keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedseal import strictjson
from fedseal.errors import FormatError
from fedseal.roundconfig import MAX_JOB_ROUNDS, ConfigError, RoundConfig, config_int
from fedseal.signed_request import Signer, parse_principals

__all__ = ["JobConfig"]


@dataclass(frozen=True)
class JobConfig:
    """`rounds` rounds, each built from `round_template` with ids 1..rounds."""

    rounds: int
    round_template: dict[str, Any]
    principals: tuple[Signer, ...] = ()

    def round_config(self, round_id: int) -> RoundConfig:
        return RoundConfig.from_json_obj(self.round_template, round_id=round_id)

    @classmethod
    def from_json_obj(cls, obj: object) -> JobConfig:
        where = "job config"
        if not isinstance(obj, dict) or set(obj) - {"format", "rounds", "round_template", "principals"}:
            raise ConfigError(
                f"{where}: must be an object with 'format', 'rounds', 'round_template' (and 'principals')"
            )
        if obj.get("format") != "fedseal-job/v1":
            raise ConfigError(f"{where}: 'format' must be 'fedseal-job/v1'")
        rounds = config_int(obj, "rounds", 0, MAX_JOB_ROUNDS, where)
        template = obj.get("round_template", {} if rounds == 0 else None)
        if not isinstance(template, dict) or "round_id" in template:
            raise ConfigError(f"{where}: 'round_template' must be a round config without 'round_id'")
        try:
            principals = parse_principals(obj.get("principals", []))
        except FormatError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        job = cls(rounds, template, principals)
        if rounds > 0 or template:
            job.round_config(1)  # validate the template now, not when round 1 opens
        return job

    @classmethod
    def from_file(cls, path: Path) -> JobConfig:
        try:
            obj = strictjson.loads(path.read_bytes(), what=f"job config {path}")
        except OSError as exc:
            raise ConfigError(f"cannot read job config {path}: {exc.strerror}") from exc
        except FormatError as exc:
            raise ConfigError(str(exc)) from None
        try:
            return cls.from_json_obj(obj)
        except ConfigError as exc:
            raise type(exc)(f"{path}: {exc}") from None  # the subclass names the refusal
