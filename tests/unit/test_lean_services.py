"""The API, the coordinator and the tokenizer service never load torch or transformers (about 200 MB each): only
the shard nodes (and model preparation) compute with tensors; the coordinator relays hidden states as bytes; the
tokenizer service uses the Rust ``tokenizers`` library and jinja2 directly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

HEAVY = "{'torch', 'transformers', 'numpy'}"

# a tokenizer servicer answering every RPC in-process, as a running service does after its first requests
SERVE_TOKENIZER = """
import asyncio, sys
import tokenizer_svc.__main__
from protos import tokenizer_pb2 as pb
from tests.unit.fakes import FakeContext
from tokenizer_svc.service import TokenizerServicer
from tokenizer_svc.tokenizers import TokenizerSet

tokenizers = TokenizerSet({{"m": __import__("pathlib").Path({model_dir!r})}})
tokenizers.load_all()
servicer, ctx = TokenizerServicer(tokenizers), FakeContext()
async def calls():
    ids = (await servicer.Encode(pb.EncodeRequest(model="m", text="Hello <|im_end|> 🙂"), ctx)).token_ids
    await servicer.Decode(pb.DecodeRequest(model="m", token_ids=ids), ctx)
    await servicer.DecodeIncremental(pb.DecodeIncrementalRequest(model="m", token_ids=ids), ctx)
    chat = pb.ChatTemplateRequest(model="m", add_generation_prompt=True,
                                  messages=[pb.ChatMessage(role="user", content="hi <|im_start|>")])
    await servicer.ApplyChatTemplate(chat, ctx)
    await servicer.Info(pb.TokenizerInfoRequest(model="m"), ctx)
asyncio.run(calls())
heavy = sorted({heavy} & set(sys.modules)); print(heavy); sys.exit(1 if heavy else 0)
"""


@pytest.mark.parametrize("module", ["api.main", "api.__main__", "coordinator.__main__", "tokenizer_svc.__main__"])
def test_service_imports_no_torch(module: str) -> None:
    check = (f"import sys, {module}; heavy = sorted({HEAVY} & set(sys.modules)); "
             "print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{module} imports {done.stdout.strip()} {done.stderr[-2000:]}"


def test_serving_tokenizer_loads_no_torch(smollm2_dir: Path) -> None:
    """Loading a model's tokenizer and answering every RPC kind imports nothing heavy either."""
    script = SERVE_TOKENIZER.format(model_dir=str(smollm2_dir), heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"the tokenizer service imports {done.stdout.strip()} {done.stderr[-2000:]}"


def _installed_by(requirements: list[str], extras: dict[str, list[str]]) -> set[str]:
    """Distribution names (normalized) that pip installs for requirements, following this project's own extras."""
    from importlib.metadata import distribution

    from packaging.requirements import Requirement

    names: set[str] = set()
    todo = [(Requirement(r), "") for r in requirements]
    while todo:
        req, _ = todo.pop()
        name = req.name.lower().replace("_", "-")
        if name == "shardline":
            todo += [(Requirement(r), "") for extra in req.extras for r in extras[extra]]
        elif name not in names:
            names.add(name)
            for spec in distribution(name).requires or []:
                dep = Requirement(spec)
                if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                    todo.append((dep, name))
    return names


# what a service's process imports once serving (its entry module and the Docker HEALTHCHECK)
SERVICE_MODULES = {"api": ["api.__main__", "api.main"], "coordinator": ["coordinator.__main__"],
                   "tokenizer": ["tokenizer_svc.__main__"], "node": ["shard_node.__main__"]}
# imported only when present (grpc/__init__.py's grpc.tools shim, anyio's event-loop sniffing, torch's datapipes
# pickling with dill, which lm-eval brings into the dev environment); fine without them
OPTIONAL_IMPORTS = {"grpc_tools", "sniffio", "dill"}
# top-level modules a service loads (beyond interpreter start-up) -> the distributions that ship them
IMPORTED_DISTRIBUTIONS = """
import importlib, json, sys
from importlib.metadata import packages_distributions
at_start = {m.split(".")[0] for m in sys.modules}
for module in sys.argv[1:]:
    importlib.import_module(module)
owners = packages_distributions()
loaded = {m.split(".")[0] for m in list(sys.modules)} - at_start
print(json.dumps({m: owners[m] for m in sorted(loaded) if m in owners}))
"""


@pytest.mark.parametrize("extra", sorted(SERVICE_MODULES))
def test_each_service_imports_only_what_its_extra_installs(extra: str) -> None:
    """An image installs `shardline[<extra>]` only (docker/): every distribution its service imports is in it."""
    import json
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = _installed_by([*project["dependencies"], *project["optional-dependencies"][extra]],
                              project["optional-dependencies"])
    modules = [*SERVICE_MODULES[extra], "ops.healthcheck"]
    done = subprocess.run([sys.executable, "-c", IMPORTED_DISTRIBUTIONS, *modules], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    owners = {module: {d.lower().replace("_", "-") for d in dists} for module, dists in json.loads(done.stdout).items()}
    missing = {module: dists for module, dists in owners.items()
               if module not in OPTIONAL_IMPORTS and "shardline" not in dists and not dists & installed}
    assert missing == {}, f"shardline[{extra}] does not install what {modules} import"
