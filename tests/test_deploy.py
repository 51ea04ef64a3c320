"""deploy/ stays what deploy/README.md says: every image input pinned, manifests and unit
complete and consistent with the aggregator's command line.

No container engine, cluster or systemd runs here, so these check the files themselves:
the base image digest, that the lock pins and hashes every package and covers pyproject's
runtime dependencies, that the Kubernetes manifests parse and carry limits, probes and the
audit-log volume, and that the systemd unit keeps its hardening. The guide's numbers and
names (defaults, timeouts, site ids, the commands it shows) are read from its text and
checked against the code they describe.
"""

from __future__ import annotations

import ast
import copy
import datetime
import inspect
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from identities import enrolment_json
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from aggregator import JobConfig
from aggregator._admission import DEFAULT_RECEIVE_TIMEOUT_SECONDS, AdmissionInterceptor
from aggregator._cli import _parser as aggregator_cli_parser
from aggregator._metrics import ListenAddress, parse_listen_address
from attestation import CollateralRefresher, EvidenceKind, Policy, PolicyError
from attestation._cli import main as fedseal_attest
from attestation._templates import fill_policy_template, load_policy_template
from attestation.cpu import DEFAULT_COCO_AGENT_URL
from attestation.cpu._tdx_staple import _validity as tdx_collateral_validity
from fedseal.enrolment import Enrolment, EnrolmentError

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
LOCK = DEPLOY / "container" / "requirements.lock"
NODEPS_LOCK = DEPLOY / "container" / "requirements-nodeps.lock"
K8S = DEPLOY / "kubernetes"
KATA = DEPLOY / "kubernetes-kata"
UNIT = DEPLOY / "systemd" / "fedseal-aggregator.service"
GUIDE = DEPLOY / "README.md"

_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")


def _guide() -> str:
    """deploy/README.md with its line breaks and runs of spaces folded into one space."""
    return " ".join(GUIDE.read_text().split())


def _guide_says(pattern: str) -> str:
    """The one group of the one match of `pattern` in the folded guide."""
    matches = re.findall(pattern, _guide())
    assert len(matches) == 1, f"deploy/README.md: {pattern!r} matched {len(matches)} times"
    return str(matches[0])


# --- the image ----------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_containerfile_pins_its_base_image_by_digest() -> None:
    steps = _instructions(CONTAINERFILE)
    froms = [args for word, args in steps if word == "FROM"]
    assert froms, "no FROM"
    for args in froms:
        image = args.split()[0]
        assert "@" in image, f"FROM {image} is not pinned by digest"
        assert _SHA256.match(image.split("@", 1)[1]), image
    # A `# syntax=` frontend line would be another image pulled by tag.
    assert not re.search(r"^#\s*syntax=", CONTAINERFILE.read_text(), re.MULTILINE)


def test_containerfile_installs_only_hash_checked_locked_packages() -> None:
    steps = _instructions(CONTAINERFILE)
    runs = [args for word, args in steps if word == "RUN"]
    installs = [r for r in runs if "pip install" in r or "pip3 install" in r]
    assert len(installs) == 1
    (install,) = installs
    for flag in ("--require-hashes", "--no-deps", "--only-binary=:all:", "--no-compile"):
        assert flag in install, flag
    assert "requirements.lock" in install and "requirements-nodeps.lock" in install
    assert not any(re.search(r"\b(apt-get|apt|apk|dnf|yum|curl|wget)\b", r) for r in runs)
    copied = [args.split()[-2] for word, args in steps if word == "COPY" and "/opt/fedseal/" in args]
    # Only the code that runs in the enclave.
    assert sorted(copied) == ["aggregator", "attestation", "fedseal", "policies"]


def test_containerfile_command_is_a_valid_aggregator_command_line() -> None:
    steps = dict(_instructions(CONTAINERFILE))
    assert json.loads(steps["ENTRYPOINT"]) == ["python", "-m", "aggregator"]
    args = aggregator_cli_parser().parse_args(json.loads(steps["CMD"]))
    # Hardware mode refuses to start without a CPU TEE collector (deploy/README.md, --cpu-tee).
    assert not args.insecure_simulated_tee and args.cpu_tee != "none"


