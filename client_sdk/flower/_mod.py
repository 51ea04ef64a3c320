"""The client-side piece: a Flower mod that sends the update to the attested enclave.

Wrapped around a ClientApp's train and evaluate functions (``ClientApp(mods=[fedseal_mod()])``):

- **incoming**: if the message's arrays are a FedSeal round's aggregate
  (``fedseal.global-round`` > 0), fetch that aggregate from the enclave, verify its manifest
  against the attested log key, check that the arrays the Flower server sent are exactly it,
  and hand the verified tensors to the user's function. A Flower server that alters the
  global adapter is caught here (GlobalModelMismatchError), not trusted;
- **outgoing** (train): take the reply's one ArrayRecord and its ``num-examples``, attest the
  aggregator with a fresh challenge, seal the adapter to the round's key (signed by the
  attested log key) and submit it (client_sdk.FedSealClient), verify the receipt, and
  reply to Flower with the user's metrics and the receipt only. Neither the Flower server
  nor the SuperLink sees the update, in plaintext or encrypted.

Identity: the client id sealed into the payload (and logged by the enclave) comes from this
site's configuration, never from Flower's ``src_node_id``, which the host asserts. The
endpoint, policy, client id and the site's enrolled key come from the node config that
the site's SuperNode operator sets (``flower-supernode --node-config "fedseal-endpoint='...'
fedseal-policy='default' fedseal-client-id='hospital-a' fedseal-key-file='/etc/site.key'"``,
plus ``fedseal-tls-certificate`` and ``fedseal-tls-key`` for a site enrolled with a client
certificate); arguments given in code are used where the node config says nothing. The
policy and the key must come from the site: the app's code and its run config are chosen
by whoever submits the Flower run.

Simulated nodes (Flower's Simulation Engine, ``flwr run`` on a local-simulation
federation) have no node config of their own: when the node config names no identity, the
node's ``partition-id`` picks its site from the site-map folder the run config names
(``fedseal-sites``, written by ``fedseal-job init --site-map``), which also gives the
policy; the endpoint then comes from the run config's ``fedseal-endpoint``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from attestation import Policy, builtin_policy_names
from client_sdk._client import FedSealClient
from client_sdk._identity import ClientIdentity
from client_sdk._sitemap import SiteMap
from client_sdk.flower._records import (
    GLOBAL_ROUND_KEY,
    RECEIPT_RECORD,
    ROUND_KEY,
    FlowerIntegrationError,
    GlobalModelMismatchError,
    arrays_to_tensors,
    config_int,
    single_array_record,
    tensors_to_arrays,
)
from client_sdk.flower._runconfig import load_policy

__all__ = [
    "CLIENT_ID_KEY",
    "ENDPOINT_KEY",
    "KEY_FILE_KEY",
    "POLICY_KEY",
    "SITES_KEY",
    "TLS_CERTIFICATE_KEY",
    "TLS_KEY_KEY",
    "FedSealMod",
    "fedseal_mod",
]

ENDPOINT_KEY = "fedseal-endpoint"
POLICY_KEY = "fedseal-policy"
CLIENT_ID_KEY = "fedseal-client-id"
KEY_FILE_KEY = "fedseal-key-file"  # the site's enrolled Ed25519 key (PEM)
TLS_CERTIFICATE_KEY = "fedseal-tls-certificate"  # optional: its TLS client certificate (PEM)
TLS_KEY_KEY = "fedseal-tls-key"  # and that certificate's key (PEM)
SITES_KEY = "fedseal-sites"  # run config, simulation only: a site-map folder (client_sdk._sitemap)
PARTITION_ID_KEY = "partition-id"  # what Flower's Simulation Engine puts in a node's config
_NUM_EXAMPLES = "num-examples"


@dataclass(frozen=True)
class _Settings:
    endpoint: str
    policy: Policy
    identity: ClientIdentity

    @property
    def client_id(self) -> str:
        return self.identity.name


class FedSealMod:
    """A Flower ``Mod``: ``(message, context, call_next) -> reply``. See the module docstring."""

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        policy: Policy | None = None,
        client_id: str | None = None,
        identity: ClientIdentity | None = None,
        timeout: float = 60.0,
        aggregate_wait_seconds: float = 60.0,
    ) -> None:
        self._endpoint = endpoint
        self._policy = policy
        self._client_id = client_id
        self._identity = identity
        self._timeout = timeout
        self._aggregate_wait = aggregate_wait_seconds

    def __call__(self, message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        category = message.metadata.message_type.split(".", 1)[0]
        if category not in (MessageType.TRAIN, MessageType.EVALUATE):
            return call_next(message, context)
        settings = self._settings(context)
        config = _config_record(message)
        global_round = config_int(config, GLOBAL_ROUND_KEY, default=0)
        with FedSealClient(
            settings.endpoint, settings.policy, identity=settings.identity, timeout=self._timeout
        ) as client:
            if global_round > 0:
                aggregate = client.fetch_aggregate(global_round, wait_seconds=self._aggregate_wait)
                message.content = _with_verified_arrays(message.content, aggregate.tensors(), global_round)
            if category == MessageType.EVALUATE:
                return call_next(message, context)
            round_id = config_int(config, ROUND_KEY)
            # Fail before training, not after, if the aggregator does not satisfy the site's
            # policy; submit_update attests again with a fresh challenge before it seals.
            client.attest()
            reply = call_next(message, context)
            if reply.has_error():
                return reply
            _, arrays = single_array_record(reply.content, what="the train reply")
            num_examples = _num_examples(reply.content)
            receipt = client.submit_update(
                arrays_to_tensors(arrays),
                round_id=round_id,
                num_examples=num_examples,
                # The site's train metrics travel sealed in the update: the enclave averages
                # them (example-weighted) and the server gets only those means.
                metrics=_site_metrics(reply.content) or None,
                # Trained from the verified aggregate of that round; from Flower's own initial
                # arrays (no FedSeal round yet): the current global, as before.
                base_round_id=global_round if global_round > 0 else None,
            )
        # Only the weight leaves the site in the clear; the metrics went sealed with the update.
        records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
            "metrics": MetricRecord({_NUM_EXAMPLES: num_examples})
        }
        records[RECEIPT_RECORD] = ConfigRecord(
            {"receipt": receipt.text, "client-id": settings.client_id, "round-id": round_id}
        )
        return Message(RecordDict(records), reply_to=message)

    def _settings(self, context: Context) -> _Settings:
        node = context.node_config
        endpoint = _node_str(node, ENDPOINT_KEY) or self._endpoint
        client_id = _node_str(node, CLIENT_ID_KEY) or self._client_id
        if client_id is None and self._identity is not None:
            client_id = self._identity.name
        policy_ref = _node_str(node, POLICY_KEY)
        policy = load_policy(policy_ref) if policy_ref else self._policy
        key_file = _node_str(node, KEY_FILE_KEY)
        identity = self._identity if key_file is None else None
        simulated = _simulated_site(context) if client_id is None and identity is None else None
        if simulated is not None:
            site_map, client_id = simulated
            key_file = str(site_map.key_file(client_id))
            if policy is None:
                ref = site_map.policy
                policy = load_policy(ref if ref in builtin_policy_names() else str(site_map.folder / ref))
            endpoint = endpoint or _run_str(context, ENDPOINT_KEY)
        missing = [
            key
            for key, value in (
                (ENDPOINT_KEY, endpoint),
                (CLIENT_ID_KEY, client_id),
                (POLICY_KEY, policy),
                (KEY_FILE_KEY, key_file or identity),
            )
            if value is None
        ]
        if missing or endpoint is None or client_id is None or policy is None:
            raise FlowerIntegrationError(
                f"FedSeal needs {', '.join(missing)}: set them in this SuperNode's --node-config "
                "(the policy and the key must be the site's own); a simulated node takes its site "
                f"from the run config's {SITES_KEY!r} folder"
            )
        if key_file is not None:
            certificate, tls_key = _node_str(node, TLS_CERTIFICATE_KEY), _node_str(node, TLS_KEY_KEY)
            identity = ClientIdentity.from_files(
                client_id,
                Path(key_file),
                certificate_file=Path(certificate) if certificate else None,
                tls_key_file=Path(tls_key) if tls_key else None,
            )
        assert identity is not None  # checked with `missing` above
        if identity.name != client_id:
            raise FlowerIntegrationError(
                f"the identity given in code is {identity.name!r}, the node config says {client_id!r}"
            )
        return _Settings(endpoint, policy, identity)


def _simulated_site(context: Context) -> tuple[SiteMap, str] | None:
    """A simulated node's site from the run config's site map (none: not a simulated node,
    or no map): partition ``partition-id`` of the map is this node."""
    folder = _run_str(context, SITES_KEY)
    partition = context.node_config.get(PARTITION_ID_KEY)
    if folder is None or partition is None:
        return None
    if isinstance(partition, bool) or not isinstance(partition, int):
        raise FlowerIntegrationError(f"node config {PARTITION_ID_KEY!r} must be an int, got {partition!r}")
    site_map = SiteMap.load(Path(folder))
    return site_map, site_map.site(partition)


def _run_str(context: Context, key: str) -> str | None:
    value = context.run_config.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise FlowerIntegrationError(f"run config {key!r} must be a non-empty string")
    return value


def fedseal_mod(
    *,
    endpoint: str | None = None,
    policy: Policy | None = None,
    client_id: str | None = None,
    identity: ClientIdentity | None = None,
    timeout: float = 60.0,
) -> FedSealMod:
    """The mod to put in ``ClientApp(mods=[...])``; with no arguments, all from the node config."""
    return FedSealMod(
        endpoint=endpoint, policy=policy, client_id=client_id, identity=identity, timeout=timeout
    )


def _node_str(node_config: Mapping[str, object], key: str) -> str | None:
    value = node_config.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise FlowerIntegrationError(f"node config {key!r} must be a non-empty string")
    return value


def _config_record(message: Message) -> ConfigRecord:
    records = message.content.config_records
    if len(records) != 1:
        raise FlowerIntegrationError(
            f"the {message.metadata.message_type} message must carry one ConfigRecord, it carries "
            f"{sorted(records)}"
        )
    return next(iter(records.values()))


def _site_metrics(content: RecordDict) -> dict[str, float]:
    """The train reply's scalar metrics (not its weight), as the enclave takes them."""
    out: dict[str, float] = {}
    for record in content.metric_records.values():
        for name, value in record.items():
            if name != _NUM_EXAMPLES and isinstance(value, int | float) and not isinstance(value, bool):
                out[name] = float(value)  # a name the enclave cannot take is a named SDK error
    return out


