"""``fedseal-attest measure``: the launch measurement to pin, written into a policy.

::

    fedseal-attest measure snp --ovmf OVMF.fd --kernel vmlinuz --initrd initrd.img \\
        --append "console=ttyS0" --vcpus 8 --vcpu-type EPYC-v4 --policy-out policy.json
    fedseal-attest measure tdx --mrtd HEX [--rtmr1 HEX ...] --policy-out policy.json

``snp`` computes the SEV-SNP launch digest (``_measure.py``); ``tdx`` takes MRTD/RTMR
values computed by a TDX measurement tool (no maintained Python one exists; see
``_measure.py``) and checks them. With ``--policy-out`` the values are filled into a
template (default: the shipped production template of that TEE, see ``_templates.py``)
and the result is written only if it loads as a policy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fedseal._atomicfile import create_durably, replace_durably

from ._errors import PolicyError
from ._measure import DEFAULT_GUEST_FEATURES, MeasurementError, SnpLaunch, SnpVmm, snp_launch_measurement
from ._templates import _NAME, fill_policy_template, load_policy_template, policy_template_names
from .cpu._common import shorten
from .cpu._policy import SNP_MEASUREMENT_SIZE, TDX_MEASUREMENT_SIZE

__all__ = ["add_measure_parser", "measure_command"]

_EXIT_OK, _EXIT_FAILED, _EXIT_USAGE = 0, 1, 2
_DEFAULT_TEMPLATE = {"snp": "production-sev-snp-gpu", "tdx": "production-tdx-gpu"}

_EPILOG = """\
exit status:
  0  measured (and, with --policy-out, the policy written)
  1  cannot measure: an input file is missing or is not what it should be (e.g. an OVMF
     without SEV-SNP metadata, or a kernel for an OVMF that cannot measure one)
  2  usage error: bad arguments, a template or policy that does not load, --policy-out exists

examples:
  fedseal-attest measure snp --ovmf OVMF.fd --vcpus 4 --vcpu-type EPYC-v4
  fedseal-attest measure snp --ovmf OVMF.fd --kernel vmlinuz --initrd initrd.img \\
      --append "console=ttyS0" --vcpus 8 --vcpu-type EPYC-Milan --policy-out policy.json
  fedseal-attest measure tdx --mrtd HEX --rtmr1 HEX --policy-out policy.json
  fedseal-attest measure snp ... --template policy.json --add --policy-out policy.json --force
