"""The model repository of the OpenAI tests, built once per test process (several test modules serve
it): a tiny zoo llama decoder exported for text generation (``llm-dyt``, byte vocabulary, 64
positions, the default chat template), the same folder with a Hugging Face ``tokenizer_config.json``
chat template (``llm-chat``), and a depth-1 BERT-style encoder (``bert-dyt``: its pooled output is
its 2-wide logits)."""

from __future__ import annotations

import json
import shutil
import tempfile
from functools import cache
from pathlib import Path

from dyt_deploy.checkpoint import save_checkpoint
from dyt_deploy.export import export_onnx
from dyt_deploy.models import create_model
from service.settings import Settings

TINY = {"dim": 32, "depth": 1, "heads": 2, "ffn_dim": 64, "vocab_size": 256, "max_seq_len": 64}
LIMITS = {"max_generate_tokens": 40, "max_prompt_tokens": 40, "max_generations": 2}
# ChatML-like, as Hugging Face folders carry them; it refuses any role but user and assistant
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['user', 'assistant'] %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def settings(**more: object) -> Settings:
    return Settings(threads=1, warmup_runs=1, **{**LIMITS, **more})


@cache
def openai_repository() -> Path:
    """The repository (see the module docstring), under a temporary folder removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="dyt-openai-"))
    model = create_model("llama_tiny", norm="dyt", seed=0, **TINY)
    save_checkpoint(model, root / "llm.pt")
    export_onnx(root / "llm.pt", repository=root / "repo", name="llm-dyt", family="llama_gen",
                task="text-generation", verify=False)
    shutil.copytree(root / "repo" / "llm-dyt", root / "repo" / "llm-chat")
    (root / "repo" / "llm-chat" / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": CHAT_TEMPLATE, "bos_token": "<s>", "eos_token": {"content": "</s>"}}))
    save_checkpoint(create_model("bert_tiny", norm="dyt", depth=1), root / "bert.pt")
    export_onnx(root / "bert.pt", repository=root / "repo", name="bert-dyt", verify=False)
    import atexit

    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root / "repo"


def checkpoint_of(repository: Path, name: str) -> Path:
    return repository.parent / {"llm-dyt": "llm.pt", "llm-chat": "llm.pt", "bert-dyt": "bert.pt"}[name]
