"""Every console command against a table of user mistakes (issue 18, item 6).

Each case runs a command's `main(argv)` in-process and must end with the exit code its
--help documents and exactly one line saying what is wrong (naming the file, flag or
value), never a traceback. fedseal-aggregator and fedseal-audit's witness would serve
forever if a mistake slipped through: a watchdog stops them (SIGTERM) as soon as they
write their port file, and the case then fails on the exit code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import serving_aggregator
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from identities import ConsortiumPki, write_enrolment

import aggregator._cli
import attestation._cli
import auditor._cli as audit_cli  # the one place that names fedseal-audit's module
import client_sdk._jobcli
from auditor import WitnessKey

MAINS: dict[str, Callable[[list[str] | None], int]] = {
    "fedseal-aggregator": aggregator._cli.main,
    "fedseal-attest": attestation._cli.main,
    "fedseal-audit": audit_cli.main,
    "fedseal-job": client_sdk._jobcli.main,
}

DEEP = "[" * 5000 + "]" * 5000


class Files:
    """The inputs a careless user points the commands at, made once per test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.enrolment = write_enrolment(root / "enrolment.json")
        self.missing = root / "missing.json"
        self.directory = root / "a-directory"
        self.directory.mkdir()
        self.malformed = self._write("malformed.json", b'{"version": 1, "sites": [')
        self.nested = self._write("nested.json", ('{"version": 1, "sites": ' + DEEP + "}").encode())
        self.wrong_type = self._write("array.json", b"[1, 2, 3]")
        self.binary = self._write("binary.bin", bytes(range(256)) * 16)
        self.empty = self._write("empty.json", b"")
        self.huge = self._write("huge.json", b"")
        with self.huge.open("r+b") as handle:  # 16 MiB of NULs, sparse: cheap to make per case
            handle.truncate(16 * 1024 * 1024)
        self.text = self._write("notes.txt", b"these are my notes\n")
        self.port_file = root / "port"
        self.witness_key = root / "witness.key"
        WitnessKey.generate("witness.test/w1").write(self.witness_key)

    def _write(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.write_bytes(data)
        return path


@dataclass(frozen=True)
class Case:
    command: str
    argv: Callable[[Files], list[str]]
    code: int
    says: Callable[[Files], str]  # what the error line must name


def _agg(
    *extra: str | Callable[[Files], str], enrolment: bool = True, dev: bool = True
) -> Callable[[Files], list[str]]:
    def argv(f: Files) -> list[str]:
        args = [
            "--log",
            str(f.root / "audit.log"),
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(f.port_file),
        ]
        if dev:
            args.append("--insecure-simulated-tee")
        if enrolment:
            args += ["--enrolment", str(f.enrolment)]
        return args + [x(f) if callable(x) else x for x in extra]

    return argv


def _ca_with_its_key(root: Path) -> Path:
    pki = ConsortiumPki()
    path = root / "ca-and-key.pem"
    path.write_bytes(pki.ca_pem + pki.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return path


def _with(values: tuple[str, ...], make: Callable[..., list[str]]) -> Callable[[Files], list[str]]:
    """Bind a loop's values now (a bare lambda in a loop would see only the last ones)."""
    return lambda f: make(f, *values)


def _p(attr: str) -> Callable[[Files], str]:
    return lambda f: str(getattr(f, attr))


def _s(text: str) -> Callable[[Files], str]:
    return lambda f: text


FILE_MISTAKES = ("missing", "directory", "malformed", "nested", "wrong_type", "binary", "empty", "huge")

CASES: dict[str, Case] = {}
for kind in FILE_MISTAKES:
    CASES[f"aggregator --enrolment {kind}"] = Case(
        "fedseal-aggregator", _agg("--enrolment", _p(kind), enrolment=False), 2, _p(kind)
    )
    CASES[f"aggregator --job {kind}"] = Case("fedseal-aggregator", _agg("--job", _p(kind)), 2, _p(kind))
    CASES[f"aggregator --self-attestation-policy {kind}"] = Case(
        "fedseal-aggregator", _agg("--self-attestation-policy", _p(kind), dev=False), 2, _p(kind)
    )
    CASES[f"aggregator --initial-adapter {kind}"] = Case(
        "fedseal-aggregator", _agg("--initial-adapter", _p(kind)), 2, _p(kind)
    )
    CASES[f"aggregator --client-ca {kind}"] = Case(
        "fedseal-aggregator",
        _agg("--listen-mtls", "127.0.0.1:0", "--client-ca", _p(kind)),
        2,
        _p(kind),
    )
    CASES[f"attest verify --bundle {kind}"] = Case(
        "fedseal-attest",
        _with((kind,), lambda f, k: ["verify", "--bundle", str(getattr(f, k)), "--challenge", "00" * 32]),
        2 if kind in ("missing", "directory") else 1,
        _p(kind) if kind in ("missing", "directory") else _s("BundleFormatError"),
    )
    CASES[f"attest verify --policy {kind}"] = Case(
        "fedseal-attest",
        _with(
            (kind,),
            lambda f, k: [
                "verify",
                "--bundle",
                str(f.text),
                "--challenge",
                "00" * 32,
                "--policy",
                str(getattr(f, k)),
            ],
        ),
        2,
        _p(kind),
    )
    CASES[f"audit verify --policy {kind}"] = Case(
        "fedseal-audit",
        _with((kind,), lambda f, k: ["verify", str(f.text), "--policy", str(getattr(f, k))]),
        2,
        _p(kind),
    )
    CASES[f"audit check-receipt receipt {kind}"] = Case(
        "fedseal-audit",
        _with((kind,), lambda f, k: ["check-receipt", str(getattr(f, k)), "--log", str(f.text)]),
        2 if kind in ("missing", "directory", "binary") else 1,
        _s("receipt") if kind in ("missing", "directory", "binary") else _s("RECEIPT DOES NOT HOLD"),
    )
    if kind == "missing":
        continue  # a witness's first start: no state yet
    CASES[f"audit witness serve --state {kind}"] = Case(
        "fedseal-audit",
        _with(
            (kind,),
            lambda f, k: [
                "witness",
                "serve",
                "--key-file",
                str(f.witness_key),
                "--state",
                str(getattr(f, k)),
                "--log-origin",
                "fedseal.test/log",
                "--listen",
                "127.0.0.1:0",
                "--port-file",
                str(f.port_file),
            ],
        ),
        2,
        _p(kind),
    )

for kind in ("directory", "binary", "text", "nested", "empty"):
    if kind != "empty":  # an empty --log is a new log
        CASES[f"aggregator --log {kind}"] = Case(
            "fedseal-aggregator",
            _with(
                (kind,),
                lambda f, k: [
                    "--log",
                    str(getattr(f, k)),
                    "--insecure-simulated-tee",
                    "--listen",
                    "127.0.0.1:0",
                    "--enrolment",
                    str(f.enrolment),
                    "--port-file",
                    str(f.port_file),
                ],
            ),
            2,
            _p(kind),
        )
    CASES[f"audit verify log {kind}"] = Case(
        "fedseal-audit",
        _with(
            (kind,),
            lambda f, k: ["verify", str(getattr(f, k)), "--builtin-policy", "dev-insecure-allow-simulated"],
        ),
        2 if kind == "directory" else 1,
        _p(kind) if kind == "directory" else _s("FAILED"),
    )

for value, says in [
    ("nothost:abc", "nothost:abc"),
    ("127.0.0.1", "127.0.0.1"),
    ("", "--listen"),
    ("127.0.0.1:99999", "99999"),
    ("127.0.0.1:-1", "127.0.0.1:-1"),
    ("[::1:50051", "[::1:50051"),
    ("bad host!:50051", "bad host!"),
]:
    CASES[f"aggregator --listen {value!r}"] = Case(
        "fedseal-aggregator",
        _with(
            (value,),
            lambda f, v: [
                "--log",
                str(f.root / "audit.log"),
                "--insecure-simulated-tee",
                "--listen",
                v,
                "--enrolment",
                str(f.enrolment),
                "--port-file",
                str(f.port_file),
            ],
        ),
        2,
        _s(says),
    )
    CASES[f"aggregator --listen-mtls {value!r}"] = Case(
        "fedseal-aggregator", _agg("--listen-mtls", value, "--client-ca", _p("text")), 2, _s(says)
    )

for flag, value in [
    ("--max-workers", "0"),
    ("--upload-line", "abc"),
    ("--max-streams", "-1"),
    ("--max-streams", "abc"),
    ("--max-calls-per-round", "0"),
    ("--max-bytes-per-round", "-5"),
    ("--public-rate", "nan"),
    ("--public-rate", "-1"),
    ("--public-rate-total", "inf"),
    ("--public-burst", "-1"),
    ("--public-burst-total", "x"),
    ("--witness-timeout", "nan"),
    ("--witness-timeout", "-3"),
    ("--tls-name", "bad name!"),
    ("--log-origin", "has space"),
    ("--witness", "garbage"),
    ("--metrics-listen", "nothost:abc"),
    ("--health-listen", "70000"),
    ("--accumulator-device", "tpu"),
    ("--crl", "/nonexistent/crl.pem"),
]:
    CASES[f"aggregator {flag} {value!r}"] = Case("fedseal-aggregator", _agg(flag, value), 2, _s(flag))

CASES["aggregator --spool-dir naming a file"] = Case(
    "fedseal-aggregator", _agg("--spool-dir", _p("text")), 2, _p("text")
)
CASES["aggregator --initial-adapter text"] = Case(
    "fedseal-aggregator", _agg("--initial-adapter", _p("text")), 2, _p("text")
)
CASES["aggregator --client-ca text"] = Case(
    "fedseal-aggregator", _agg("--listen-mtls", "127.0.0.1:0", "--client-ca", _p("text")), 2, _p("text")
)
CASES["aggregator unknown flag"] = Case("fedseal-aggregator", _agg("--frobnicate"), 2, _s("--frobnicate"))
CASES["aggregator no arguments"] = Case("fedseal-aggregator", lambda f: [], 2, _s("required"))

for value in ("nan", "-1", "inf", "abc", "1e308"):
    CASES[f"audit verify --max-clock-skew {value}"] = Case(
        "fedseal-audit",
        _with((value,), lambda f, v: ["verify", str(f.text), "--max-clock-skew", v]),
        2,
        _s("--max-clock-skew"),
    )
    CASES[f"audit witness serve --max-clock-skew {value}"] = Case(
        "fedseal-audit",
        _with(
            (value,),
            lambda f, v: [
                "witness",
                "serve",
                "--key-file",
                str(f.witness_key),
                "--state",
                str(f.root / "state.json"),
                "--log-origin",
                "fedseal.test/log",
                "--max-clock-skew",
                v,
                "--port-file",
                str(f.port_file),
            ],
        ),
        2,
        _s("--max-clock-skew"),
    )
    CASES[f"audit check-receipt --timeout {value}"] = Case(
        "fedseal-audit",
        _with(
            (value,), lambda f, v: ["check-receipt", str(f.text), "--endpoint", "127.0.0.1:1", "--timeout", v]
        ),
        2,
        _s("--timeout"),
    )
    CASES[f"attest verify --timeout {value}"] = Case(
        "fedseal-attest",
        _with((value,), lambda f, v: ["verify", "--endpoint", "127.0.0.1:1", "--timeout", v]),
        2,
        _s("--timeout"),
    )
for value in ("::::", "", "nothost", "host:0", "host:abc", "[zz]:1"):
    CASES[f"audit check-receipt --endpoint {value!r}"] = Case(
        "fedseal-audit",
        _with((value,), lambda f, v: ["check-receipt", str(f.text), "--endpoint", v]),
        2,
        _s("endpoint"),
    )
    CASES[f"attest verify --endpoint {value!r}"] = Case(
        "fedseal-attest", _with((value,), lambda f, v: ["verify", "--endpoint", v]), 2, _s("endpoint")
    )
CASES["audit witness serve --listen nothost:abc"] = Case(
    "fedseal-audit",
    lambda f: [
        "witness",
        "serve",
        "--key-file",
        str(f.witness_key),
        "--state",
        str(f.root / "state.json"),
        "--log-origin",
        "fedseal.test/log",
        "--listen",
        "nothost:abc",
        "--port-file",
        str(f.port_file),
    ],
    2,
    _s("--listen"),
)
CASES["audit witness keygen --key-file directory"] = Case(
    "fedseal-audit",
    lambda f: ["witness", "keygen", "--name", "w.example/w1", "--key-file", str(f.directory)],
    2,
    _p("directory"),
)
CASES["audit witness keygen --name bad"] = Case(
    "fedseal-audit",
    lambda f: ["witness", "keygen", "--name", "bad name", "--key-file", str(f.root / "w.key")],
    2,
    _s("bad name"),
)
# A trusted checkpoint that is not a checkpoint note or a receipt is an unreadable input.
CASES["audit verify --trusted-checkpoint nested"] = Case(
    "fedseal-audit", lambda f: ["verify", str(f.text), "--trusted-checkpoint", str(f.nested)], 2, _p("nested")
)
CASES["audit verify --trusted-checkpoint a private key"] = Case(
    "fedseal-audit",
    lambda f: ["verify", str(f.text), "--trusted-checkpoint", str(f.witness_key)],
    2,
    _s("holds a private key, not a checkpoint"),
)
CASES["aggregator --log under a file"] = Case(
    "fedseal-aggregator",
    _agg("--log", lambda f: str(f.text / "logs" / "audit.log")),
    2,
    _s("is a file, not a folder"),
)
CASES["aggregator --port-file a directory"] = Case(
    "fedseal-aggregator", _agg("--port-file", _p("directory")), 2, _s("--port-file")
)
CASES["aggregator --mtls-port-file under a missing folder"] = Case(
    "fedseal-aggregator",
    _agg("--listen-mtls", "127.0.0.1:0", "--mtls-port-file", lambda f: str(f.missing / "port")),
    2,
    _s("--mtls-port-file"),
)
CASES["aggregator --spool-dir missing"] = Case(
    "fedseal-aggregator", _agg("--spool-dir", _p("missing")), 2, _s("does not exist")
)
CASES["aggregator --witness a private key"] = Case(
    "fedseal-aggregator",
    _agg("--witness", lambda f: f.witness_key.read_text().strip() + "@127.0.0.1:1"),
    2,
    _s("not its private key"),
)
CASES["aggregator --witness a private key after a space"] = Case(
    "fedseal-aggregator",
    _agg("--witness", lambda f: " " + f.witness_key.read_text().strip() + "@127.0.0.1:1"),
    2,
    _s("not its private key"),
)
CASES["aggregator --client-ca with its private key"] = Case(
    "fedseal-aggregator",
    _agg(
        "--listen-mtls",
        "127.0.0.1:0",
        "--client-ca",
        lambda f: str(_ca_with_its_key(f.root)),
    ),
    2,
    _s("holds a private key block"),
)
CASES["aggregator --witness-timeout 1e308"] = Case(
    "fedseal-aggregator", _agg("--witness-timeout", "1e308"), 2, _s("--witness-timeout")
)
CASES["audit no command"] = Case("fedseal-audit", lambda f: [], 2, _s("required"))
for flag, value in [("--challenge", "zz"), ("--challenge", "00"), ("--now", "yesterday")]:
    CASES[f"attest verify {flag} {value}"] = Case(
        "fedseal-attest",
        _with(
            (
                flag,
                value,
            ),
            lambda f, fl, v: ["verify", "--bundle", str(f.text), "--challenge", "00" * 32, fl, v],
        ),
        2,
        _s(flag),
    )
CASES["attest collect --out directory"] = Case(
    "fedseal-attest",
    lambda f: [
        "collect",
        "--challenge",
        "00" * 32,
        "--hpke-public-key",
        "00" * 32,
        "--log-public-key",
        "00" * 32,
        "--out",
        str(f.directory),
    ],
    2,
    _p("directory"),
)
CASES["attest collect --challenge short"] = Case(
    "fedseal-attest",
    lambda f: [
        "collect",
        "--challenge",
        "00",
        "--hpke-public-key",
        "00" * 32,
        "--log-public-key",
        "00" * 32,
        "--out",
        str(f.root / "b.json"),
    ],
    2,
    _s("--challenge"),
)


# --- fedseal-job init -------------------------------------------------------------------
# A tiny Llama's config.json (shapes only: --base-model is never loaded) and a PEFT config.
_BASE_CONFIG = (
    b'{"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, '
    b'"num_key_value_heads": 2, "num_hidden_layers": 1, "vocab_size": 64}'
)
_LORA_CONFIG = b'{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]}'


def _as(kind: str, name: str) -> Callable[[Files], str]:
    """The content of mistake `kind` in a file called `name` (in a folder of its own)."""

    def path(f: Files) -> str:
        folder = f.root / f"as-{kind}-{name.replace('.', '-')}"
        folder.mkdir(exist_ok=True)
        target = folder / name
        source: Path = getattr(f, kind)
        if source.is_dir():
            target.mkdir(exist_ok=True)
        elif source.exists():
            target.write_bytes(source.read_bytes())
        return str(target)

    return path


def _arg(kind: str, make: Callable[[Files, str], str]) -> Callable[[Files], str]:
    """One argument made from mistake `kind` (bound now, as `_with` does for argv)."""
    return lambda f: make(f, kind)


def _good(name: str, data: bytes) -> Callable[[Files], str]:
    def path(f: Files) -> str:
        folder = f.root / f"good-{name.replace('.', '-')}"
        folder.mkdir(exist_ok=True)
        (folder / name).write_bytes(data)
        return str(folder)

    return path


def _job(
    *extra: str | Callable[[Files], str], out: Callable[[Files], str] | None = None
) -> Callable[[Files], list[str]]:
    def argv(f: Files) -> list[str]:
        target = out(f) if out is not None else str(f.root / "job")
        args = ["init", target, "--sites", "hospital-a,hospital-b", "--operator", "flower-server"]
        return args + [x(f) if callable(x) else x for x in extra]

    return argv


_ADAPTER = ("--adapter", _good("adapter_config.json", _LORA_CONFIG))
_BASE = ("--base-model", _good("config.json", _BASE_CONFIG))
for kind in FILE_MISTAKES:
    CASES[f"job init --adapter {kind}"] = Case("fedseal-job", _job("--adapter", _p(kind)), 2, _p(kind))
    CASES[f"job init --adapter {kind} .safetensors"] = Case(
        "fedseal-job",
        _job("--adapter", _as(kind, "adapter.safetensors")),
        2,
        _as(kind, "adapter.safetensors"),
    )
    CASES[f"job init --adapter {kind} adapter_config.json"] = Case(
        "fedseal-job",
        _job("--adapter", _as(kind, "adapter_config.json"), *_BASE),
        2,
        _s("adapter_config.json") if kind != "directory" else _as(kind, "adapter_config.json"),
    )
    CASES[f"job init --base-model {kind} config.json"] = Case(
        "fedseal-job",
        _job(*_ADAPTER, "--base-model", _arg(kind, lambda f, k: str(Path(_as(k, "config.json")(f)).parent))),
        2,
        _s("config.json"),
    )
    CASES[f"job init --site-key {kind}"] = Case(
        "fedseal-job",
        _job(*_ADAPTER, *_BASE, "--site-key", _arg(kind, lambda f, k: f"hospital-z={getattr(f, k)}")),
        2,
        _p(kind),
    )
CASES["job init out is a file"] = Case("fedseal-job", _job(*_ADAPTER, *_BASE, out=_p("text")), 2, _p("text"))
CASES["job init out under a file"] = Case(
    "fedseal-job", _job(*_ADAPTER, *_BASE, out=lambda f: str(f.text / "job")), 2, _p("text")
)
CASES["job init --operator a path"] = Case(
    "fedseal-job", _job(*_ADAPTER, *_BASE, "--operator", "../escaped"), 2, _s("--operator")
)
CASES["job init --sites a path"] = Case(
    "fedseal-job", _job(*_ADAPTER, *_BASE, "--sites", "ok,../../x"), 2, _s("../../x")
)
CASES["job init --site-key without ="] = Case(
    "fedseal-job", _job(*_ADAPTER, *_BASE, "--site-key", "nofile"), 2, _s("NAME=FILE")
)
CASES["job init --rounds not a number"] = Case(
    "fedseal-job", _job(*_ADAPTER, *_BASE, "--rounds", "two"), 2, _s("--rounds")
)
CASES["job init --rounds negative"] = Case(
    "fedseal-job", _job(*_ADAPTER, *_BASE, "--rounds", "-1"), 2, _s("--rounds")
)
CASES["job init --deadline-s negative"] = Case(
    "fedseal-job", _job(*_ADAPTER, *_BASE, "--rounds", "1", "--deadline-s", "-5"), 2, _s("deadline")
)
CASES["job init --dtype unknown"] = Case(
    "fedseal-job", _job(*_ADAPTER, *_BASE, "--dtype", "float64"), 2, _s("--dtype")
)
CASES["job init --adapter config without --base-model"] = Case(
    "fedseal-job", _job(*_ADAPTER), 2, _s("--base-model")
)
CASES["job no command"] = Case("fedseal-job", lambda f: [], 2, _s("required"))
CASES["job init no sites"] = Case(
    "fedseal-job",
    lambda f: ["init", str(f.root / "j"), "--operator", "o", "--adapter", str(f.text)],
    2,
    _s("--sites"),
)


@contextlib.contextmanager
def _watchdog(port_file: Path) -> Iterator[None]:
    """SIGTERM this process if a command starts serving (it writes its port file)."""
    done = threading.Event()
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def watch() -> None:
        while not done.wait(0.05):
            if port_file.exists():
                os.kill(os.getpid(), signal.SIGTERM)
                return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("name", sorted(CASES))
def test_user_mistake_is_one_named_line(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = CASES[name]
    files = Files(tmp_path)
    argv = case.argv(files)
    with _watchdog(files.port_file):
        try:
            code = MAINS[case.command](argv)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    captured = capsys.readouterr()
    output = captured.err + captured.out
    assert "Traceback" not in output
    assert not files.port_file.exists(), f"{case.command} started serving"
    # stderr may also carry the aggregator's structured log (JSON lines) and argparse's usage.
    errors = [
        line
        for line in output.splitlines()
        if any(mark in line for mark in ("error:", "DOES NOT HOLD", "FAILED", "NOT VERIFIED"))
        and not line.startswith("{")
    ]
    assert code == case.code, f"exit {code}, expected {case.code}: {output[-600:]}"
    assert errors, output[-600:]
    expected = case.says(files)
    assert any(expected in line for line in errors), f"no line names {expected!r}: {errors}"


@pytest.mark.parametrize("kind", ["pem", "witness"])
def test_a_private_key_given_as_a_trusted_checkpoint_is_not_shown(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The report would otherwise quote the file as the checkpoint's text, in --json too.
    files = Files(tmp_path)
    if kind == "pem":
        key = tmp_path / "site.key"
        key.write_bytes(
            Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
    else:
        key = files.witness_key
    secret_lines = [line for line in key.read_text().splitlines() if "PRIVATE KEY" not in line]
    secrets = [line.rsplit("+", 1)[-1] for line in secret_lines]  # the key's base64 part
    for extra in ([], ["--json"]):
        code = audit_cli.main(["verify", str(files.text), "--trusted-checkpoint", str(key), *extra])
        captured = capsys.readouterr()
        output = captured.out + captured.err
        assert code == 2 and "holds a private key" in output
        assert not any(secret[:16] in output for secret in secrets), output


def test_a_port_in_use_is_refused_not_shared(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # gRPC would set SO_REUSEPORT: a second server on the port would take half its connections.
    with serving_aggregator(tmp_path / "first") as first:
        busy = f"127.0.0.1:{first.port}"
        files = Files(tmp_path)
        ca = files.root / "ca.pem"
        ca.write_bytes(ConsortiumPki().ca_pem)
        for flag in ("--listen", "--listen-mtls", "--health-listen", "--metrics-listen"):
            extra = ["--client-ca", str(ca)] if flag == "--listen-mtls" else []
            with _watchdog(files.port_file):
                code = aggregator._cli.main(_agg(flag, busy, *extra)(files))
            output = "".join(capsys.readouterr())
            assert "Traceback" not in output and not files.port_file.exists(), flag
            assert code == 1 and f"cannot listen on {busy}" in output, (flag, output[-400:])
            if flag in ("--health-listen", "--metrics-listen"):
                assert flag in output
        # One aggregator cannot serve TLS and mutual TLS on one port either.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free = f"127.0.0.1:{probe.getsockname()[1]}"
        with _watchdog(files.port_file):
            code = aggregator._cli.main(
                _agg("--listen", free, "--listen-mtls", free, "--client-ca", str(ca))(files)
            )
        output = "".join(capsys.readouterr())
        assert code == 1 and f"cannot listen on {free}" in output, output[-400:]


def test_an_initial_adapter_that_does_not_fit_the_job_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It would be ignored (the global must fit the round's spec): no DP, norm bound or server
    # optimizer could start from it.
    files = Files(tmp_path)
    job = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "job.json"
    adapter = tmp_path / "other.safetensors"
    adapter.write_bytes(safetensors.torch.save({"not.in.the.spec": torch.zeros(2, 2)}))
    with _watchdog(files.port_file):
        code = aggregator._cli.main(_agg("--job", str(job), "--initial-adapter", str(adapter))(files))
    output = "".join(capsys.readouterr())
    assert code == 2 and not files.port_file.exists()
    assert "does not fit the job's adapter_spec: missing" in output
    assert "not in the spec 'not.in.the.spec'" in output
