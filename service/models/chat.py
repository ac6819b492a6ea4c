"""Chat templates: how ``/v1/chat/completions`` turns a conversation into the prompt a decoder
continues.

A model folder (or its version folder) with a Hugging Face ``tokenizer_config.json`` whose
``chat_template`` is set uses that template, rendered as transformers renders it: a Jinja
:class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` (templates can read the messages, never
reach Python objects' internals or change them) with ``trim_blocks``/``lstrip_blocks``, the
``raise_exception`` function, and ``bos_token``/``eos_token`` from the same file. Every other
folder (the zoo's decoders, models trained here) uses :data:`DEFAULT_TEMPLATE`, one line per
message, ``role: content``, then ``assistant:`` for the model to continue::

    system: You are terse.
    user: What is DyT?
    assistant:

It takes the roles system, developer, user and assistant; any other role is refused (400). A
template that raises (``raise_exception``, a bad role order, ...) refuses the conversation with its
own message.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import BadRequest

log = logging.getLogger("dyt_deploy.service")

CONFIG_NAME = "tokenizer_config.json"
DEFAULT_ROLES = ("system", "developer", "user", "assistant")
DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'developer', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' ~ message['role'] ~ ': this model takes system, developer, user and "
    "assistant messages') }}"
    "{% endif %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


class TemplateRefused(BadRequest):
    """The chat template refused the conversation (400, naming ``messages``)."""

    param = "messages"


class ChatTemplate:
    """A compiled chat template; :meth:`render` gives the prompt of a conversation."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", origin: str = "default") -> None:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = raise_exception
        environment.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False,
                                                                              indent=indent)
        self.template = environment.from_string(source)
        self.bos_token, self.eos_token, self.origin = bos_token, eos_token, origin

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt of ``messages`` (``{"role", "content"}`` dicts, content text); a template error
        is a :class:`TemplateRefused`."""
        from jinja2 import TemplateError

        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateError as err:  # SecurityError is one too
            raise TemplateRefused(f"the chat template ({self.origin}) refused these messages: {err}") from None


def token_text(value: Any) -> str:
    """A special token as tokenizer_config.json writes it: a string, or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def template_source(config: dict[str, Any]) -> str | None:
    """The ``chat_template`` of a tokenizer_config.json: a string, or a list of named templates
    (the one named ``default``)."""
    found = config.get("chat_template")
    if isinstance(found, list):
        named = {t.get("name"): t.get("template") for t in found if isinstance(t, dict)}
        found = named.get("default")
    return found if isinstance(found, str) and found.strip() else None


@lru_cache(maxsize=64)
def _for_config(path: str, modified_ns: int) -> ChatTemplate | None:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        log.warning("%s is unreadable (%s): the default chat template is used", Path(path).name, err)
        return None
    source = template_source(config) if isinstance(config, dict) else None
    if source is None:
        return None
    from jinja2 import TemplateError

    try:
        return ChatTemplate(source, token_text(config.get("bos_token")), token_text(config.get("eos_token")),
                            origin=CONFIG_NAME)
    except TemplateError as err:
        log.warning("the chat template of %s does not compile (%s): the default is used", path, err)
        return None


@lru_cache(maxsize=1)
def default_template() -> ChatTemplate:
    return ChatTemplate(DEFAULT_TEMPLATE)


def chat_template_for(folders: list[Path]) -> ChatTemplate:
    """The chat template of the first of ``folders`` (a version folder, then its model folder) whose
    tokenizer_config.json has one; else :data:`DEFAULT_TEMPLATE`. Read again when the file changes."""
    for folder in folders:
        config = folder / CONFIG_NAME
        try:
            modified = config.stat().st_mtime_ns
        except OSError:
            continue
        found = _for_config(str(config), modified)
        if found is not None:
            return found
    return default_template()