def _lock_entries(path: Path) -> dict[str, tuple[Version, list[str]]]:
    entries: dict[str, tuple[Version, list[str]]] = {}
    current: str | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith(("-e", "--index-url", "--extra-index-url", "--find-links", "-f ")), line
        assert "file:" not in line and not line.startswith(("/", ".")), f"local path in the lock: {line}"
        if line.startswith("--hash="):
            assert current is not None, "hash before any requirement"
            entries[current][1].append(line.removeprefix("--hash=").rstrip(" \\"))
            continue
        requirement = Requirement(line.rstrip(" \\"))
        (pin,) = requirement.specifier
        assert pin.operator == "==", f"{line} is not an exact pin"
        current = canonicalize_name(requirement.name)
        assert current not in entries, f"{current} pinned twice"
        entries[current] = (Version(pin.version), [])
    return entries


def test_every_locked_package_is_pinned_with_sha256_hashes() -> None:
    for path in (LOCK, NODEPS_LOCK):
        entries = _lock_entries(path)
        assert entries, path
        for name, (_, hashes) in entries.items():
            assert hashes, f"{name} in {path.name} has no --hash"
            assert all(_SHA256.match(h) for h in hashes), name
    assert not set(_lock_entries(LOCK)) & set(_lock_entries(NODEPS_LOCK))


