"""`fedseal-job init`: site keys and site map, enrolment, operator principal, a Flower job
(rounds by request) and the adapter spec from a PEFT folder, an adapter file or a PEFT
config with its base model; dtypes kept."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from aggregator import ConfigError, JobConfig
from client_sdk import ClientIdentity
from client_sdk._jobcli import main
from client_sdk._sitemap import SiteMap
from examples.lora_demo.training import DemoModelConfig, build_model
from fedseal.enrolment import Enrolment
from fedseal.roundconfig import MAX_JOB_ROUNDS
from fedseal.spec import AdapterSpec


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    model = build_model(DemoModelConfig())
    model.save_pretrained(str(root / "peft"))
    DemoModelConfig().llama_config().save_pretrained(str(root / "base"))
    (root / "config_only").mkdir()
    (root / "config_only" / "adapter_config.json").write_text(
        (root / "peft" / "adapter_config.json").read_text()
    )
    model.to(torch.bfloat16).save_pretrained(str(root / "peft_bf16"))
    return {
        "peft": root / "peft",
        "file": root / "peft" / "adapter_model.safetensors",
        "bf16": root / "peft_bf16",
        "config": root / "config_only" / "adapter_config.json",
        "base": root / "base",
    }


def _init(tmp_path: Path, *extra: str) -> tuple[int, Path]:
    out = tmp_path / "job"
    return main(["init", str(out), "--sites", "a,b,c", "--operator", "flower-server", *extra]), out


def test_init_writes_a_flower_job_that_the_aggregator_and_the_simulation_read(
    tmp_path: Path, sources: dict[str, Path]
) -> None:
    rc, out = _init(tmp_path, "--adapter", str(sources["peft"]), "--policy", "dev-insecure-allow-simulated")
    assert rc == 0
    job = JobConfig.from_file(out / "job.json")
    assert job.rounds == 0 and not job.round_template  # Flower holds rounds and cohort
    operator = ClientIdentity.from_files("flower-server", out / "flower-server.key")
    assert [(p.name, p.role.value, p.public_key) for p in job.principals] == [
        ("flower-server", "operator", operator.public_key)
    ]
    enrolment = Enrolment.from_json_obj(json.loads((out / "enrolment.json").read_text()))
    site_map = SiteMap.load(out / "sites")
    assert [site_map.site(i) for i in range(3)] == ["a", "b", "c"]
    for name in "abc":
        key = ClientIdentity.from_files(name, site_map.key_file(name)).public_key
        assert enrolment.site(name).keys == (key,)  # type: ignore[union-attr]
        assert (site_map.key_file(name).stat().st_mode & 0o077) == 0
    spec = AdapterSpec.from_json_obj(json.loads((out / "adapter_spec.json").read_text()))
    initial = safetensors.torch.load_file(str(out / "initial_adapter.safetensors"))
    assert spec == AdapterSpec.from_tensors(initial) and len(spec.tensors) == 16


def test_the_three_adapter_sources_agree_and_dtypes_pass_through(
    tmp_path: Path, sources: dict[str, Path]
) -> None:
    specs = {}
    for label, extra in {
        "peft": ["--adapter", str(sources["peft"])],
        "file": ["--adapter", str(sources["file"])],
        "config": ["--adapter", str(sources["config"]), "--base-model", str(sources["base"])],
        "bf16": ["--adapter", str(sources["bf16"])],
        "as-f16": ["--adapter", str(sources["peft"]), "--dtype", "float16"],
    }.items():
        rc, out = _init(tmp_path / label, *extra)
        assert rc == 0, label
        specs[label] = AdapterSpec.from_json_obj(json.loads((out / "adapter_spec.json").read_text()))
        # A config gives shapes only: no initial adapter values are made up.
        assert (out / "initial_adapter.safetensors").exists() == (label != "config")
    assert specs["peft"] == specs["file"] == specs["config"]
    assert {t.dtype.value for t in specs["bf16"].tensors} == {"BF16"}
    assert {t.dtype.value for t in specs["as-f16"].tensors} == {"F16"}
    assert specs["bf16"].shapes() == specs["peft"].shapes()


def test_sites_public_keys_and_a_self_running_job(tmp_path: Path, sources: dict[str, Path]) -> None:
    own = ClientIdentity.from_files("a", _key(tmp_path))
    pem = tmp_path / "d.pub"
    pem.write_bytes(
        own.signing_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    rc, out = _init(
        tmp_path,
        "--site-key",
        f"d={pem}",
        "--adapter",
        str(sources["file"]),
        "--rounds",
        "3",
        "--strategy",
        "fedprox",
    )
    assert rc == 2  # fedprox needs proximal_mu: refused before anything is written
    assert not out.exists()
    rc, out = _init(tmp_path, "--site-key", f"d={pem}", "--adapter", str(sources["file"]), "--rounds", "3")
    assert rc == 0
    job = JobConfig.from_file(out / "job.json")
    assert job.rounds == 3 and job.round_config(1).max_clients == 4
    enrolment = Enrolment.from_json_obj(json.loads((out / "enrolment.json").read_text()))
    assert enrolment.site("d").keys == (own.public_key,)  # type: ignore[union-attr]
    assert not (out / "sites" / "d.key").exists()


def _key(tmp_path: Path) -> Path:
    from client_sdk import write_signing_key

    path = tmp_path / "own.key"
    write_signing_key(path)
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--operator", "op", "--adapter", "nowhere"], "name the sites"),
        (["--sites", "a,a", "--operator", "op", "--adapter", "x"], "named once"),
        (["--sites", "a", "--operator", "op", "--adapter", "CONFIG"], "--base-model"),
        (["--sites", "a", "--operator", "op", "--adapter", "nowhere"], "expected a PEFT adapter folder"),
        (["--sites", "a", "--operator", "op", "--adapter", "FILE", "--min-clients", "2"], "go with --rounds"),
    ],
)
def test_bad_arguments_are_named_in_one_line(
    tmp_path: Path,
    sources: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    argv = [
        str(sources["config"]) if a == "CONFIG" else str(sources["file"]) if a == "FILE" else a for a in argv
    ]
    assert main(["init", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def _exit_code(argv: list[str]) -> object:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's usage errors
        return exc.code


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rounds", "99999999999"], "--rounds must be 0 (rounds by request) to 100000"),
        (["--policy", ""], "--policy ''"),
        (["--rounds", "2", "--min-clients", "0"], "argument --min-clients: must be at least 1, got 0"),
        (["--rounds", "2", "--max-clients", "0"], "argument --max-clients: must be at least 1, got 0"),
    ],
)
def test_init_refuses_what_the_aggregator_or_the_site_map_would_refuse(
    tmp_path: Path,
    sources: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "out"
    argv = ["init", str(out), "--sites", "a,b", "--operator", "op", "--adapter", str(sources["file"])]
    assert _exit_code([*argv, *extra]) == 2
    err = capsys.readouterr().err  # argparse's refusals come after its usage lines
    assert message in err.splitlines()[-1] and "Traceback" not in err
    assert not out.exists()


def test_the_rounds_limit_is_the_job_configs(tmp_path: Path, sources: dict[str, Path]) -> None:
    rc, out = _init(tmp_path, "--adapter", str(sources["file"]), "--rounds", str(MAX_JOB_ROUNDS))
    assert rc == 0
    job = json.loads((out / "job.json").read_text())
    assert JobConfig.from_json_obj(job).rounds == MAX_JOB_ROUNDS
    with pytest.raises(ConfigError, match="'rounds' must be an integer in"):
        JobConfig.from_json_obj({**job, "rounds": MAX_JOB_ROUNDS + 1})


def test_an_out_path_that_is_not_utf8_is_written_and_printed_escaped(
    tmp_path: Path, sources: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / os.fsdecode(b"job\xff")  # what the OS hands Python for that byte
    argv = ["init", str(out), "--sites", "a", "--operator", "op", "--adapter", str(sources["file"])]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()  # capsys's stdout is strict UTF-8
    assert (out / "job.json").exists()
    assert printed and all("job\\udcff" in line for line in printed)
