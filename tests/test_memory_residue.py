"""Nothing of an update is left in the aggregator's memory once its round has closed (issue 14).

Each case runs a real `fedseal-aggregator` process (its own address space), has three sites
submit updates of known random content, waits for the round's aggregate, and then reads the
whole of the aggregator's memory: every readable mapping of /proc/PID/maps, through
/proc/PID/mem (the test runs as root, or as the same user under a permissive ptrace scope).
It searches for sampled 32-byte windows of every update, as sent (its wire dtype) and as
float32 (what the enclave converts to). It must find none of them, and it must find every
sampled window of the released aggregate, which the enclave keeps as the next global
adapter: the positive control that shows the scan sees the enclave's tensors at all.

Adapters are small (a few KiB per update), so every buffer and temporary the enclave makes
is a small heap allocation that glibc keeps, unreturned and unzeroed, when it is freed: a
plaintext copy that was freed without being overwritten stays visible to this scan.

The search: every 8-byte aligned word of memory is hashed into a bitmap of the first 8
bytes of each window at each of its 8 phases (so a copy at any byte alignment is found),
and candidates are compared in full. Cases: FedAvg float32, FedAvg bfloat16, a DP round, a
spooled robust strategy (median) and lora-exact.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import ADAPTER_SHAPES, adapter_spec, round_config, site_client
from identities import principals_json, write_enrolment

from attestation import Policy
from fedseal.roundconfig import DpParams
from fedseal.spec import WireDtype

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 32
WINDOWS_PER_TENSOR = 4
SITES = ("site-0", "site-1", "site-2")
_HASH_BITS = 22
_MULT = np.uint64(0x9E3779B97F4A7C15)
_READ = 64 << 20

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not sys.platform.startswith("linux") or not os.access("/proc/self/mem", os.R_OK),
        reason="needs Linux /proc/PID/mem",
    ),
]


def _updates(seed: int, dtype: torch.dtype) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        {name: torch.randn(shape, generator=gen).to(dtype) for name, shape in ADAPTER_SHAPES.items()}
        for _ in SITES
    ]


def _windows(tensors: dict[str, torch.Tensor], rng: np.random.Generator) -> list[bytes]:
    """WINDOWS_PER_TENSOR random 32-byte windows of each tensor's bytes, element-aligned."""
    out = []
    for tensor in tensors.values():
        data = tensor.contiguous().view(torch.uint8).numpy().tobytes()
        size = tensor.element_size()
        for _ in range(WINDOWS_PER_TENSOR):
            for _attempt in range(100):
                start = int(rng.integers(0, (len(data) - WINDOW) // size + 1)) * size
                window = data[start : start + WINDOW]
                if bytes(8) not in window:  # zero runs are everywhere in memory: not a fingerprint
                    out.append(window)
                    break
            else:
                raise AssertionError("no window without a run of 8 zero bytes: the tensor is mostly zero")
    return out


def _hash(words: np.ndarray) -> np.ndarray:
    return (words * _MULT) >> np.uint64(64 - _HASH_BITS)


def _regions(pid: int) -> Iterator[tuple[int, int, str]]:
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if fields[1].startswith("r"):
                yield start, end, fields[5] if len(fields) > 5 else ""


def scan_memory(pid: int, needles: list[bytes]) -> tuple[list[int], int]:
    """Hits per needle over every readable mapping of `pid`; and the bytes read."""
    keys: dict[int, list[tuple[int, int]]] = {}
    for n, needle in enumerate(needles):
        for phase in range(8):
            keys.setdefault(int.from_bytes(needle[phase : phase + 8], "little"), []).append((n, phase))
    table = np.zeros(1 << _HASH_BITS, dtype=bool)
    table[_hash(np.array(list(keys), dtype=np.uint64))] = True
    hits = [0] * len(needles)
    total = 0
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for start, end, _name in _regions(pid):
            for offset in range(start, end, _READ):
                size = min(_READ, end - offset)
                try:  # a window may straddle two reads: read WINDOW bytes past the end
                    data = os.pread(fd, min(size + WINDOW, end - offset), offset)
                except OSError:
                    break  # [vvar] and the like cannot be read
                total += size
                words = np.frombuffer(data, dtype=np.uint64, count=size // 8)
                for j in np.flatnonzero(table[_hash(words)]).tolist():
                    for n, phase in keys.get(int(words[j]), ()):
                        pos = j * 8 - phase
                        if pos >= 0 and data[pos : pos + WINDOW] == needles[n]:
                            hits[n] += 1
    finally:
        os.close(fd)
    return hits, total


# case -> (wire dtype, strategy, whether the round has central DP)
CASES: dict[str, tuple[torch.dtype, str, bool]] = {
    "fedavg-float32": (torch.float32, "fedavg", False),
    "fedavg-bfloat16": (torch.bfloat16, "fedavg", False),
    "dp": (torch.float32, "fedavg", True),
    "median-spooled": (torch.float32, "fedmedian", False),
    "lora-exact": (torch.float32, "lora-exact", False),
}


def _start(
    directory: Path, template: dict[str, object], initial: Path
) -> tuple[subprocess.Popen[bytes], str]:
    job = directory / "job.json"
    job.write_text(
        json.dumps(
            {
                "format": "fedseal-job/v1",
                "rounds": 1,
                "round_template": template,
                "principals": principals_json(),
            }
        )
    )
    enrolment = write_enrolment(directory / "enrolment.json", SITES)
    port_file = directory / "port"
    stderr = directory / "aggregator.stderr"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aggregator",
            "--insecure-simulated-tee",
            "--log",
            str(directory / "audit.log"),
            "--log-origin",
            "fedseal.test/memory",
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
            "--log-level",
            "warning",
            "--job",
            str(job),
            "--enrolment",
            str(enrolment),
            "--spool-dir",
            str(directory),
            "--initial-adapter",
            str(initial),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=stderr.open("ab"),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return proc, f"127.0.0.1:{port_file.read_text().strip()}"
        if proc.poll() is not None:
            raise AssertionError(
                f"the aggregator exited with {proc.returncode}: {stderr.read_text()[-3000:]}"
            )
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the aggregator did not start within 60 s")


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_update_is_left_in_the_aggregators_memory(case: str, tmp_path: Path, dev_policy: Policy) -> None:
    dtype, strategy, with_dp = CASES[case]
    seed = sorted(CASES).index(case)
    initial_tensors = {
        name: torch.randn(shape, generator=torch.Generator().manual_seed(1000 + seed))
        for name, shape in ADAPTER_SHAPES.items()
    }
    initial = tmp_path / "initial.safetensors"
    initial.write_bytes(safetensors.torch.save(initial_tensors))
    wire = WireDtype.BFLOAT16 if dtype == torch.bfloat16 else WireDtype.FLOAT32
    fields: dict[str, object] = {
        "adapter_spec": adapter_spec(wire),
        "min_clients": 3,
        "max_clients": 3,
        "strategy": strategy,
    }
    if with_dp:
        fields["dp"] = DpParams(
            epsilon=8.0,
            delta=1e-5,
            clip_norm=1.0,
            rounds=1,
            initial_adapter_digest=hashlib.sha256(initial.read_bytes()).digest(),
        )
    template = round_config(1, **fields).to_json_obj()
    del template["round_id"]

    updates = _updates(100 + seed, dtype)
    proc, endpoint = _start(tmp_path, template, initial)
    try:
        for site, update in zip(SITES, updates, strict=True):
            with site_client(endpoint, dev_policy, site, timeout=30) as client:
                client.submit_update(update, round_id=1, num_examples=10)
        with site_client(endpoint, dev_policy, "site-0", timeout=30) as client:
            aggregate = client.fetch_aggregate(1, wait_seconds=30).tensors()
        rng = np.random.default_rng(seed)
        update_windows = [
            (site, form, window)
            for site, update in zip(SITES, updates, strict=True)
            for form, tensors in (("wire", update), ("float32", {k: v.float() for k, v in update.items()}))
            for window in _windows(tensors, rng)
        ]
        control = _windows({k: v.float() for k, v in aggregate.items()}, rng)
        started = time.monotonic()
        hits, scanned = scan_memory(proc.pid, [w for _, _, w in update_windows] + control)
        elapsed = time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    found = hits[: len(update_windows)]
    print(
        f"{case}: scanned {scanned / 2**20:.0f} MiB in {elapsed:.1f} s; {len(update_windows)} update "
        f"windows, {sum(1 for h in found if h)} found; aggregate windows found "
        f"{sum(1 for h in hits[len(update_windows) :] if h)}/{len(control)}"
    )
    assert all(hits[len(update_windows) :]), "the positive control failed: the aggregate was not found"
    residue = sorted({(site, form) for (site, form, _), h in zip(update_windows, found, strict=True) if h})
    assert not residue, f"plaintext of updates left in the aggregator's memory: {residue}"


def test_the_scan_finds_a_planted_copy_at_any_alignment_and_nothing_else() -> None:
    """The scanner itself: a process holding 32 random bytes at an odd address is found to
    hold them, and not to hold 32 other random bytes."""
    planted, absent = os.urandom(WINDOW), os.urandom(WINDOW)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; held = bytearray(b'xyz') + bytearray(sys.stdin.buffer.read(32)); "
            "print('ready', flush=True); time.sleep(60)",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(planted)
        child.stdin.close()
        assert child.stdout.readline().strip() == b"ready"
        hits, scanned = scan_memory(child.pid, [planted, absent])
    finally:
        child.kill()
        child.wait(timeout=30)
    assert scanned > 0 and hits[0] >= 1 and hits[1] == 0