def _num_examples(content: RecordDict) -> int:
    found = [m[_NUM_EXAMPLES] for m in content.metric_records.values() if _NUM_EXAMPLES in m]
    if len(found) != 1:
        raise FlowerIntegrationError(
            f"the train reply must carry '{_NUM_EXAMPLES}' in exactly one MetricRecord (FedAvg's weight)"
        )
    value = found[0]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise FlowerIntegrationError(f"'{_NUM_EXAMPLES}' must be a positive integer, got {value!r}")
    return value


def _with_verified_arrays(
    content: RecordDict, verified: dict[str, torch.Tensor], global_round: int
) -> RecordDict:
    """The message content with its arrays replaced by the verified aggregate.

    Arrays the server sent must equal the aggregate exactly (compared as float32, which is
    what tensors_to_arrays sends); absent arrays are filled in. A new RecordDict is built:
    the server's records may be shared between messages.
    """
    key = "arrays"
    if content.array_records:
        key, sent = single_array_record(content, what="the message")
        got = arrays_to_tensors(sent)
        if sorted(got) != sorted(verified):
            raise GlobalModelMismatchError(
                f"the Flower server's global arrays name other tensors than FedSeal round {global_round}'s "
                "signed aggregate"
            )
        for name, tensor in verified.items():
            if not torch.equal(got[name].to(torch.float32), tensor.to(torch.float32)):
                raise GlobalModelMismatchError(
                    f"tensor {name!r} sent by the Flower server differs from FedSeal round {global_round}'s "
                    "signed aggregate: refusing to train on it"
                )
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
        **content.config_records,
        **content.metric_records,
    }
    records[key] = tensors_to_arrays(verified)
    return RecordDict(records)
