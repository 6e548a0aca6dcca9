"""Soft-prompt training in PyTorch: the examples as DSPy renders them, the PEFT model, epochs and checkpoints.

Each training example becomes the messages DSPy's adapter writes for the predictor's signature,
demos and inputs (``adapter.format_finetune_data``, the adapter the scorer runs with), rendered by
the model's chat template (:func:`~dspy_icl_opt.lm.transformers_engine.answer_ids`), followed by
the gold answer as the adapter writes an assistant turn. The loss is the mean negative
log-likelihood of the answer's tokens (through the end-of-turn token); only the soft prompt learns.

One epoch visits the training examples in an order drawn from the seed and the epoch number, so a
resumed run trains exactly as an uninterrupted one: the trainable tensors, the optimizer's state
and the per-epoch records are checkpointed after every epoch.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dspy

from dspy_icl_opt._log import logger
from dspy_icl_opt.lm.hf_models import LoadedModel
from dspy_icl_opt.lm.soft_prompt import SoftPrompt, peft_config
from dspy_icl_opt.lm.transformers_engine import answer_ids, encode
from dspy_icl_opt.search.base import stable_int

#: Label of a token that takes no part in the loss (PyTorch's cross-entropy ignore index).
IGNORE = -100
CHECKPOINT_DIR = "soft_checkpoints"


@dataclass(frozen=True)
class Item:
    """One training example as token ids: the rendered prompt and the answer to learn."""

    prompt: list[int]
    answer: list[int]

    @property
    def tokens(self) -> int:
        return len(self.prompt) + len(self.answer)


@dataclass
class EpochRecord:
    """What one epoch did (``val`` is filled in when the epoch's soft prompt is validated)."""

    epoch: int
    loss: float
    examples: int
    forward_passes: int
    backward_passes: int
    tokens: int
    optimizer_steps: int
    seconds: float
    digest: str = ""
    val: float | None = None


def example_messages(predictor: dspy.Predict, example: dspy.Example, adapter: Any) -> list[dict[str, str]]:
    """The chat messages of one example, the gold answer last (as an assistant message)."""
    signature = predictor.signature
    inputs = {name: example[name] for name in signature.input_fields if name in example}
    outputs = {name: example[name] for name in signature.output_fields if name in example}
    data = adapter.format_finetune_data(signature=signature, demos=list(predictor.demos), inputs=inputs,
                                        outputs=outputs)
    return [{"role": m["role"], "content": m["content"]} for m in data["messages"]]


def build_items(predictor: dspy.Predict, examples: list[dspy.Example], adapter: Any, tokenizer: Any,
                max_tokens: int) -> tuple[list[Item], int]:
    """The examples as :class:`Item` s, and how many were left out for being longer than ``max_tokens``."""
    items, skipped = [], 0
    for example in examples:
        messages = example_messages(predictor, example, adapter)
        prompt, answer = answer_ids(tokenizer, messages[:-1], messages[-1]["content"])
        if len(prompt) + len(answer) > max_tokens:
            skipped += 1
            continue
        items.append(Item(prompt, answer))
    return items, skipped


class SoftPromptTrainer:
    """A PEFT prompt-learning model over a shared base, its optimizer, and one method per epoch.

    Args:
        loaded: the base model and tokenizer.
        method, num_virtual_tokens, learning_rate, batch_size, seed: the tuner's settings.
        init_text: text whose token embeddings start a ``prompt_tuning`` soft prompt (the instruction);
            PEFT's random start is far from the scale of real token embeddings.
    """

    def __init__(self, loaded: LoadedModel, *, method: str, num_virtual_tokens: int, learning_rate: float,
                 batch_size: int, seed: int, init_text: str, settings: dict[str, Any]) -> None:
        import torch
        from peft import get_peft_model

        self.loaded = loaded
        self.method = method
        self.num_virtual_tokens = num_virtual_tokens
        self.batch_size = batch_size
        self.seed = seed
        self.settings = settings
        with loaded.lock, torch.random.fork_rng():
            torch.manual_seed(seed)
            self.model = get_peft_model(loaded.model, peft_config(method, num_virtual_tokens, inference_mode=False))
            if method == "prompt_tuning" and init_text.strip():
                self._init_from_text(init_text)
        self.model.eval()  # no dropout: the same seed trains the same soft prompt
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=learning_rate, weight_decay=0.0)

    def _init_from_text(self, text: str) -> None:
        import torch

        ids = encode(self.loaded.tokenizer, text) or [0]
        ids = (ids * (self.num_virtual_tokens // len(ids) + 1))[: self.num_virtual_tokens]
        embeddings = self.loaded.model.get_input_embeddings().weight[torch.tensor(ids)]
        self.model.prompt_encoder["default"].embedding.weight.data.copy_(embeddings.detach())

    def epoch(self, items: list[Item], epoch: int) -> EpochRecord:
        """Train one epoch on ``items`` (order from the seed and ``epoch``) and return its record."""
        started = time.perf_counter()
        order = list(range(len(items)))
        random.Random(stable_int(self.seed, "soft-epoch", epoch)).shuffle(order)
        losses, tokens, steps = [], 0, 0
        for first in range(0, len(order), self.batch_size):
            batch = [items[i] for i in order[first:first + self.batch_size]]
            with self.loaded.lock:
                self.optimizer.zero_grad()
                for item in batch:
                    loss = self._loss(item)
                    (loss / len(batch)).backward()
                    losses.append(float(loss.detach()))
                    tokens += item.tokens + self.num_virtual_tokens
                self.optimizer.step()
            steps += 1
        mean = sum(losses) / len(losses) if losses else float("nan")
        logger.info("Soft prompt epoch {}: mean answer loss {:.4f} over {} examples", epoch, mean, len(losses))
        return EpochRecord(epoch, mean, len(losses), len(losses), len(losses), tokens, steps,
                           round(time.perf_counter() - started, 3))

    def _loss(self, item: Item) -> Any:
        import torch

        ids = torch.tensor([item.prompt + item.answer])
        labels = torch.tensor([[IGNORE] * len(item.prompt) + item.answer])
        return self.model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss

    def soft_prompt(self) -> SoftPrompt:
        """The soft prompt as it is now (PEFT's saved form: p-tuning's encoder output, not the encoder)."""
        from peft import get_peft_model_state_dict

        with self.loaded.lock:
            tensors = {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()}
        return SoftPrompt(self.method, self.num_virtual_tokens, tensors, dict(self.loaded.identity), dict(self.settings))

    # ------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, folder: Path, epoch: int, records: list[EpochRecord], run_key: str) -> None:
        """Keep what a resume needs after ``epoch``: trainable tensors, optimizer state, the epoch records."""
        import torch

        folder.mkdir(parents=True, exist_ok=True)
        state = {"run": run_key, "epoch": epoch, "records": [asdict(r) for r in records],
                 "params": [p.detach().clone() for p in self.params], "optimizer": self.optimizer.state_dict()}
        partial = folder / f".epoch-{epoch:03d}.pt.partial"
        torch.save(state, partial)
        partial.replace(folder / f"epoch-{epoch:03d}.pt")

    def load_checkpoint(self, folder: Path, run_key: str, epochs: int) -> list[EpochRecord]:
        """Restore the latest checkpoint of this run (at most ``epochs``); the records of its epochs, or []."""
        import torch

        for path in sorted(folder.glob("epoch-*.pt"), reverse=True):
            state = torch.load(path, weights_only=True)
            if state.get("run") != run_key or int(state["epoch"]) > epochs:
                continue
            with torch.no_grad():
                for param, saved in zip(self.params, state["params"]):
                    param.copy_(saved)
            self.optimizer.load_state_dict(state["optimizer"])
            logger.info("Soft prompt: resuming after epoch {} from {}", state["epoch"], path)
            return [EpochRecord(**record) for record in state["records"]]
        return []
