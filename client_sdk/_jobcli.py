"""`fedseal-job init`: everything a FedSeal job needs before the aggregator starts.

    fedseal-job init OUT --sites hospital-a,hospital-b,hospital-c --operator olivia \\
        --adapter ./peft-adapter-folder [--policy default] [--rounds 0]

writes into OUT (a new or empty folder):

- ``sites/<site>.key``: a new Ed25519 key per site (or ``--site-key NAME=PUBLIC_KEY_FILE``
  for sites that made their own: a raw 32-byte key, base64, or a PEM public key), and
  ``sites/sites.json``, the site map that gives simulated Flower nodes their identities
  (partition i is the i-th site; client_sdk/_sitemap.py);
- ``enrolment.json``: the sites and their public keys (``fedseal-aggregator --enrolment``);
- ``<operator>.key`` and ``job.json``: the operator principal (role ``operator``), in a job
  whose rounds are opened by signed requests (``"rounds": 0``; what a Flower job needs:
  Flower decides the rounds and the cohort); ``--rounds N --min-clients M --max-clients K
  --deadline-s S --strategy NAME`` writes a job that runs N rounds by itself instead;
- ``adapter_spec.json``: the adapter spec, from ``--adapter``: a PEFT adapter folder
  (``adapter_model.safetensors``), an adapter file (``.safetensors``), or a PEFT config
  (``adapter_config.json``, or the folder holding only it) with ``--base-model`` (a
  transformers model folder whose ``config.json`` gives the shapes; no weights are read,
  the model is built on the meta device); tensors keep their dtypes (bfloat16 and float16
  included) unless ``--dtype`` says otherwise;
- ``initial_adapter.safetensors``: the adapter's values, when ``--adapter`` has values
  (``fedseal-aggregator --initial-adapter``; FedSeal's DP measures round 1 against it).

Private keys are written readable by their owner only; hand each site its key (or have
it make its own and pass ``--site-key``).

Exit status: 0 when everything was written (the paths are printed, one a line); 2 for a
bad argument or input: one line on stderr names the flag, file or value, and a check that
fails before writing leaves OUT untouched.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import sys
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

from client_sdk._adapters import AdapterInputError, adapter_tensors
from client_sdk._identity import write_signing_key
from client_sdk._sitemap import SiteMap
from fedseal.cliargs import positive_int
from fedseal.enrolment import SITE_ID_PATTERN, EnrolledSite, Enrolment
from fedseal.errors import FedSealError
from fedseal.roundconfig import MAX_JOB_ROUNDS, STRATEGIES, RoundConfig
from fedseal.signed_request import Role, Signer, principals_to_json
from fedseal.spec import AdapterSpec
from fedseal.strictjson import loads as strict_loads

__all__ = ["main"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class JobInitError(Exception):
    """A bad argument or input; the message says which."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedseal-job",
        description="Make what a FedSeal job needs: site keys, enrolment, operator principal, adapter spec.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="write keys, enrolment.json, job.json and adapter_spec.json into OUT")
    init.add_argument("out", type=Path, help="a new or empty folder")
    init.add_argument("--sites", default="", help="comma-separated site ids to make keys for")
    init.add_argument(
        "--site-key",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="a site that made its own key: its public key (PEM, or raw 32 bytes base64). Repeatable",
    )
    init.add_argument(
        "--operator", required=True, help="the operator principal's name (e.g. the Flower server)"
    )
    init.add_argument(
        "--adapter", type=Path, required=True, help="PEFT adapter folder, .safetensors file, or PEFT config"
    )
    init.add_argument("--base-model", type=Path, help="with a PEFT config: the model folder (config.json)")
    init.add_argument(
        "--dtype", choices=sorted(_DTYPES), help="convert every tensor (default: keep each one's)"
    )
    init.add_argument("--policy", default="default", help="the policy simulated sites require (site map)")
    init.add_argument(
        "--rounds", type=int, default=0, help="rounds the aggregator runs by itself (0: by request)"
    )
    # At least 1: a 0 would silently become the site count (the default) below.
    init.add_argument(
        "--min-clients", type=positive_int, help="with --rounds: each round's minimum (default: all sites)"
    )
    init.add_argument(
        "--max-clients", type=positive_int, help="with --rounds: each round's cohort (default: all sites)"
    )
    init.add_argument("--deadline-s", type=float, default=600.0, help="with --rounds: each round's deadline")
    init.add_argument("--strategy", choices=STRATEGIES, default="fedavg", help="with --rounds: the strategy")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        written = init_job(args)
    except (JobInitError, FedSealError, AdapterInputError) as exc:
        print(f"fedseal-job: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # writing OUT: a parent that is a file, no permission, a full disk
        print(f"fedseal-job: error: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    for path in written:
        print(_printable(path))
    return 0


def _printable(path: Path) -> str:
    """`path` as stdout can encode it: OUT may hold bytes that are not valid in its encoding
    (undecodable bytes come from the OS as lone surrogates), and printing must not fail
    after every file is written. Such characters are shown backslash-escaped."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    return str(path).encode(encoding, "backslashreplace").decode(encoding)


def init_job(args: argparse.Namespace) -> list[Path]:
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise JobInitError(f"{out} exists and is not an empty folder: nothing was written")
    new_sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    given = dict(_site_key(item) for item in args.site_key)
    if not new_sites and not given:
        raise JobInitError("name the sites: --sites a,b,c and/or --site-key NAME=FILE")
    if len(set(new_sites)) != len(new_sites) or set(new_sites) & set(given):
        raise JobInitError("every site id must be named once")
    # Names become file names (sites/<site>.key, <operator>.key): no path may hide in one.
    for flag, name in [*(("--sites", s) for s in new_sites), *(("--site-key", s) for s in given)]:
        if not SITE_ID_PATTERN.fullmatch(name):
            raise JobInitError(
                f"{flag} {name!r}: a site id is letters, digits, '.', '_' or '-' (at most 128)"
            )
    if not SITE_ID_PATTERN.fullmatch(args.operator):
        raise JobInitError(
            f"--operator {args.operator!r}: a principal's name is letters, digits, '.', '_' or '-' "
            "(at most 128)"
        )
    # What the site map and the aggregator's job config refuse, refused before writing.
    if not args.policy:
        raise JobInitError("--policy '': name a built-in policy or a policy file")
    if not 0 <= args.rounds <= MAX_JOB_ROUNDS:
        raise JobInitError(f"--rounds must be 0 (rounds by request) to {MAX_JOB_ROUNDS}, got {args.rounds}")
    if args.rounds == 0 and (args.min_clients is not None or args.max_clients is not None):
        raise JobInitError("--min-clients and --max-clients go with --rounds N (N >= 1)")
    if not 0 < args.deadline_s <= 7 * 24 * 3600:
        raise JobInitError(f"--deadline-s must be in (0, 604800] seconds, got {args.deadline_s}")
    tensors, has_values = _adapter(args)
    spec = AdapterSpec.from_tensors(tensors)
    round_template: dict[str, Any] | None = None
    if args.rounds > 0:
        count = len(new_sites) + len(given)
        round_template = {
            "adapter_spec": spec.to_json_obj(),
            "min_clients": count if args.min_clients is None else args.min_clients,
            "max_clients": count if args.max_clients is None else args.max_clients,
            "deadline_ms": round(args.deadline_s * 1000),
            "strategy": args.strategy,
        }
        RoundConfig.from_json_obj(round_template, round_id=1)  # validate before writing anything

    out.mkdir(parents=True, exist_ok=True)
    sites_dir = out / "sites"
    sites_dir.mkdir()
    written: list[Path] = []
    keys: dict[str, bytes] = {}
    for site in new_sites:
        keys[site] = write_signing_key(sites_dir / f"{site}.key")
        written.append(sites_dir / f"{site}.key")
    keys.update(given)
    enrolment = Enrolment(1, tuple(EnrolledSite(name, (key,)) for name, key in keys.items()))
    written.append(_write_json(out / "enrolment.json", enrolment.to_json_obj()))
    if new_sites:
        written.append(SiteMap.of_sites(sites_dir, args.policy, new_sites).write())
    operator_key = out / f"{args.operator}.key"
    principal = Signer(args.operator, Role.OPERATOR, write_signing_key(operator_key))
    written.append(operator_key)
    job: dict[str, Any] = {
        "format": "fedseal-job/v1",
        "rounds": args.rounds,
        "principals": principals_to_json((principal,)),
    }
    if round_template is not None:
        job["round_template"] = round_template
    written.append(_write_json(out / "job.json", job))
    written.append(_write_json(out / "adapter_spec.json", spec.to_json_obj()))
    if has_values:
        path = out / "initial_adapter.safetensors"
        path.write_bytes(safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()}))
        written.append(path)
    return written


def _site_key(item: str) -> tuple[str, bytes]:
    name, sep, file = item.partition("=")
    if not sep or not name or not file:
        raise JobInitError(f"--site-key {item!r}: expected NAME=FILE")
    try:
        data = Path(file).read_bytes()
    except OSError as exc:
        raise JobInitError(f"--site-key {name}: cannot read {file}: {exc.strerror}") from None
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = load_pem_public_key(data)
        except ValueError as exc:
            raise JobInitError(f"--site-key {name}: {file} is not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise JobInitError(f"--site-key {name}: {file} is not an Ed25519 key")
        return name, key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise JobInitError(f"--site-key {name}: {file} is neither PEM nor a base64 32-byte Ed25519 key")
    return name, raw


def _adapter(args: argparse.Namespace) -> tuple[dict[str, torch.Tensor], bool]:
    """The adapter's tensors, and whether they carry real values (not a config's shapes)."""
    path: Path = args.adapter
    config_file = path if path.name == "adapter_config.json" else path / "adapter_config.json"
    weights = path.is_dir() and (path / "adapter_model.safetensors").exists()
    if (path.is_file() and path.suffix == ".safetensors") or weights:
        tensors, has_values = adapter_tensors(path), True
    elif config_file.is_file():
        tensors, has_values = _from_peft_config(config_file, args.base_model), False
    else:
        raise JobInitError(
            f"--adapter {path}: expected a PEFT adapter folder, a .safetensors file or an adapter_config.json"
        )
    if args.dtype is not None:
        tensors = {k: v.to(_DTYPES[args.dtype]) for k, v in tensors.items()}
    return tensors, has_values


def _from_peft_config(config_file: Path, base_model: Path | None) -> dict[str, torch.Tensor]:
    """The adapter's tensors (on the meta device: shapes and dtypes only) that PEFT would
    make for this config on the base model's architecture."""
    if base_model is None:
        raise JobInitError("a PEFT config gives no shapes by itself: add --base-model MODEL_FOLDER")
    try:
        from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:
        raise JobInitError(
            "reading a PEFT config needs peft and transformers (pip install peft transformers)"
        ) from None
    model_file = base_model / "config.json"
    _json_object(config_file, "the PEFT config")
    _json_object(model_file, "the base model's config")
    logging.getLogger("transformers").setLevel(logging.ERROR)  # its warnings are not this output
    try:
        lora = LoraConfig.from_pretrained(str(config_file.parent))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise JobInitError(f"{config_file} is not a PEFT config: {exc}") from None
    try:
        model_config = AutoConfig.from_pretrained(str(base_model))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise JobInitError(f"{model_file} is not a transformers model config: {exc}") from None
    dtype = getattr(model_config, "torch_dtype", None) or getattr(model_config, "dtype", None)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_config)  # type: ignore[no-untyped-call]
            if isinstance(dtype, torch.dtype):
                model = model.to(dtype)
            peft_model = get_peft_model(model, lora)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # An architecture transformers cannot build, or target modules the model lacks.
        raise JobInitError(f"cannot apply {config_file} to the model of {model_file}: {exc}") from None
    state = get_peft_model_state_dict(peft_model)
    return {name: state[name] for name in sorted(state)}


def _json_object(path: Path, what: str) -> None:
    """Refuse a file that is not a JSON object (with the depth limit) before a library
    parses it: theirs recurse without limit and fail with assorted error types."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise JobInitError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        value = strict_loads(data, what=f"{what} {path}")
    except FedSealError as exc:
        raise JobInitError(str(exc)) from None
    if not isinstance(value, dict):
        raise JobInitError(f"{what} {path} is not a JSON object")


def _write_json(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj, indent=2) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