def _make_variable(name: str) -> list[str]:
    match = re.search(rf"^{name}\s*:=\s*(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, f"Makefile has no {name}"
    return match.group(1).split()


def test_lock_covers_the_runtime_dependencies_in_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = list(project["dependencies"])
    for extra in _make_variable("LOCK_EXTRAS"):
        required += project["optional-dependencies"][extra]
    locked = _lock_entries(LOCK)
    stale = []
    for spec in required:
        requirement = Requirement(spec)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name not in locked or not requirement.specifier.contains(locked[name][0], prereleases=True):
            stale.append(f"{spec} (lock: {locked[name][0] if name in locked else 'missing'})")
    assert not stale, "deploy/container/requirements.lock is stale, run `make lock`: " + "; ".join(stale)


def test_nodeps_lock_holds_exactly_the_makefile_pins() -> None:
    wanted = {canonicalize_name(Requirement(s).name): s for s in _make_variable("LOCK_NODEPS")}
    locked = _lock_entries(NODEPS_LOCK)
    assert set(locked) == set(wanted)
    for name, spec in wanted.items():
        assert Requirement(spec).specifier.contains(locked[name][0]), spec


def test_the_set_up_installs_the_cpu_build_of_torch() -> None:
    # README: the set-up step installs the CPU build (PyPI's Linux x86_64 torch is the CUDA
    # build, multi-GB of nvidia-* packages). The recipe asks PyTorch's CPU index first ...
    makefile = (ROOT / "Makefile").read_text()
    index = re.search(r"^TORCH_INDEX\s*\?=\s*(\S+)$", makefile, re.MULTILINE)
    assert index and index.group(1) == "https://download.pytorch.org/whl/cpu"
    (line,) = [line for line in makefile.splitlines() if re.search(r"pip install .*\btorch==", line)]
    # README: `make TORCH_INDEX=` (empty) leaves the index out.
    assert "torch==2.13.0" in line and "$(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))" in line
    # ... and the environment this suite runs in, which `make` set up, has a torch with no CUDA.
    import torch

    assert torch.__version__.startswith("2.13.0") and torch.version.cuda is None, torch.__version__


def test_the_image_lock_holds_the_cuda_build_of_torch() -> None:
    # deploy/README.md, Container image: "requirements.lock (... CUDA torch included)".
    locked = _lock_entries(LOCK)
    assert "torch" in locked
    assert {"nvidia-cuda-runtime", "nvidia-cublas"} <= set(locked)


def _make_recipe(target: str) -> list[str]:
    """The recipe of `target` in the Makefile, one line per command, its LOCK_ variables
    expanded and `$(IMAGE)` written as the guide writes it, `$IMAGE`."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(n for n, line in enumerate(lines) if re.match(rf"^{target}:", line))
    commands: list[str] = []
    pending = ""
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        commands.append(pending + line.strip())
        pending = ""
    expanded = []
    for command in commands:
        command = re.sub(
            r"\$\(addprefix (\S+) ,\$\((\w+)\)\)",
            lambda m: " ".join(f"{m.group(1)} {value}" for value in _make_variable(m.group(2))),
            command,
        )
        command = re.sub(r"\$\((LOCK_\w+)\)", lambda m: " ".join(_make_variable(m.group(1))), command)
        expanded.append(command.replace("$(IMAGE)", "$IMAGE").replace("$$", "$"))
    return expanded


def _guide_block(first_line: str) -> list[str]:
    """The commands a ```sh block of the guide shows after `first_line` in its `# = ...`
    comment, continuation lines joined (prose lines come back too; callers pick)."""
    text = GUIDE.read_text()
    match = re.search(rf"```sh\n{re.escape(first_line)}.*?\n(.*?)```", text, re.DOTALL)
    assert match, f"deploy/README.md shows no `{first_line}` block"
    commands: list[str] = []
    pending = ""
    for raw in match.group(1).splitlines():
        line = raw.lstrip("#").strip().removeprefix("= ")
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        commands.append(pending + line)
        pending = ""
    return commands


def _after(commands: list[str], program: str, *, drop: tuple[str, ...] = ()) -> list[str]:
    """The arguments of the one command whose program (a path's last part) is `program`."""
    found = []
    for command in commands:
        words = shlex.split(command)
        for n, word in enumerate(words):
            if word.rsplit("/", 1)[-1] == program:
                found.append([w for w in words[n + 1 :] if w not in drop])
                break
    assert len(found) == 1, (program, commands)
    return found[0]


def test_make_lock_is_the_command_the_guide_shows() -> None:
    # deploy/README.md, Container image: `make lock` = pip-tools 7.6.2, then pip-compile and
    # nodeps_lock.py exactly as shown, with the pip config ignored (no local wheel leaks in).
    recipe, shown = _make_recipe("lock"), _guide_block("make lock")
    assert "pip-tools==7.6.2" in _after(recipe, "pip", drop=("install", "--quiet"))
    assert "# = pip install pip-tools==7.6.2," in GUIDE.read_text()
    assert _after(recipe, "pip-compile", drop=("--quiet",)) == _after(shown, "pip-compile")
    assert _after(recipe, "python") == _after(shown, "python")
    assert "with your pip config ignored (PIP_CONFIG_FILE=/dev/null, no PIP_FIND_LINKS)" in " ".join(shown)
    for command in recipe[1:]:  # both the resolver and the no-deps pins
        words = shlex.split(command)
        assert words[:4] == ["env", "-u", "PIP_FIND_LINKS", "PIP_CONFIG_FILE=/dev/null"], command


def test_make_image_is_the_reproducible_build_the_guide_shows() -> None:
    # deploy/README.md, Build and "What is reproducible": file times rewritten to the commit
    # time, no provenance/SBOM attestations, the dockerignore keeps caches and environments out.
    (build,) = _make_recipe("image")
    shown = [c for c in _guide_block("make image IMAGE=registry.example/fedseal-aggregator:1") if c]
    assert len(shown) == 1
    assert shlex.split(build) == shlex.split(shown[0])
    words = shlex.split(build)
    assert words[:3] == ["docker", "buildx", "build"] and words[-1] == "."
    assert words[words.index("--file") + 1] == str(CONTAINERFILE.relative_to(ROOT))
    assert "--provenance=false" in words and "--sbom=false" in words
    assert "SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)" in " ".join(words)
    output = dict(item.split("=", 1) for item in words[words.index("--output") + 1].split(","))
    assert output["type"] == "docker" and output["rewrite-timestamp"] == "true"
    steps = _instructions(CONTAINERFILE)
    assert ("ARG", "SOURCE_DATE_EPOCH=0") in steps
    env = " ".join(args for word, args in steps if word == "ENV").split()
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # no .pyc (pip's --no-compile: checked above)
    # BuildKit reads <Dockerfile>.dockerignore next to the file that --file names.
    ignore = CONTAINERFILE.with_name(CONTAINERFILE.name + ".dockerignore")
    patterns = {line.strip() for line in ignore.read_text().splitlines() if not line.startswith("#")}
    assert {
        ".venv",
        "**/__pycache__",
        "**/*.pyc",
        "**/.mypy_cache",
        "**/.ruff_cache",
        "**/.pytest_cache",
    } <= (patterns)


# --- Kubernetes -----------------------------------------------------------------------------


def _k8s_documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / resource).read_text()) if d]
    return docs


def _one(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _k8s_documents() if d["kind"] == kind]
    return doc


def test_every_manifest_parses_and_is_listed_in_the_kustomization() -> None:
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert on_disk == listed
    for doc in _k8s_documents():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
    kinds = sorted(d["kind"] for d in _k8s_documents())
    assert kinds == ["Namespace", "NetworkPolicy", "Service", "StatefulSet"]
    # The job the ConfigMap generator packs is a valid job config.
    JobConfig.from_file(K8S / "job.json")


