"""`fedseal-attest measure`: the launch measurement a policy pins, and the production templates.

The SEV-SNP digests are known answers: the values virtee/sev-snp-measure's own test suite
asserts for its OVMF fixtures (tests/vectors/sev-snp-measure/, SOURCE.txt there), computed
here through FedSeal's library function and its command line. The templates are the
shipped production policies less the measurement: they must refuse to load until filled,
and filled they must load with the composite requirement (GPU and CPU TEE) intact.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from attestation import EvidenceKind, Policy, PolicyError
from attestation._cli import main
from attestation._measure import MeasurementError, SnpLaunch, SnpVmm, snp_launch_measurement
from attestation._templates import fill_policy_template, load_policy_template, policy_template_names

VECTORS = Path(__file__).parent / "vectors" / "sev-snp-measure"
AMDSEV = VECTORS / "ovmf_AmdSev_suffix.bin"
OVMFX64 = VECTORS / "ovmf_OvmfX64_suffix.bin"
CMDLINE = "console=ttyS0 loglevel=7"
MRTD = bytes(range(48))


def test_vectors_are_the_published_files() -> None:
    listed = 0
    for line in (VECTORS / "SOURCE.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        path, size, sha256, *_ = (field.strip() for field in line.split("|"))
        data = (VECTORS / path).read_bytes()
        assert len(data) == int(size) and hashlib.sha256(data).hexdigest() == sha256, path
        listed += 1
    assert listed == 2


# (ovmf, vcpus, kernel?, append, guest features, vmm, expected) from upstream's test_guest.py
KNOWN: dict[str, tuple[Path, int, bool, str | None, int, SnpVmm, str]] = {
    "direct boot": (
        AMDSEV,
        1,
        True,
        CMDLINE,
        0x21,
        SnpVmm.QEMU,
        "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977",
    ),
    "direct boot, SNP only": (
        AMDSEV,
        1,
        True,
        CMDLINE,
        0x1,
        SnpVmm.QEMU,
        "6d287813eb5222d770f75005c664e34c204f385ce832cc2ce7d0d6f354454362f390ef83a92046c042e706363b4b08fa",
    ),
    "no kernel": (
        AMDSEV,
        1,
        False,
        None,
        0x21,
        SnpVmm.QEMU,
        "e1e1ca029dd7973ab9513295be68198472dcd4fc834bd9af9b63f6e8a1674dbf281a9278a4a2ebe0eed9f22adbcd0e2b",
    ),
    "four vCPUs": (
        AMDSEV,
        4,
        True,
        "",
        0x21,
        SnpVmm.QEMU,
        "4953b1fb416fa874980e8442b3706d345926d5f38879134e00813c5d7abcbe78eafe7b422907be0b4698e2414a631942",
    ),
    "standard OVMF": (
        OVMFX64,
        1,
        False,
        None,
        0x1,
        SnpVmm.QEMU,
        "da0296de8193586a5512078dcd719eccecbd87e2b825ad4148c44f665dc87df21e5b49e21523a9ad993afdb6a30b4005",
    ),
    "ec2": (
        AMDSEV,
        1,
        True,
        "",
        0x21,
        SnpVmm.EC2,
        "0ce9ccc06bab55eebe8abc234f3df6514883977a68a591b71052498ab52b2f1aa415db338033946ef93aa8278c0d67fb",
    ),
    "gce": (
        AMDSEV,
        4,
        True,
        "",
        0x1,
        SnpVmm.GCE,
        "5c5debf100fc339f90276e761ee1f1658d08922c3b20e2a2e6c7a6c3370b2452a15a00eae11886a93d6fd1e7ab81e29d",
    ),
}


@pytest.mark.parametrize("case", sorted(KNOWN))
def test_snp_launch_digest_known_answers(case: str, tmp_path: Path) -> None:
    ovmf, vcpus, with_kernel, append, features, vmm, expected = KNOWN[case]
    empty = tmp_path / "empty"  # upstream measures /dev/null: an empty kernel and initrd
    empty.write_bytes(b"")
    launch = SnpLaunch(
        ovmf=ovmf,
        vcpus=vcpus,
        vcpu_type=None if vmm is SnpVmm.GCE else "EPYC-v4",
        kernel=empty if with_kernel else None,
        initrd=empty if with_kernel else None,
        append=append,
        guest_features=features,
        vmm=vmm,
    )
    assert snp_launch_measurement(launch).hex() == expected


def test_the_command_prints_and_pins_the_known_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    out = tmp_path / "policy.json"
    args = ["measure", "snp", "--ovmf", str(AMDSEV), "--vcpus", "1", "--vcpu-type", "EPYC-v4"]
    args += ["--kernel", str(empty), "--initrd", str(empty), "--append", CMDLINE, "--guest-features", "0x21"]
    assert main([*args, "--policy-out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = KNOWN["direct boot"][-1]
    assert report["measurement"] == expected and report["tee"] == "amd-sev-snp"
    policy = Policy.from_file(out)
    assert policy.name == "production-sev-snp-gpu"
    assert policy.amd_sev_snp is not None and policy.amd_sev_snp.measurements == (bytes.fromhex(expected),)
    assert policy.required_evidence == (EvidenceKind.NVIDIA_GPU, EvidenceKind.AMD_SEV_SNP)

    # An existing policy is not overwritten without --force; --add keeps what it pinned.
    assert main([*args, "--policy-out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    other = ["measure", "snp", "--ovmf", str(AMDSEV), "--vcpus", "4", "--vcpu-type", "EPYC-v4"]
    assert main([*other, "--template", str(out), "--add", "--policy-out", str(out), "--force"]) == 0
    capsys.readouterr()
    upgraded = Policy.from_file(out)
    assert upgraded.amd_sev_snp is not None
    assert [m.hex() for m in upgraded.amd_sev_snp.measurements] == [
        expected,
        "49a5df7673889babb3ee480795e1be1571b812264c2c7cc3ac6f92298a2f8683d8c691b26d8114dd6afbd324c2150ae1",
    ]


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (
            ["--ovmf", str(OVMFX64), "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--kernel", "KERNEL"],
            1,
            "SNP_KERNEL_HASHES",
        ),
        (["--ovmf", "KERNEL", "--vcpus", "1", "--vcpu-type", "EPYC-v4"], 1, "cannot measure"),
        (["--ovmf", "SHORT", "--vcpus", "1", "--vcpu-type", "EPYC-v4"], 1, "not an OVMF image"),
        (["--ovmf", "missing.fd", "--vcpus", "1", "--vcpu-type", "EPYC-v4"], 1, "not a readable file"),
        (["--ovmf", str(AMDSEV), "--vcpus", "0", "--vcpu-type", "EPYC-v4"], 2, "vCPU count"),
        (["--ovmf", str(AMDSEV), "--vcpus", "1", "--vcpu-type", "Pentium"], 2, "unknown vCPU type"),
        (["--ovmf", str(AMDSEV), "--vcpus", "1"], 2, "needs the vCPU type"),
        (
            ["--ovmf", str(AMDSEV), "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--append", "x"],
            2,
            "only with a kernel",
        ),
        (
            ["--ovmf", str(AMDSEV), "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--template", "x"],
            2,
            "--policy-out",
        ),
        (["--ovmf", str(AMDSEV), "--vcpus", "1", "--vcpu-sig", "zz"], 2, "not an integer"),
    ],
)
def test_bad_inputs_are_named(
    args: list[str], status: int, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"\x7fELF not really a kernel, 4 KiB of it".ljust(4096, b"\0"))
    short = tmp_path / "short.fd"  # not whole 4 KiB pages: sev-snp-measure asserts
    short.write_bytes(bytes(100))
    args = [str(kernel) if a == "KERNEL" else str(short) if a == "SHORT" else a for a in args]
    assert main(["measure", "snp", *args]) == status
    err = capsys.readouterr().err
    assert message in err.splitlines()[0] and "Traceback" not in err  # one line names it


def test_a_command_line_argv_could_not_decode_is_named_as_append(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A byte argv cannot decode arrives as a lone surrogate (os.fsdecode); the error was
    # sev-snp-measure's, blamed on the OVMF image.
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    args = ["measure", "snp", "--ovmf", str(AMDSEV), "--vcpus", "4", "--vcpu-type", "EPYC-v4"]
    assert main([*args, "--kernel", str(empty), "--append", os.fsdecode(b"a\xff")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "--append" in err and "UTF-8" in err and str(AMDSEV) not in err


def test_a_long_policy_name_is_named_and_echoed_cut_short(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "policy.json"
    args = ["measure", "snp", "--ovmf", str(AMDSEV), "--vcpus", "1", "--vcpu-type", "EPYC-v4"]
    assert main([*args, "--policy-out", str(out), "--name", "x" * 5000]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("fedseal-attest: error: --name 'xxx") and "..." in err and len(err) < 200
    assert not out.exists()


def test_missing_package_is_a_named_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_sevsnpmeasure(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("sevsnpmeasure"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sevsnpmeasure)
    with pytest.raises(MeasurementError, match=r"fedseal\[measure\]"):
        snp_launch_measurement(SnpLaunch(ovmf=AMDSEV, vcpus=1, vcpu_sig=0x800F12))


def test_tdx_values_are_checked_and_pinned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tdx.json"
    rtmr1 = bytes(range(1, 49))
    args = ["measure", "tdx", "--mrtd", MRTD.hex(), "--rtmr1", rtmr1.hex()]
    assert main([*args, "--policy-out", str(out)]) == 0
    assert f"TDX MRTD: {MRTD.hex()}" in capsys.readouterr().out
    policy = Policy.from_file(out)
    assert policy.intel_tdx is not None
    assert policy.intel_tdx.mrtd == (MRTD,) and dict(policy.intel_tdx.rtmrs) == {1: (rtmr1,)}
    assert policy.required_evidence == (EvidenceKind.NVIDIA_GPU, EvidenceKind.INTEL_TDX)
    assert main(["measure", "tdx", "--mrtd", "ab" * 47]) == 2
    assert "--mrtd must be 96 hex digits" in capsys.readouterr().err
    assert main(["measure", "tdx", "--mrtd", MRTD.hex(), "--rtmr3", "zz"]) == 2
    assert "--rtmr3" in capsys.readouterr().err
    # A TDX value for the SEV-SNP template would be lost: refused.
    assert main(["measure", "tdx", "--mrtd", MRTD.hex(), "--template", "production-sev-snp-gpu",
                 "--policy-out", str(tmp_path / "x.json")]) == 2  # fmt: skip
    assert "no 'intel_tdx' section" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("name", ["production-sev-snp-gpu", "production-tdx-gpu"])
def test_templates_refuse_to_load_until_filled(name: str) -> None:
    assert name in policy_template_names()
    document, source = load_policy_template(name)
    with pytest.raises(PolicyError, match="non-empty"):
        Policy.from_json(json.dumps(document), source=source)
    with pytest.raises(PolicyError, match="still empty"):
        fill_policy_template(document, source=source)
    filled = fill_policy_template(
        document,
        source=source,
        snp_measurements=(MRTD,) if "snp" in name else (),
        tdx_mrtd=(MRTD,) if "tdx" in name else (),
        name="my-consortium",
    )
    policy = filled.policy
    assert policy.name == "my-consortium" and not policy.allow_insecure_simulated_evidence
    assert EvidenceKind.NVIDIA_GPU in policy.required_evidence and len(policy.required_evidence) == 2
    # The production settings: vendor roots, RIMs and OCSP required, debug refused, OCSP fresh.
    assert policy.nvidia_gpu.device_root is None and policy.nvidia_gpu.require_rim_match
    assert policy.collateral.max_ocsp_age is not None
    cpu = policy.amd_sev_snp or policy.intel_tdx
    assert cpu is not None and not cpu.allow_debug
    assert policy.amd_sev_snp is None or policy.amd_sev_snp.roots is None
    assert Policy.from_json(filled.text, source="written") == policy


def test_template_names_and_values_are_checked(tmp_path: Path) -> None:
    document, source = load_policy_template("production-sev-snp-gpu")
    with pytest.raises(PolicyError, match="48 bytes"):
        fill_policy_template(document, source=source, snp_measurements=(b"short",))
    with pytest.raises(PolicyError, match="policy name"):
        fill_policy_template(document, source=source, snp_measurements=(MRTD,), name="Bad Name")
    with pytest.raises(PolicyError, match="neither a shipped template"):
        load_policy_template("no-such-template")
    broken = tmp_path / "broken.json"
    broken.write_text('{"schema": "fedseal-policy/v1", "schema": "x"}')
    with pytest.raises(PolicyError, match=r"broken\.json"):
        load_policy_template(str(broken))
