"""A demo-like audit log for the report and evidence-pack tests: a live aggregator on loopback.

Three rounds over four enrolled sites (three per round): DP in every round (one job budget),
round 2 gated by two of three approvers, a duplicate upload refused in every round.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import safetensors.torch
from conftest import access_config, make_adapter, round_config, simulated_collector, site_client
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from logfiles import log_entries

from aggregator._server import start_aggregator
from attestation import Policy
from client_sdk import UpdateRejectedError
from fedseal.approval import sign_approval
from fedseal.logformat import EntryKind
from fedseal.roundconfig import ApprovalParams, DpParams

ORIGIN = "fedseal.test/report"
INITIAL = make_adapter(500)
INITIAL_BYTES = safetensors.torch.save(INITIAL)
APPROVERS = [
    Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"approver %d" % i).digest()) for i in range(3)
]
GATE = ApprovalParams(tuple(k.public_key().public_bytes_raw() for k in APPROVERS), min_approvals=2)
DP = DpParams(
    epsilon=8.0,
    delta=1e-5,
    clip_norm=1.0,
    rounds=4,
    initial_adapter_digest=hashlib.sha256(INITIAL_BYTES).digest(),
)
COHORTS = {
    1: ("site-0", "site-1", "site-2"),
    2: ("site-0", "site-1", "site-3"),
    3: ("site-1", "site-2", "site-3"),
}


def make_report_log(folder: Path, policy: Policy) -> Path:
    """Run the three rounds; return the audit log's path."""
    path = folder / "audit.log"
    running = start_aggregator(
        log_path=path,
        log_origin=ORIGIN,
        collectors=[simulated_collector()],
        access=access_config(),
        initial_adapter=INITIAL_BYTES,
    )
    try:
        for rid, sites in COHORTS.items():
            gated = rid == 2
            running.rounds.open_round(round_config(rid, dp=DP, approval=GATE if gated else None))
            for n, site in enumerate(sites):
                adapter = {k: v + 0.01 * (n + rid) for k, v in INITIAL.items()}
                with site_client(running.endpoint, policy, site, timeout=20) as client:
                    client.submit_update(adapter, round_id=rid, num_examples=50 * (n + 1) + rid)
                    if n == 0:
                        # refused and logged: a second update from the site in its round
                        with contextlib.suppress(UpdateRejectedError):
                            client.submit_update(adapter, round_id=rid, num_examples=5)
            running.rounds.wait_closed(rid, 10.0)
            if gated:
                (closed,) = [
                    e
                    for e in log_entries(path)
                    if e.kind is EntryKind.ROUND_CLOSED and e.fields["round_id"] == rid
                ]
                import base64

                digest = base64.b64decode(closed.fields["aggregate_digest"])
                with site_client(running.endpoint, policy, "site-0", timeout=20) as client:
                    for key in APPROVERS[:2]:
                        client.submit_approval(
                            sign_approval(key, log_origin=ORIGIN, round_id=rid, aggregate_digest=digest)
                        )
            with site_client(running.endpoint, policy, sites[0], timeout=20) as client:
                client.fetch_aggregate(rid, wait_seconds=15)
    finally:
        running.stop(grace=0.5)
    return path
