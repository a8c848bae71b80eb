"""The rules of a model spec's speculative decoding fields (the rest of the spec: protos/model_spec.py).

``speculative``: "ngram" (draft tokens from the sequence's own prompt and output), "draft" (proposed by
``draft_model``, another served model with the same tokenizer, run on its own nodes), or "off". Either way the
drafts are verified in one pass through every stage and the output is that of plain decoding.
``num_speculative_tokens``: drafts verified per step at most (each sequence adapts below it). See
coordinator/speculation.py and coordinator/draft_model.py.
"""

from __future__ import annotations

from protos.names import folder_name_problem
from protos.spec_problem import SpecProblem, int_in, one_of

ALLOWED_SPECULATIVE = ("ngram", "draft", "off")
DEFAULT_SPECULATIVE = "ngram"
DEFAULT_NUM_SPECULATIVE_TOKENS = 8
MAX_NUM_SPECULATIVE_TOKENS = 32
DEFAULT_DRAFT_MODEL = ""  # none


def check_speculative(value: object) -> str:
    return one_of("speculative", value, ALLOWED_SPECULATIVE, " (ngram: draft tokens from the sequence's own prompt "
                  "and output; draft: from draft_model)")


def check_num_speculative_tokens(value: object) -> int:
    return int_in("num_speculative_tokens", value, 1, MAX_NUM_SPECULATIVE_TOKENS, " (draft tokens per step)")


def check_draft_model(value: object) -> str:
    """The name of another served model (or "" for none)."""
    if value == "":
        return ""
    problem = folder_name_problem(value) if isinstance(value, str) else f"must be a model name, got {value!r}"
    if problem:
        raise SpecProblem("draft_model", f"{problem}; it names another served model")
    return value  # type: ignore[return-value]


def check_speculation(name: str, speculative: str, draft_model: str) -> None:
    """The fields together: a draft model exactly with speculative "draft", and not the model itself."""
    if speculative == "draft" and not draft_model:
        raise SpecProblem("draft_model", "is required with speculative \"draft\": the name of another served model "
                                         "with the same tokenizer")
    if draft_model and speculative != "draft":
        raise SpecProblem("draft_model", f"is only used with speculative \"draft\" (speculative is {speculative!r})")
    if draft_model == name:
        raise SpecProblem("draft_model", f"must name another model than {name!r} itself")
