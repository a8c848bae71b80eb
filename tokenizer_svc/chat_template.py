"""Chat templates rendered with jinja2 exactly as transformers' ``apply_chat_template`` renders them (same sandbox,
``trim_blocks``/``lstrip_blocks``, loop controls, ``{% generation %}`` blocks, ``raise_exception``, ``tojson``,
``strftime_now`` and the tokenizer's special tokens as variables), without importing transformers."""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class GenerationBlock(Extension):
    """``{% generation %}...{% endgeneration %}`` (assistant-token masks in transformers): renders its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.CallBlock:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        block = jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body)
        block.set_lineno(lineno)  # sets it in place (it also returns the block, typed as a plain Node)
        return block

    def _body(self, caller: jinja2.runtime.Macro) -> str:
        return caller()


def raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: tuple[str, str] | None = None,
           sort_keys: bool = False) -> str:
    """transformers' tojson: no HTML escaping (jinja's own filter escapes ``<``, ``>``, ``&``, ``'``)."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(format: str) -> str:  # noqa: A002 - the name templates call it with
    return datetime.now().strftime(format)


@functools.lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    """The compiled template (cached: a model's template is compiled once); jinja errors propagate."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


def render_chat(source: str, messages: list[dict[str, str]], add_generation_prompt: bool,
                special_tokens: dict[str, str | list[str]]) -> str:
    """The prompt text of messages; the special tokens (``bos_token``, ``eos_token``, ...) are template variables."""
    return compile_template(source).render(messages=messages, tools=None, documents=None,
                                           add_generation_prompt=add_generation_prompt, **special_tokens)