"""


def add_measure_parser(commands: Any) -> None:
    """Add ``measure snp`` and ``measure tdx`` to ``fedseal-attest``'s subcommands."""
    measure = commands.add_parser(
        "measure",
        help="compute the launch measurement to pin and write it into a policy",
        description="Compute the CPU TEE launch measurement of the aggregator's VM image, the value "
        "clients pin, and (with --policy-out) write a policy that pins it.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tees = measure.add_subparsers(dest="tee", metavar="TEE", required=True)
    snp = tees.add_parser(
        "snp",
        help="AMD SEV-SNP: compute the launch digest with sev-snp-measure",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    snp.add_argument("--ovmf", type=Path, required=True, metavar="FILE", help="the OVMF firmware image")
    snp.add_argument("--vcpus", type=int, required=True, metavar="N", help="the number of vCPUs")
    cpu = snp.add_mutually_exclusive_group()
    cpu.add_argument("--vcpu-type", metavar="MODEL", help="the QEMU CPU model, e.g. EPYC-v4, EPYC-Milan")
    cpu.add_argument("--vcpu-sig", type=_integer, metavar="VALUE", help="the CPUID signature instead")
    snp.add_argument("--kernel", type=Path, metavar="FILE", help="measured direct boot: the kernel")
    snp.add_argument("--initrd", type=Path, metavar="FILE", help="measured direct boot: the initrd")
    snp.add_argument("--append", metavar="CMDLINE", help="measured direct boot: the kernel command line")
    snp.add_argument(
        "--guest-features",
        type=_integer,
        default=DEFAULT_GUEST_FEATURES,
        metavar="VALUE",
        help="SEV_FEATURES of the guest (default: %(default)#x, SNP active only)",
    )
    snp.add_argument(
        "--vmm",
        choices=[v.value for v in SnpVmm],
        default=SnpVmm.QEMU.value,
        help="who launches the VM: qemu (default), or a cloud's VMM (ec2, gce)",
    )
    tdx = tees.add_parser(
        "tdx",
        help="Intel TDX: pin MRTD/RTMR values computed by a TDX measurement tool",
        description="Check Intel TDX MRTD and RTMR values and write them into a policy. FedSeal "
        "does not compute them: they depend on the TD firmware's layout and on the VMM's tables, "
        "and no maintained Python tool computes them; use a TDX measurement tool (dstack-mr, or its "
        "fork tdx-measure) or read them from a TD booted from the reviewed image.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tdx.add_argument("--mrtd", required=True, metavar="HEX", help="the TD's MRTD (48 bytes, hex)")
    for index in range(4):
        tdx.add_argument(f"--rtmr{index}", metavar="HEX", help=f"pin RTMR{index} too (48 bytes, hex)")
    for sub in (snp, tdx):
        out = sub.add_argument_group("the policy")
        out.add_argument(
            "--policy-out", type=Path, metavar="FILE", help="write a policy pinning the value to FILE"
        )
        out.add_argument(
            "--template",
            metavar="NAME|FILE",
            help=f"what to fill in: a shipped template ({', '.join(policy_template_names())}; "
            "default: the production one of this TEE) or a policy file",
        )
        out.add_argument("--name", help="the written policy's name (default: the template's)")
        out.add_argument(
            "--add",
            action="store_true",
            help="add the value to the template's allow-list instead of replacing it (image upgrades)",
        )
        out.add_argument("--force", action="store_true", help="overwrite --policy-out if it exists")
        out.add_argument("--json", action="store_true", help="print a JSON report")


def measure_command(args: argparse.Namespace) -> int:
    """Run ``fedseal-attest measure``; print errors and return the exit status."""
    if args.policy_out is None and (args.template or args.name or args.add or args.force):
        return _usage("--template, --name, --add and --force go with --policy-out")
    # Checked here, before measuring, to name the flag and echo a long value cut short.
    if args.name is not None and not _NAME.fullmatch(args.name):
        return _usage(f"--name {shorten(repr(args.name), 64)}: use 1-64 lowercase letters, digits and '-'")
    rtmrs: dict[int, bytes] = {}
    if args.tee == "snp":
        try:
            launch = SnpLaunch(
                ovmf=args.ovmf,
                vcpus=args.vcpus,
                vcpu_type=args.vcpu_type,
                vcpu_sig=args.vcpu_sig,
                kernel=args.kernel,
                initrd=args.initrd,
                append=args.append,
                guest_features=args.guest_features,
                vmm=SnpVmm(args.vmm),
            )
        except MeasurementError as exc:
            return _usage(str(exc))
        try:
            value = snp_launch_measurement(launch)
        except MeasurementError as exc:
            print(f"fedseal-attest: cannot measure: {exc}", file=sys.stderr)
            return _EXIT_FAILED
        size = SNP_MEASUREMENT_SIZE
    else:
        size = TDX_MEASUREMENT_SIZE
        texts = {"--mrtd": args.mrtd} | {
            f"--rtmr{i}": getattr(args, f"rtmr{i}") for i in range(4) if getattr(args, f"rtmr{i}") is not None
        }
        values = {option: _hex(text, size) for option, text in texts.items()}
        for option, decoded in values.items():
            if decoded is None:
                return _usage(f"{option} must be {2 * size} hex digits ({size} bytes)")
        value = _present(values["--mrtd"])
        rtmrs = {int(o.removeprefix("--rtmr")): _present(v) for o, v in values.items() if o != "--mrtd"}
    report: dict[str, object] = {
        "tee": "amd-sev-snp" if args.tee == "snp" else "intel-tdx",
        "measurement": value.hex(),
        "rtmrs": {f"rtmr{i}": v.hex() for i, v in sorted(rtmrs.items())},
        "policy_out": None,
        "policy_name": None,
    }
    if args.policy_out is not None:
        try:
            document, source = load_policy_template(args.template or _DEFAULT_TEMPLATE[args.tee])
            filled = fill_policy_template(
                document,
                source=source,
                snp_measurements=(value,) if args.tee == "snp" else (),
                tdx_mrtd=(value,) if args.tee == "tdx" else (),
                tdx_rtmrs={i: (v,) for i, v in rtmrs.items()},
                name=args.name,
                add=args.add,
            )
        except PolicyError as exc:
            return _usage(str(exc))
        data = filled.text.encode()
        try:
            if args.force:
                replace_durably(args.policy_out, data, mode=0o644)
            else:
                create_durably(args.policy_out, data, mode=0o644)
        except FileExistsError:
            return _usage(f"{args.policy_out} exists (pass --force to overwrite it)")
        except OSError as exc:
            return _usage(f"cannot write {args.policy_out}: {exc.strerror or exc}")
        report["policy_out"], report["policy_name"] = str(args.policy_out), filled.policy.name
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        what = "SEV-SNP launch measurement" if args.tee == "snp" else "TDX MRTD"
        print(f"{what}: {value.hex()}")
        for index, rtmr in sorted(rtmrs.items()):
            print(f"RTMR{index}: {rtmr.hex()}")
        if report["policy_out"] is not None:
            print(f"wrote policy {report['policy_name']!r} pinning it to {report['policy_out']}")
    return _EXIT_OK


def _integer(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer (decimal or 0x hex)") from None


def _hex(text: str, size: int) -> bytes | None:
    try:
        value = bytes.fromhex(text.strip())
    except ValueError:
        return None
    return value if len(value) == size else None


def _present(value: bytes | None) -> bytes:
    if value is None:  # checked by the caller; here for the type checker
        raise ValueError("missing value")
    return value


def _usage(message: str) -> int:
    print(f"fedseal-attest: error: {message}", file=sys.stderr)
    return _EXIT_USAGE