def test_statefulset_runs_one_confidential_pod_with_limits_probes_and_a_log_volume() -> None:
    sts = _one("StatefulSet")
    spec = sts["spec"]
    assert spec["replicas"] == 1
    pod = spec["template"]["spec"]
    assert pod["runtimeClassName"].startswith("kata-") and pod["runtimeClassName"].endswith(("-snp", "-tdx"))
    assert pod["nodeSelector"] and pod["tolerations"]
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    resources = container["resources"]
    for key in ("cpu", "memory"):
        assert key in resources["requests"] and key in resources["limits"], key
    gpus = [k for k in resources["limits"] if k in ("nvidia.com/gpu", "nvidia.com/pgpu")]
    assert gpus and resources["limits"][gpus[0]] == resources["requests"][gpus[0]] == "1"
    ports = {p["name"]: p for p in container["ports"]}
    assert set(ports) == {"grpc", "health"}
    port = ports["grpc"]
    # The kubelet's gRPC probes cannot speak TLS: they call the plaintext health-only port.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == ports["health"]["containerPort"], probe
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "@" not in container["image"] and ":" not in container["image"]  # pinned by kustomize
    args = aggregator_cli_parser().parse_args(container["args"])
    assert args.listen.endswith(f":{port['containerPort']}")
    assert args.health_listen == ListenAddress("0.0.0.0", ports["health"]["containerPort"])
    # In the pod VM the container reaches its TEE through the CoCo attestation agent only,
    # whose API the Kata agent opens only when the guest kernel command line asks for it.
    assert args.cpu_tee == "coco-" + pod["runtimeClassName"].rsplit("-", 1)[1].replace("snp", "sev-snp")
    kernel_params = spec["template"]["metadata"]["annotations"][
        "io.katacontainers.config.hypervisor.kernel_params"
    ]
    assert "agent.guest_components_rest_api=attestation" in kernel_params.split()
    assert not args.insecure_simulated_tee and args.gpu_collector != "none"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (claim,) = spec["volumeClaimTemplates"]
    assert mounts[claim["metadata"]["name"]] == str(args.log.parent)
    assert claim["spec"]["resources"]["requests"]["storage"]
    assert spec["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    assert args.job is not None and mounts["job"] == str(args.job.parent)


def test_the_probes_health_port_is_the_one_the_guide_names() -> None:
    # deploy/README.md, Kubernetes: "the plaintext health port (`--health-listen 0.0.0.0:8081`)";
    # Metrics and health: "the manifests in `kubernetes/` probe it on 8081".
    container = _one("StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    args = aggregator_cli_parser().parse_args(container["args"])
    named = _guide_says(r"\(`--health-listen (\S+)`\)")
    assert args.health_listen == parse_listen_address(named, "--health-listen")
    assert args.health_listen.port == int(_guide_says(r"the manifests in `kubernetes/` probe it on (\d+)"))


def _pointer(path: str) -> list[str]:
    return [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]]


def _apply_json_patch(document: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 (the operations the overlays use), as kustomize applies them."""
    result = copy.deepcopy(document)
    for operation in operations:
        *parents, last = _pointer(operation["path"])
        target: Any = result
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        key: Any = (len(target) if last == "-" else int(last)) if isinstance(target, list) else last
        if operation["op"] == "test":
            assert target[key] == operation["value"], operation
        elif operation["op"] == "replace":
            assert isinstance(target, list) or key in target, operation
            target[key] = operation["value"]
        elif operation["op"] == "remove":
            del target[key]
        elif operation["op"] == "add" and isinstance(target, list):
            target.insert(key, operation["value"])
        elif operation["op"] == "add":
            target[key] = operation["value"]
        else:
            raise AssertionError(f"the overlays use test, replace, remove and add only: {operation}")
    return result


def _kata_overlay(variant: str) -> dict[str, Any]:
    """The overlay's StatefulSet: the base's with the overlay's patches applied."""
    kustomization = yaml.safe_load((KATA / variant / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../../kubernetes"]
    sts = _one("StatefulSet")
    for patch in kustomization["patches"]:
        assert patch["target"] == {"kind": "StatefulSet", "name": sts["metadata"]["name"]}
        sts = _apply_json_patch(sts, yaml.safe_load(patch["patch"]))
    return sts


KATA_VARIANTS = {
    # overlay: (runtime class, --cpu-tee, GPU passed through)
    "nvidia-gpu-tdx": ("kata-qemu-nvidia-gpu-tdx", "coco-tdx", True),
    "snp": ("kata-qemu-snp", "coco-sev-snp", False),
    "tdx": ("kata-qemu-tdx", "coco-tdx", False),
}


def test_kata_overlays_cover_the_confidential_runtime_classes() -> None:
    assert {p.name for p in KATA.iterdir()} == set(KATA_VARIANTS)
    base = _one("StatefulSet")["spec"]["template"]["spec"]
    classes = {variant[0] for variant in KATA_VARIANTS.values()} | {base["runtimeClassName"]}
    assert classes == {
        "kata-qemu-snp",
        "kata-qemu-tdx",
        "kata-qemu-nvidia-gpu-snp",
        "kata-qemu-nvidia-gpu-tdx",
    }


@pytest.mark.parametrize("variant", sorted(KATA_VARIANTS))
def test_kata_overlay_runs_the_coco_collector_with_the_right_resources(variant: str) -> None:
    runtime_class, cpu_tee, gpu = KATA_VARIANTS[variant]
    pod = _kata_overlay(variant)["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == runtime_class
    (container,) = pod["containers"]
    args = aggregator_cli_parser().parse_args(container["args"])
    assert args.cpu_tee == cpu_tee and not args.insecure_simulated_tee
    resources = container["resources"]
    gpus = {k for part in ("requests", "limits") for k in resources[part] if k.startswith("nvidia.com/")}
    if gpu:
        assert args.gpu_collector == "nv-local-gpu-verifier"
        assert resources["requests"]["nvidia.com/pgpu"] == resources["limits"]["nvidia.com/pgpu"] == "1"
        assert pod["nodeSelector"] == {"nvidia.com/gpu.workload.config": "vm-passthrough"}
    else:
        assert args.gpu_collector == "none" and not gpus
        assert "tolerations" not in pod
        assert pod["nodeSelector"] == {"katacontainers.io/kata-runtime": "true"}
        # Without GPUs the default self-attestation policy (GPUs required) cannot pass: the
        # pod checks itself against the overlay's policy, packed into the job's ConfigMap.
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert args.self_attestation_policy == Path(mounts["job"]) / "self-attestation-policy.json"
        (generator,) = yaml.safe_load((KATA / variant / "kustomization.yaml").read_text())[
            "configMapGenerator"
        ]
        assert generator["behavior"] == "merge" and generator["files"] == ["self-attestation-policy.json"]
        assert generator["name"] == pod["volumes"][0]["configMap"]["name"] == "fedseal-job"
    for key in ("cpu", "memory"):
        assert resources["requests"][key] and resources["limits"][key]


@pytest.mark.parametrize(
    ("variant", "template"), [("snp", "production-sev-snp-cpu"), ("tdx", "production-tdx-cpu")]
)
def test_gpu_less_overlays_ship_the_cpu_only_template_unfilled(variant: str, template: str) -> None:
    """The overlay's self-attestation policy is the shipped CPU-only template, which loads
    (and lets the aggregator start) only once the operator's measurement is in."""
    document, source = load_policy_template(template)
    shipped = json.loads((KATA / variant / "self-attestation-policy.json").read_text())
    assert shipped == document
    with pytest.raises(PolicyError, match="non-empty"):
        Policy.from_file(KATA / variant / "self-attestation-policy.json")
    filled = fill_policy_template(
        document,
        source=source,
        snp_measurements=(bytes(48),) if variant == "snp" else (),
        tdx_mrtd=(bytes(48),) if variant == "tdx" else (),
        name="my-consortium",
    ).policy
    assert [k.value for k in filled.required_evidence] == ["amd-sev-snp" if variant == "snp" else "intel-tdx"]


_PLACEHOLDERS = {
    # the overlay comment's placeholders -> inputs `fedseal-attest measure` takes here
    # (tests/test_measure.py: sev-snp-measure's own OVMF vector; empty kernel and initrd)
    "OVMF.fd": str(ROOT / "tests" / "vectors" / "sev-snp-measure" / "ovmf_AmdSev_suffix.bin"),
    "vmlinuz": "EMPTY",
    "initrd.img": "EMPTY",
    "CMDLINE": "console=ttyS0",
    "N": "4",
    "MODEL": "EPYC-v4",
    "HEX": "ab" * 48,
}


def _commented_measure_command(variant: str) -> list[str]:
    """The `fedseal-attest measure ...` command the overlay's header comment shows."""
    comment = [
        line.removeprefix("#").strip()
        for line in (KATA / variant / "kustomization.yaml").read_text().splitlines()
        if line.startswith("#")
    ]
    start = next(n for n, line in enumerate(comment) if line.startswith("fedseal-attest measure"))
    command = ""
    for line in comment[start:]:
        command += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            break
    return shlex.split(command)


@pytest.mark.parametrize("variant", ["snp", "tdx"])
def test_the_kata_overlays_measure_command_fills_their_policy(variant: str, tmp_path: Path) -> None:
    """The command in the overlay's comment, run as shown on a copy of the shipped policy,
    writes a policy that loads (deploy/README.md, Kubernetes: `--policy-out` that file `--force`)."""
    argv = _commented_measure_command(variant)
    assert argv[:3] == ["fedseal-attest", "measure", variant]
    shipped = KATA / variant / "self-attestation-policy.json"
    out = argv.index("--policy-out") + 1
    assert argv[out] == str(shipped.relative_to(ROOT))
    copy_of_shipped = tmp_path / shipped.name
    shutil.copyfile(shipped, copy_of_shipped)
    argv[out] = str(copy_of_shipped)
    empty = tmp_path / "empty"  # as tests/test_measure.py: sev-snp-measure measures /dev/null
    empty.write_bytes(b"")
    unknown = [w for w in argv if w.isupper() and w not in _PLACEHOLDERS]
    assert not unknown, f"placeholders this test does not fill: {unknown}"
    argv = [_PLACEHOLDERS.get(w, w).replace("EMPTY", str(empty)) for w in argv]
    assert fedseal_attest(argv[1:]) == 0
    filled = Policy.from_file(copy_of_shipped)
    kind = EvidenceKind.AMD_SEV_SNP if variant == "snp" else EvidenceKind.INTEL_TDX
    assert filled.required_evidence == (kind,)
    assert "--force" in _guide_says(r"--policy-out` that file (`--force`)")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) is not installed")
@pytest.mark.parametrize("variant", sorted(KATA_VARIANTS))
def test_kata_overlays_render_with_kustomize_as_checked_above(variant: str) -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(KATA / variant)], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    (sts,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "StatefulSet"]
    ours = _kata_overlay(variant)["spec"]["template"]["spec"]
    theirs = sts["spec"]["template"]["spec"]
    for key in ("runtimeClassName", "nodeSelector"):
        assert theirs[key] == ours[key], key
    assert theirs.get("tolerations") == ours.get("tolerations")
    assert theirs["containers"][0]["args"] == ours["containers"][0]["args"]
    assert theirs["containers"][0]["resources"] == ours["containers"][0]["resources"]


def test_service_and_network_policy_expose_only_the_grpc_port() -> None:
    container = _one("StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    (port,) = [p for p in container["ports"] if p["name"] == "grpc"]  # not the health port
    (service_port,) = _one("Service")["spec"]["ports"]
    assert service_port["targetPort"] == port["name"] and service_port["port"] == port["containerPort"]
    policy = _one("NetworkPolicy")["spec"]
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    ingress_ports = [p["port"] for rule in policy["ingress"] for p in rule["ports"]]
    assert ingress_ports == [port["containerPort"]]


# --- systemd --------------------------------------------------------------------------------


def _unit() -> dict[str, list[str]]:
    values: dict[str, list[str]] = defaultdict(list)
    pending = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", ";", "["))):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        key, _, value = (pending + line).partition("=")
        pending = ""
        values[key.strip()].append(value.strip())
    return values


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("DevicePolicy", "closed"),
        ("CapabilityBoundingSet", "CAP_SYS_ADMIN"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("RestrictNamespaces", "yes"),
        ("SystemCallArchitectures", "native"),
        ("SystemCallFilter", "@system-service"),
        ("AmbientCapabilities", ""),
    ],
)
def test_systemd_unit_keeps_its_hardening(key: str, value: str) -> None:
    assert _unit()[key] == [value]


def test_systemd_unit_writes_only_the_audit_log_and_configfs_tsm_as_root() -> None:
    # deploy/README.md, A confidential VM with systemd: only /var/lib/fedseal is writable,
    # plus configfs-tsm (and PrivateTmp's /tmp); the process is root inside the CVM.
    unit = _unit()
    assert unit["ReadWritePaths"] == ["-/sys/kernel/config/tsm/report"]
    assert unit["StateDirectory"] == ["fedseal"]  # /var/lib/fedseal
    for writable in ("RuntimeDirectory", "CacheDirectory", "LogsDirectory", "BindPaths"):
        assert writable not in unit, writable
    assert unit.get("User", ["root"]) == ["root"] and "DynamicUser" not in unit
    assert "plus configfs-tsm and the unit's private `/tmp`" in _guide()


def test_systemd_unit_keeps_the_accumulator_off_the_gpu_under_mdwe() -> None:
    # deploy/README.md: CUDA has not been checked under MemoryDenyWriteExecute (the driver
    # JIT-compiles into W+X memory), so a unit that sets it keeps the accumulator on the CPU.
    unit = _unit()
    (exec_start,) = unit["ExecStart"]
    args = aggregator_cli_parser().parse_args(shlex.split(exec_start)[1:])
    if unit.get("MemoryDenyWriteExecute") == ["yes"]:
        assert args.accumulator_device == "cpu"


def _unit_install_commands() -> list[list[str]]:
    """The install steps in the unit's header comment, continuation lines joined."""
    commands: list[list[str]] = []
    pending = ""
    for raw in UNIT.read_text().splitlines():
        if not raw.startswith("#"):
            break
        line = raw.removeprefix("#").strip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        commands.append(shlex.split(pending + line))
        pending = ""
    return commands


def test_systemd_units_install_steps_use_the_images_locks_and_pip_flags() -> None:
    # deploy/README.md: "the install steps are at its top (a venv from the same locks as the image)".
    (image_install,) = [
        args for word, args in _instructions(CONTAINERFILE) if word == "RUN" and "pip install" in args
    ]
    image_flags = {w for w in shlex.split(image_install) if w.startswith("--")}
    image_locks = {Path(w).name for w in shlex.split(image_install) if w.endswith(".lock")}
    assert image_locks == {LOCK.name, NODEPS_LOCK.name}
    (install,) = [
        c for c in _unit_install_commands() if c[:2] == ["/opt/fedseal/venv/bin/pip", "install"] and "-r" in c
    ]
    assert {w for w in install if w.startswith("--")} == image_flags
    locks = [install[n + 1] for n, w in enumerate(install) if w == "-r"]
    assert sorted(locks) == sorted(str(p.relative_to(ROOT)) for p in (LOCK, NODEPS_LOCK))
    (exec_start,) = _unit()["ExecStart"]
    assert shlex.split(exec_start)[0].startswith("/opt/fedseal/venv/bin/")  # the venv installed above


def test_systemd_unit_allows_only_tee_and_gpu_devices_and_runs_a_valid_command() -> None:
    unit = _unit()
    devices = {entry.split()[0] for entry in unit["DeviceAllow"]}
    assert {"/dev/sev-guest", "/dev/tdx_guest"} <= devices
    assert all(d in ("/dev/sev-guest", "/dev/tdx_guest") or d.startswith("char-nvidia") for d in devices)
    assert "-/sys/kernel/config/tsm/report" in unit["ReadWritePaths"]
    (exec_start,) = unit["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0].endswith("/fedseal-aggregator")
    args = aggregator_cli_parser().parse_args(argv[1:])
    assert str(args.log.parent) == "/var/lib/fedseal" and unit["StateDirectory"] == ["fedseal"]
    assert not args.insecure_simulated_tee
    assert args.cpu_tee in ("sev-snp", "tdx") and args.gpu_collector != "none"


def test_the_image_and_the_unit_keep_grpcs_own_lines_out_of_the_json_log() -> None:
    # deploy/README.md, Logs: gRPC's C core reads GRPC_VERBOSITY once, at import; at its
    # default level every client's certificate probe on a mutual-TLS port is a plain-text line.
    env = " ".join(args for word, args in _instructions(CONTAINERFILE) if word == "ENV")
    assert "GRPC_VERBOSITY=ERROR" in env.split()
    assert "GRPC_VERBOSITY=ERROR" in " ".join(_unit()["Environment"]).split()


# --- the guide's numbers and names ------------------------------------------------------------


@pytest.mark.parametrize(
    ("site_id", "accepted"),
    [
        ("a", True),
        ("A-1.b_c", True),
        ("9", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        ("-site", False),
        (".x", False),
        ("_a", False),
        ("a b", False),
        ("a/b", False),
    ],
)
def test_site_ids_are_what_the_enrolment_table_says(site_id: str, accepted: bool) -> None:
    # deploy/README.md, the enrolment table: "1-128 of `A-Za-z0-9._-`, starting with a letter or digit".
    assert _guide_says(r"\(1-128 of `A-Za-z0-9\._-`(, starting with a letter or digit)\)")
    document = enrolment_json([site_id])
    if accepted:
        assert Enrolment.from_json_obj(document).site(site_id) is not None
    else:
        with pytest.raises(EnrolmentError, match="site id"):
            Enrolment.from_json_obj(document)


def _guide_number(text: str) -> float:
    """`2`, `4 GiB`, `20/s` as the abuse-limit table writes them."""
    match = re.fullmatch(r"(\d+)( GiB|/s)?", text.strip())
    assert match, text
    return int(match.group(1)) * (1024**3 if match.group(2) == " GiB" else 1)


def test_the_abuse_limit_table_is_the_commands_defaults() -> None:
    # deploy/README.md, "Abuse limits": every limit the command has is in the table, with
    # its default; and "Two more options size the server itself".
    section = GUIDE.read_text().split("### Abuse limits", 1)[1].split("\n### ", 1)[0]
    table: dict[str, float] = {}
    for row in re.findall(r"^\| (`--.*?) \| (.*?) \|", section, re.MULTILINE):
        options = re.findall(r"`(--[a-z-]+)`", row[0])
        values = row[1].split(",")
        for option, value in zip(options, values, strict=True):
            table[option] = _guide_number(value)
    parser = aggregator_cli_parser()
    (group,) = [g for g in parser._action_groups if (g.title or "").startswith("abuse limits")]
    assert set(table) == {a.option_strings[0] for a in group._group_actions}
    defaults = {a.option_strings[0]: a.default for a in parser._actions if a.option_strings}
    for option, value in table.items():
        assert defaults[option] == value, option
    for option in ("--max-workers", "--upload-line"):
        assert defaults[option] == int(_guide_says(rf"`{option}` \((\d+)\)")), option


def test_the_witness_timeout_and_the_anonymous_request_timeout_are_the_guides() -> None:
    defaults = {a.dest: a.default for a in aggregator_cli_parser()._actions}
    assert defaults["witness_timeout"] == float(_guide_says(r"\(`--witness-timeout`, default (\d+) s\)"))
    # "A call without credentials ... must send its request within 10 s": the admission
    # interceptor's default, which the server does not override.
    assert float(_guide_says(r"must send its request within (\d+) s")) == DEFAULT_RECEIVE_TIMEOUT_SECONDS
    parameter = inspect.signature(AdmissionInterceptor.__init__).parameters["receive_timeout"]
    assert parameter.default == DEFAULT_RECEIVE_TIMEOUT_SECONDS
    calls = [
        node
        for node in ast.walk(ast.parse((ROOT / "aggregator" / "_server.py").read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "AdmissionInterceptor"
    ]
    assert calls and all(k.arg != "receive_timeout" for call in calls for k in call.keywords)


def test_the_collectors_defaults_are_the_guides() -> None:
    defaults = {a.dest: a.default for a in aggregator_cli_parser()._actions}
    assert defaults["gpu_collector"] == _guide_says(r"`--gpu-collector (\S+)` \(default\)")
    assert defaults["coco_agent_url"] is None  # then the collector's default:
    assert "http://" + _guide_says(r"guest-components' API server on `([^`]+)`") == DEFAULT_COCO_AGENT_URL


def test_stapled_collateral_is_refreshed_as_the_guide_says() -> None:
    # "by a background thread ten minutes ahead of that time": the refresher's lead, which
    # the aggregator does not override ...
    assert "by a background thread ten minutes ahead of that time" in _guide()
    lead = inspect.signature(CollateralRefresher.__init__).parameters["lead"]
    assert lead.default == datetime.timedelta(minutes=10)
    calls = [
        node
        for node in ast.walk(ast.parse((ROOT / "aggregator" / "_cli.py").read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "CollateralRefresher"
    ]
    assert calls and all(len(call.args) == 1 and not call.keywords for call in calls)
    # ... and Intel's TDX collateral is "refreshed at least daily", however far its expiry.
    assert "field, refreshed at least daily" in _guide()
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    for days in (2, 8, 30, 365):
        refresh = tdx_collateral_validity(now + datetime.timedelta(days=days), now).refresh_at
        assert refresh - now <= datetime.timedelta(days=1), days
    far = tdx_collateral_validity(now + datetime.timedelta(days=365), now).refresh_at
    assert far - now == datetime.timedelta(days=1)


def test_the_guides_first_command_is_one_the_aggregator_starts_with() -> None:
    # deploy/README.md opens with a hardware-mode command line: it must parse, and name the
    # CPU TEE collector hardware mode refuses to start without (its optional part dropped).
    guide = (ROOT / "deploy" / "README.md").read_text()
    block = re.search(r"```sh\n(fedseal-aggregator .*?)```", guide, re.DOTALL)
    assert block
    command = re.sub(r"\[[^\]]*\]", "", block.group(1).replace("\\\n", " "))
    args = aggregator_cli_parser().parse_args(shlex.split(command)[1:])
    assert not args.insecure_simulated_tee and args.cpu_tee in ("sev-snp", "tdx", "coco-sev-snp", "coco-tdx")
