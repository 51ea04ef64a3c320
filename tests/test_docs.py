"""Every test the docs cite as enforcing a claim exists (threat model, READMEs, deploy guide,
quick starts, data card)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from attestation import EvidenceKind, load_builtin_policy

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    ROOT / "docs" / "threat-model.md",
    ROOT / "README.md",
    ROOT / "deploy" / "README.md",
    ROOT / "docs" / "quickstart.md",
    ROOT / "docs" / "data-card.md",
    *sorted((ROOT / "examples").glob("*/README.md")),
]
_CITATION = re.compile(r"tests/([a-z0-9_]+\.py)(?:::([a-z0-9_]+))?")


def test_cited_tests_exist() -> None:
    cited = 0
    for doc in DOCS:
        for match in _CITATION.finditer(doc.read_text()):
            path = ROOT / "tests" / match.group(1)
            assert path.is_file(), f"{doc.name} cites {path.name}, which does not exist"
            if match.group(2):
                assert f"def {match.group(2)}(" in path.read_text(), (
                    f"{doc.name} cites {match.group(0)}, which does not exist"
                )
            cited += 1
    assert cited > 20


_DIFF = re.compile(r"```diff\n(.*?)```", re.DOTALL)
_COUNTED = re.compile(r"(\d+) lines added,? (?:and )?(\d+) removed")
_RUN_CONFIG_LINE = re.compile(r"(fedseal-[a-z-]+) = ")
_MARKED = re.compile(r"\s*(\S.*?)  # FedSeal(?:: was (.*))?$")  # code, then its marker comment


def _fedseal_marked(path: Path) -> tuple[list[str], list[str]]:
    """The code of the lines marked `# FedSeal` in an example app, and what they replaced
    (`# FedSeal: was ...`)."""
    code, was = [], []
    for line in path.read_text().splitlines():
        if (m := _MARKED.match(line)) is not None:
            code.append(m.group(1))
            if m.group(2) is not None:
                was.append(m.group(2))
    return code, was


def test_the_flower_diff_in_the_readmes_is_counted_and_is_the_templates_diff() -> None:
    # The diff a Flower user makes, as README.md and examples/flower_lora/README.md show
    # it: its stated counts are its lines, its code lines are exactly the lines marked
    # `# FedSeal` in the FlowerTune-style template, its run-config lines are keys the
    # template's pyproject.toml sets.
    template = ROOT / "examples" / "flowertune_llm"
    marked_code, marked_was = [], []
    for name in ("client_app.py", "server_app.py"):
        code, was = _fedseal_marked(template / name)
        marked_code += code
        marked_was += was
    config = (template / "pyproject.toml").read_text()
    for doc in (ROOT / "README.md", ROOT / "examples" / "flower_lora" / "README.md"):
        text = doc.read_text()
        block = _DIFF.search(text)
        assert block is not None, f"{doc.name} shows no diff"
        lines = block.group(1).splitlines()
        added = [line[1:].strip() for line in lines if line.startswith("+") and not line.startswith("+++")]
        removed = [line[1:].strip() for line in lines if line.startswith("-") and not line.startswith("---")]
        counted = _COUNTED.search(text, block.end())
        assert counted is not None, f"{doc.name} does not count its diff"
        assert (int(counted.group(1)), int(counted.group(2))) == (len(added), len(removed)), doc.name
        run_config = [m.group(1) for line in added if (m := _RUN_CONFIG_LINE.match(line))]
        code = [line for line in added if not _RUN_CONFIG_LINE.match(line)]
        assert sorted(code) == sorted(marked_code), doc.name
        assert run_config and all(f"\n{key} = " in config for key in run_config), doc.name
        for replaced in marked_was:
            assert any(line.endswith(replaced) for line in removed), (doc.name, replaced)


def test_the_quickstarts_install_line_names_the_extras_the_default_policy_needs() -> None:
    # docs/quickstart.md: the default policy requires NVIDIA GPU evidence with a RIM match,
    # whose XML signatures need signxml and lxml: the `nvidia` extra; the pack needs `audit`.
    default = load_builtin_policy("default")
    assert EvidenceKind.NVIDIA_GPU in default.required_evidence
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"signxml", "lxml"} <= {re.split(r"[<>=\[ ]", spec)[0] for spec in extras["nvidia"]}
    assert any(spec.startswith("cyclonedx-python-lib") for spec in extras["audit"])
    quickstart = (ROOT / "docs" / "quickstart.md").read_text()
    assert "pip install -e '.[nvidia]'" in quickstart and "pip install -e '.[nvidia,audit]'" in quickstart


def test_the_flower_lora_readmes_job_steps_run_as_written(tmp_path: Path) -> None:
    # examples/flower_lora/README.md, "As a Flower app": the initial adapter and the job it
    # makes (everything before the long-running aggregator), run as written from a
    # repository-like root.
    readme = (ROOT / "examples" / "flower_lora" / "README.md").read_text()
    block = next(b for b in re.findall(r"```sh\n(.*?)```", readme, re.DOTALL) if "fedseal-job init" in b)
    steps = block.split("\nfedseal-aggregator ")[0]
    assert steps.startswith("python -c") and "fedseal-job init examples/flower_lora/job" in steps
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    result = subprocess.run(
        ["bash", "-euc", steps], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    job = tmp_path / "examples" / "flower_lora" / "job"
    for name in ("job.json", "enrolment.json", "initial_adapter.safetensors", "flower-server.key"):
        assert (job / name).is_file(), name
