"""The speculative-decoding section's prompts (issue 20): chat-templated with the model's tokenizer, greedy, ending
at EOS (``MAX_TOKENS`` only as a cap). Copy-heavy tasks, where this 135M model does copy its input (checked with
transformers greedy), and open-ended ones, where n-gram drafts find little to copy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

COPY, OPEN = "copy-heavy", "open-ended"
CLASSES = (COPY, OPEN)
MAX_TOKENS = 256  # a cap: every prompt is meant to end at EOS

PARAGRAPH = (
    "The Great Barrier Reef is the world's largest coral reef system, composed of over 2,900 individual reefs and "
    "900 islands stretching for over 2,300 kilometres over an area of approximately 344,400 square kilometres. "
    "The reef is located in the Coral Sea, off the coast of Queensland, Australia. It can be seen from outer space "
    "and is the world's biggest single structure made by living organisms."
)
JSON_CONFIG = (
    '{\n  "name": "shardline",\n  "host": "127.0.0.1",\n  "port": 8000,\n  "workers": 4,\n  "log_level": "info",\n'
    '  "models": ["smollm2-135m-instruct"],\n  "timeout_seconds": 60\n}'
)
HTML_LIST = "<ul>\n  <li>Apples</li>\n  <li>Bananas</li>\n  <li>Cherries</li>\n  <li>Dates</li>\n</ul>"

# name -> (class, user message)
PROMPT_TEXTS: dict[str, tuple[str, str]] = {
    "summarize": (COPY, f"Summarize this paragraph in two sentences:\n\n{PARAGRAPH}"),
    "spelling": (COPY, f"Correct the spelling in this text and return it: {PARAGRAPH.replace('the', 'teh')}"),
    "json-edit": (COPY, "Change the port to 8080 in this JSON config and return the whole config:\n\n"
                        f"```json\n{JSON_CONFIG}\n```"),
    "html-edit": (COPY, "Add a fifth item, Elderberries, to this HTML list. Return the complete list.\n\n"
                        f"```html\n{HTML_LIST}\n```"),
    "story": (OPEN, "Write a short story about a robot who learns to paint."),
    "tips": (OPEN, "Give three tips for staying focused while studying."),
}


@dataclass(frozen=True)
class SpecPrompt:
    name: str
    kind: str  # COPY | OPEN
    text: str  # the user message
    token_ids: tuple[int, ...]  # chat-templated, generation prompt added


def of_kind(prompts: list[SpecPrompt], kind: str) -> list[SpecPrompt]:
    return [p for p in prompts if p.kind == kind]


def build_spec_prompts(model_dir: Path) -> list[SpecPrompt]:
    """Every prompt as token ids through the model's own chat template (as bench/workload.py does)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    out: list[SpecPrompt] = []
    for name, (kind, text) in PROMPT_TEXTS.items():
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        out.append(SpecPrompt(name, kind, text, tuple(int(i) for i in ids)))
    return out
