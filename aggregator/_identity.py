"""Who is calling, and may they: identity, revocation and abuse limits for the gRPC surface.

A caller is authenticated by
- its TLS client certificate (on the mutual-TLS port, where gRPC has already checked it
  chains to the consortium CA), mapped to an enrolled site by digest or subject
  (fedseal/enrolment.py) and checked against the CA's revocation list, and/or
- a call token in the `fedseal-call-auth-bin` metadata: a signed request
  (fedseal/signed_request.py, action ``call``, params ``{"method": <this call>}``) by an
  enrolled site key or a principal key of the job config, bound to this enclave's log key,
  used once.
Both present must name the same site. A site enrolled with a certificate identity must
present the certificate: its key alone does not do. GetAttestation and the log calls are
public (rate-limited per peer address and overall); everything else needs a caller.

Limits per identity (AccessLimits): concurrent streams, calls per round and upload bytes
per round (what the headers declare). A refused call gets an AccessDeniedError with its
reason; these refusals come from parties that are not (or not yet) trusted, so they go to
the service's log lines, not to the audit log. What does go to the audit log: the
enrolment at start and at every rotation, the principals at start, every revocation list
loaded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from aggregator._log import AuditLog
from fedseal.canonical import canonical_json
from fedseal.enrolment import EnrolledSite, Enrolment, EnrolmentError
from fedseal.logschema import (
    EnrolmentCause,
    EnrolmentRecorded,
    PrincipalRecord,
    PrincipalsRecorded,
    RevocationListLoaded,
)
from fedseal.roundconfig import ConfigError
from fedseal.signed_request import (
    CALL_ACTION,
    NonceCache,
    Role,
    SignedRequestError,
    Signer,
    VerifiedRequest,
    now_ms,
    principals_to_json,
    verify_signed_request,
)
from fedseal.wire import CALL_AUTH_METADATA_KEY, AccessDeniedError, AccessDeniedReason

__all__ = [
    "AccessConfig",
    "AccessControl",
    "AccessLimits",
    "Caller",
    "RevocationList",
]

_log = structlog.get_logger("fedseal.aggregator.access")
_CALLER_ROLES = frozenset({Role.SITE, Role.OPERATOR, Role.APPROVER})
_MAX_PEERS = 10_000
_CRL_RECHECK_SECONDS = 1.0


@dataclass(frozen=True)
class AccessLimits:
    """Every abuse limit, each configurable (`fedseal-aggregator --help`, deploy/README.md)."""

    max_streams_per_identity: int = 2  # concurrent SubmitUpdate/GetAggregate streams
    max_calls_per_round: int = 256  # authenticated calls per identity while one round is current
    max_bytes_per_round: int = 4 * 1024**3  # declared upload bytes per identity per round
    public_rate_per_peer: float = 20.0  # public calls per second per peer address...
    public_burst_per_peer: int = 100  # ...with this burst
    public_rate_total: float = 200.0  # public calls per second from everyone together...
    public_burst_total: int = 1000  # ...with this burst

    def __post_init__(self) -> None:
        for name in ("max_streams_per_identity", "max_calls_per_round", "max_bytes_per_round"):
            if getattr(self, name) < 1:
                raise ConfigError(f"access limit {name} must be at least 1")
        for name in ("public_rate_per_peer", "public_rate_total"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"access limit {name} must be positive")
        for name in ("public_burst_per_peer", "public_burst_total"):
            if getattr(self, name) < 1:
                raise ConfigError(f"access limit {name} must be at least 1")


@dataclass(frozen=True)
class AccessConfig:
    """Who may call: the enrolment, the job's principals, the consortium CA and its CRL."""

    enrolment: Enrolment
    principals: tuple[Signer, ...] = ()
    # The CA(s) that issue site certificates (PEM); kept out of reprs in case a file given
    # as the CA also held its key (refused when read, aggregator/_cli.py).
    client_ca_pem: bytes | None = field(default=None, repr=False)
    crl_path: Path | None = None  # that CA's revocation list (PEM or DER), re-read on change
    limits: AccessLimits = field(default_factory=AccessLimits)

    def __post_init__(self) -> None:
        if self.crl_path is not None and self.client_ca_pem is None:
            raise ConfigError("a revocation list (--crl) needs the CA that signs it (--client-ca)")
        _check_principals_apart(self.enrolment, self.principals)


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: an enrolled site or a principal of the job config."""

    name: str  # site id or principal name
    role: Role
    certificate_sha256: bytes | None = None  # the TLS client certificate it presented
    key_id: str | None = None  # the key its call token was signed with

    @property
    def identity(self) -> str:
        return f"{self.role.value}:{self.name}"


class RevocationList:
    """The consortium CA's CRL: signature checked against the CA, re-read when the file
    changes, never rolled back to a lower CRL number, refused once past its next update."""

    def __init__(
        self,
        path: Path,
        ca_certificates: Sequence[x509.Certificate],
        log: AuditLog,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self._path = path
        self._cas = tuple(ca_certificates)
        self._log = log
        self._clock = clock
        self._lock = threading.Lock()
        self._stat: tuple[int, int] | None = None
        self._next_look = 0.0
        self._crl: x509.CertificateRevocationList | None = None
        self._number = -1
        self._revoked: frozenset[int] = frozenset()
        self._reload(initial=True)

    def check(self, certificate: x509.Certificate) -> None:
        """Raise AccessDeniedError (revoked / revocation_unknown) unless the certificate is good."""
        with self._lock:
            if time.monotonic() >= self._next_look:
                self._reload(initial=False)
            crl = self._crl
            revoked = self._revoked
        assert crl is not None  # loaded at start or the aggregator does not start
        if certificate.issuer != crl.issuer:
            raise AccessDeniedError(
                AccessDeniedReason.REVOCATION_UNKNOWN,
                "the client certificate's issuer has no revocation list here",
            )
        next_update = crl.next_update_utc
        if next_update is not None and self._clock() > next_update:
            raise AccessDeniedError(
                AccessDeniedReason.REVOCATION_UNKNOWN,
                f"the revocation list expired at {next_update.isoformat()}; the operator must give a new one",
            )
        if certificate.serial_number in revoked:
            raise AccessDeniedError(AccessDeniedReason.REVOKED, "this client certificate is revoked")

    def _reload(self, *, initial: bool) -> None:
        self._next_look = time.monotonic() + _CRL_RECHECK_SECONDS
        try:
            stat = self._path.stat()
            key = (stat.st_mtime_ns, stat.st_size)
            if key == self._stat:
                return
            data = self._path.read_bytes()
            crl = self._parse(data)
        except (OSError, ValueError, ConfigError) as exc:
            if initial:
                raise ConfigError(f"revocation list {self._path}: {exc}") from None
            # Keep the last good list: the operator cannot forge a CRL, only withhold one,
            # and a list that is still within its validity is as good as any.
            _log.warning("revocation_list_not_reloaded", path=str(self._path), error=str(exc))
            return
        self._stat = key
        number = _crl_number(crl)
        if number < self._number:
            _log.warning("revocation_list_rollback_refused", number=number, current=self._number)
            return
        if number == self._number:
            return
        self._crl, self._number = crl, number
        self._revoked = frozenset(r.serial_number for r in crl)
        next_update = crl.next_update_utc
        self._log.append(
            RevocationListLoaded(
                issuer=crl.issuer.rfc4514_string(),
                crl_number=number,
                crl_digest=hashlib.sha256(crl.public_bytes(Encoding.DER)).digest(),
                revoked=len(self._revoked),
                next_update=next_update.isoformat() if next_update is not None else "",
            )
        )
        _log.info("revocation_list_loaded", number=number, revoked=len(self._revoked))

    def _parse(self, data: bytes) -> x509.CertificateRevocationList:
        crl = (
            x509.load_pem_x509_crl(data)
            if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_crl(data)
        )
        issuers = [ca for ca in self._cas if ca.subject == crl.issuer]
        if not issuers:
            raise ConfigError("it is not issued by the client CA (--client-ca)")
        if not any(crl.is_signature_valid(ca.public_key()) for ca in issuers):  # type: ignore[arg-type]
            raise ConfigError("its signature does not verify under the client CA")
        return crl


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return 0


class _TokenBucket:
    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.stamp = float(burst), now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class _Usage:
    calls: int = 0
    bytes: int = 0


class AccessControl:
    """The gate every handler goes through (see the module docstring). Thread-safe."""

    def __init__(
        self,
        config: AccessConfig,
        *,
        audience: bytes,
        attestation_audience: bytes | None = None,
        log: AuditLog,
        current_round: Callable[[], int],
        clock_ms: Callable[[], int] = now_ms,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = config.limits
        self._principals = config.principals
        self._audience = audience
        # GetAttestation tokens are bound to the enclave's TLS certificate: a client knows
        # it (pinned) before it knows the log key that the attestation brings.
        self._attestation_audience = attestation_audience
        self._log = log
        self._current_round = current_round
        self._clock_ms = clock_ms
        self._monotonic = monotonic
        self._nonces = NonceCache()
        self._lock = threading.Lock()
        self._enrolment = config.enrolment
        self._signers = self._signer_directory(config.enrolment)
        self._streams: dict[str, int] = {}
        self._usage_round = -1
        self._usage: dict[str, _Usage] = {}
        self._peers: dict[str, _TokenBucket] = {}
        self._attesters: dict[str, _TokenBucket] = {}  # enrolled identities' GetAttestation
        limits = config.limits
        self._public_total = _TokenBucket(limits.public_rate_total, limits.public_burst_total, monotonic())
        self._ca_certificates = (
            tuple(x509.load_pem_x509_certificates(config.client_ca_pem)) if config.client_ca_pem else ()
        )
        self._revocations = (
            RevocationList(
                config.crl_path,
                self._ca_certificates,
                log,
                lambda: dt.datetime.fromtimestamp(self._clock_ms() / 1000, dt.UTC),
            )
            if config.crl_path is not None
            else None
        )

    # ------------------------------------------------------------------ enrolment
    @property
    def enrolment(self) -> Enrolment:
        with self._lock:
            return self._enrolment

    @property
    def principals(self) -> tuple[Signer, ...]:
        return self._principals

    def record_start(self) -> None:
        """Log the enrolment and the principals in force as this enclave starts."""
        listed = principals_to_json(self._principals)
        self._log.append(
            PrincipalsRecorded(
                principals=tuple(
                    PrincipalRecord(name=p.name, role=p.role.value, key=p.public_key)
                    for p in self._principals
                ),
                principals_digest=hashlib.sha256(canonical_json(listed)).digest(),
            )
        )
        self._record_enrolment(self._enrolment, EnrolmentCause.START)

    def rotate_enrolment(self, enrolment: Enrolment) -> None:
        """Replace the enrolment (it must have a higher version); logged, in force at once."""
        with self._lock:
            current = self._enrolment
            if enrolment.version <= current.version:
                raise EnrolmentError(
                    f"enrolment version {enrolment.version} is not above the current one ({current.version})"
                )
            _check_principals_apart(enrolment, self._principals)
            signers = self._signer_directory(enrolment)
            # Logged under the lock, so the log's order is the order changes took effect.
            self._record_enrolment(enrolment, EnrolmentCause.ROTATION)
            self._enrolment, self._signers = enrolment, signers
        removed = sorted({s.site_id for s in current.sites} - {s.site_id for s in enrolment.sites})
        _log.info("enrolment_rotated", version=enrolment.version, sites=len(enrolment.sites), removed=removed)

    def _record_enrolment(self, enrolment: Enrolment, cause: EnrolmentCause) -> None:
        self._log.append(
            EnrolmentRecorded(
                enrolment=enrolment.to_json_obj(),
                enrolment_digest=enrolment.digest(),
                version=enrolment.version,
                cause=cause,
            )
        )

    def _signer_directory(self, enrolment: Enrolment) -> Mapping[str, Signer]:
        signers = {
            kid: Signer(site.site_id, Role.SITE, key)
            for site in enrolment.sites
            for kid, key in zip(site.key_ids, site.keys, strict=True)
        }
        signers.update({p.key_id: p for p in self._principals})
        return signers

    def site_key(self, site_id: str, key_id: str) -> bytes | None:
        """The raw public key `key_id` if it is enrolled for `site_id` now, else None."""
        site = self.enrolment.site(site_id)
        if site is None:
            return None
        return dict(zip(site.key_ids, site.keys, strict=True)).get(key_id)

    def site_of_key(self, key_id: str) -> str | None:
        site = self.enrolment.site_for_key(key_id)
        return site.site_id if site is not None else None

    # ------------------------------------------------------------------ authentication
    def authenticate(self, context: grpc.ServicerContext, method: str) -> Caller:
        """The caller of this call, or AccessDeniedError; also charges its call budget."""
        with self._lock:
            enrolment, signers = self._enrolment, self._signers
        cert_site, cert_digest = self._certificate_site(context, enrolment)
        token = _metadata(context, CALL_AUTH_METADATA_KEY)
        signer: Signer | None = None
        if token is not None:
            try:
                verified = verify_signed_request(
                    token,
                    signers=signers,
                    audience=(
                        self._attestation_audience
                        if self._attestation_audience is not None and method.endswith("/GetAttestation")
                        else self._audience
                    ),
                    actions={CALL_ACTION: _CALLER_ROLES},
                    nonces=self._nonces,
                    now=self._clock_ms(),
                )
            except SignedRequestError as exc:
                raise AccessDeniedError(AccessDeniedReason(exc.reason), str(exc)) from None
            if dict(verified.params) != {"method": method}:
                raise AccessDeniedError(
                    AccessDeniedReason.MALFORMED_REQUEST, "the call token was made for another method"
                )
            signer = verified.signer
        if cert_site is not None:
            if signer is not None and (signer.role is not Role.SITE or signer.name != cert_site.site_id):
                raise AccessDeniedError(
                    AccessDeniedReason.IDENTITY_MISMATCH,
                    f"the client certificate is enrolled for {cert_site.site_id!r}, the call token is "
                    f"signed by {signer.role.value} {signer.name!r}",
                )
            caller = Caller(cert_site.site_id, Role.SITE, cert_digest, signer.key_id if signer else None)
        elif signer is not None:
            if signer.role is Role.SITE:
                site = enrolment.site(signer.name)
                if site is not None and site.requires_certificate:
                    raise AccessDeniedError(
                        AccessDeniedReason.CERTIFICATE_REQUIRED,
                        f"site {signer.name!r} is enrolled with a client certificate: call over mutual TLS",
                    )
            caller = Caller(signer.name, signer.role, None, signer.key_id)
        else:
            raise AccessDeniedError(
                AccessDeniedReason.UNAUTHENTICATED,
                "this call needs an enrolled identity (client certificate or signed call token)",
            )
        if method.endswith("/GetAttestation"):
            self._charge_attestation(caller)
        else:
            self._charge_call(caller)
        return caller

    def _certificate_site(
        self, context: grpc.ServicerContext, enrolment: Enrolment
    ) -> tuple[EnrolledSite | None, bytes | None]:
        # gRPC gives a list of PEM certificates (the stubs say bytes): the first is the leaf.
        pems: object = context.auth_context().get("x509_pem_cert")
        leaf = pems[0] if isinstance(pems, list) and pems else None
        if not isinstance(leaf, bytes):
            return None, None
        try:
            certificate = x509.load_pem_x509_certificate(leaf)
        except ValueError:
            raise AccessDeniedError(
                AccessDeniedReason.NOT_ENROLLED, "the client certificate cannot be parsed"
            ) from None
        if self._revocations is not None:
            self._revocations.check(certificate)
        digest = hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest()
        site = enrolment.site_for_certificate(digest, certificate.subject.rfc4514_string())
        if site is None:
            raise AccessDeniedError(
                AccessDeniedReason.NOT_ENROLLED,
                f"client certificate {digest.hex()[:16]}... ({certificate.subject.rfc4514_string()[:80]}) "
                "is not enrolled for any site",
            )
        return site, digest

    def authorize_request(self, data: bytes, actions: Mapping[str, frozenset[Role]]) -> VerifiedRequest:
        """Verify an operator-surface request; AccessDeniedError names why it is refused."""
        with self._lock:
            signers = self._signers
        try:
            return verify_signed_request(
                data,
                signers=signers,
                audience=self._audience,
                actions=actions,
                nonces=self._nonces,
                now=self._clock_ms(),
            )
        except SignedRequestError as exc:
            raise AccessDeniedError(AccessDeniedReason(exc.reason), str(exc)) from None

    # ------------------------------------------------------------------ limits
    def public_call(self, context: grpc.ServicerContext) -> None:
        """Rate-limit a public call by peer address and overall; AccessDeniedError if over."""
        peer = _peer_host(context.peer())
        now = self._monotonic()
        with self._lock:
            bucket = self._peers.get(peer)
            if bucket is None:
                if len(self._peers) >= _MAX_PEERS:
                    # Forget peers whose bucket is full again: they are as good as new.
                    self._peers = {
                        p: b for p, b in self._peers.items() if b.tokens + (now - b.stamp) * b.rate < b.burst
                    }
                bucket = _TokenBucket(
                    self._limits.public_rate_per_peer, self._limits.public_burst_per_peer, now
                )
                if len(self._peers) < _MAX_PEERS:
                    self._peers[peer] = bucket
            if not bucket.take(now) or not self._public_total.take(now):
                raise AccessDeniedError(
                    AccessDeniedReason.RATE_LIMITED, "too many public calls; slow down and try again"
                )

    def _usage_for(self, caller: Caller, current: int) -> _Usage:
        if current != self._usage_round:
            self._usage_round, self._usage = current, {}
        return self._usage.setdefault(caller.identity, _Usage())

    def _charge_call(self, caller: Caller) -> None:
        current = self._current_round()  # outside our lock: it takes the rounds' lock
        with self._lock:
            usage = self._usage_for(caller, current)
            if usage.calls >= self._limits.max_calls_per_round:
                raise AccessDeniedError(
                    AccessDeniedReason.THROTTLED,
                    f"{caller.identity} made {usage.calls} calls in this round, the limit is "
                    f"{self._limits.max_calls_per_round}",
                )
            usage.calls += 1

    def _charge_attestation(self, caller: Caller) -> None:
        """An enrolled caller's GetAttestation: its own bucket (the public per-peer rate and
        burst, per identity), apart from the shared public budget and its call budget."""
        now = self._monotonic()
        with self._lock:
            bucket = self._attesters.get(caller.identity)
            if bucket is None:
                bucket = _TokenBucket(
                    self._limits.public_rate_per_peer, self._limits.public_burst_per_peer, now
                )
                self._attesters[caller.identity] = bucket
            if not bucket.take(now):
                raise AccessDeniedError(
                    AccessDeniedReason.RATE_LIMITED,
                    f"{caller.identity} asks for attestation too often; slow down and try again",
                )

    def charge_upload(self, caller: Caller, declared_bytes: int) -> None:
        """Count an upload's declared ciphertext size against the caller's bytes per round."""
        current = self._current_round()
        with self._lock:
            usage = self._usage_for(caller, current)
            if usage.bytes + declared_bytes > self._limits.max_bytes_per_round:
                raise AccessDeniedError(
                    AccessDeniedReason.THROTTLED,
                    f"{caller.identity} would upload {usage.bytes + declared_bytes} bytes in this round, "
                    f"the limit is {self._limits.max_bytes_per_round}",
                )
            usage.bytes += declared_bytes

    def refund_upload(self, caller: Caller, declared_bytes: int) -> None:
        """Give back what `charge_upload` counted for an upload the aggregator turned away
        before it sent anything (busy: the client sends it again later)."""
        current = self._current_round()
        with self._lock:
            usage = self._usage_for(caller, current)
            usage.bytes = max(0, usage.bytes - declared_bytes)

    @contextlib.contextmanager
    def stream(self, caller: Caller) -> Iterator[None]:
        """Hold one of the caller's concurrent stream slots for the body of the `with`."""
        with self._lock:
            held = self._streams.get(caller.identity, 0)
            if held >= self._limits.max_streams_per_identity:
                raise AccessDeniedError(
                    AccessDeniedReason.THROTTLED,
                    f"{caller.identity} already has {held} streams open, the limit is "
                    f"{self._limits.max_streams_per_identity}",
                )
            self._streams[caller.identity] = held + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._streams[caller.identity] - 1
                if left:
                    self._streams[caller.identity] = left
                else:
                    del self._streams[caller.identity]


def _check_principals_apart(enrolment: Enrolment, principals: Sequence[Signer]) -> None:
    """A key is a site key or a principal key, never both (roles stay separate)."""
    for principal in principals:
        site = enrolment.site_for_key(principal.key_id)
        if site is not None:
            raise ConfigError(
                f"principal {principal.name!r}'s key is also enrolled for site {site.site_id!r}; "
                "use separate keys"
            )


def _metadata(context: grpc.ServicerContext, key: str) -> bytes | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, bytes) else None
    return None


def _peer_host(peer: str) -> str:
    """'ipv4:1.2.3.4:5678' / 'ipv6:[::1]:5678' → the address without the port."""
    address = peer.split(":", 1)[1] if ":" in peer else peer
    host, sep, _ = address.rpartition(":")
    return host if sep else address
