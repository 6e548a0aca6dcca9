"""A tiny randomly initialised chat model saved as a local Hugging Face folder, for soft-prompt tests.

Two Qwen2 layers of width 32 over a character-level vocabulary (printable ASCII, newline and the
ChatML special tokens), with a ChatML chat template; the tokenizer is built in memory with the
``tokenizers`` library. It trains and generates in milliseconds on a CPU and needs nothing from
the network. Needs the ``soft`` extra (torch, transformers).

Example:
    >>> folder = tiny_chat_model("/tmp/tiny-model")  # doctest: +SKIP
    >>> from dspy_icl_opt.lm.transformers_engine import transformers_lm
    >>> lm = transformers_lm(folder, max_tokens=16, cache=False)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
#: ChatML, as Qwen's chat models write it (the embedded model's template has the same shape).
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
#: Width, depth and heads: the smallest Qwen2 with attention across positions and two layers; weights drawn wide
#: (initializer_range) so that its output depends on its input, as a trained model's does.
TINY_SIZES = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 4096, "initializer_range": 0.4}


def tiny_tokenizer() -> object:
    """A character-level tokenizer with ChatML special tokens and chat template (built in memory)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    characters = [chr(code) for code in range(32, 127)] + ["\n"]
    vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS, *characters])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS[0]))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        additional_special_tokens=list(SPECIAL_TOKENS))
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_chat_model(folder: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Build the tiny model with ``seed`` and save it with its tokenizer in ``folder``; returns the folder."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = tiny_tokenizer()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = Qwen2Config(vocab_size=len(tokenizer), tie_word_embeddings=True, eos_token_id=end, bos_token_id=None,
                         pad_token_id=tokenizer.pad_token_id, **TINY_SIZES)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    target = Path(folder)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
