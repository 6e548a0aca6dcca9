"""A DSPy 3.4 engine that runs a local PyTorch model, optionally with a learned soft prompt before the input.

`TransformersEngine` implements DSPy's engine contract (``complete(Request) -> Response``,
``stream``, ``close``, ``dump_state`` / ``load_state``), as `LlamaCppEngine` does; pass it as
``dspy.LM(name, engine=...)`` (or build the LM with :func:`transformers_lm`). DSPy keeps the
response cache, history, usage tracking, callbacks and the ``n > 1`` fan-out.

The chat messages of a request are rendered with the model's own chat template by
:func:`prompt_text`; the soft-prompt trainer renders its training prompts with the same function,
so what is trained is what runs. A soft prompt's virtual tokens are prepended by PEFT's forward,
exactly as in training, and :func:`soft_decode` decodes from there. The LM's name carries the soft
prompt's digest, so DSPy's cache never serves one soft prompt's answer for another's.

Example:
    >>> import dspy
    >>> lm = transformers_lm("embedded", soft_prompt="runs/soft")  # doctest: +SKIP
    >>> dspy.Predict("question -> answer", lm=lm)(question="2+2?").answer  # doctest: +SKIP
    '4'
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import dspy
from dspy.clients.engines.base import validate_request
from dspy.lm15 import Message, Request, Response, TextPart, Usage, response_to_events

from dspy_icl_opt._log import logger
from dspy_icl_opt.lm.hf_models import LoadedModel, base_identity, load_model, source_kind
from dspy_icl_opt.lm.llama_messages import derive_seed, request_to_messages
from dspy_icl_opt.lm.soft_prompt import SoftPrompt

DEFAULT_MAX_TOKENS = 512
DEFAULT_SEED = 0
STATE_VERSION = 1
LM_PREFIX = "hf"
#: "soft2": answers decoded by `soft_decode`; DSPy's cache never serves one written by PEFT's generate before it.
SOFT_LM_PREFIX = "soft2"


def prompt_text(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """The chat messages as the model reads them, ending where the assistant's answer begins."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def answer_ids(tokenizer: Any, messages: Sequence[dict[str, str]], answer: str) -> tuple[list[int], list[int]]:
    """``(prompt ids, answer ids)``: the answer as the chat template writes an assistant turn, through the
    token that ends the turn (so a model learns to stop there), without what the template adds after it."""
    prompt = prompt_text(tokenizer, messages)
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False)
    if not full.startswith(prompt) or answer not in full[len(prompt):]:
        raise ValueError("The model's chat template does not write an assistant turn after the generation prompt; "
                         "its soft prompt cannot be trained on DSPy's messages. Use a chat (instruct) model.")
    after = full[len(prompt) + full[len(prompt):].index(answer) + len(answer):]
    prompt_ids = encode(tokenizer, prompt)
    tail = encode(tokenizer, after)[:1]  # the end-of-turn token
    return prompt_ids, encode(tokenizer, full[len(prompt):len(full) - len(after)]) + tail


class TransformersEngine:
    """DSPy engine answering canonical requests with a local PyTorch model and an optional soft prompt.

    Args:
        base_model: ``"embedded"``, a ``.gguf`` file or a local Hugging Face model folder.
        soft_prompt: a :class:`~dspy_icl_opt.lm.soft_prompt.SoftPrompt` or the folder one was saved in.
        seed: base sampling seed (temperature > 0); a request's own ``seed`` wins.
        n_threads: torch CPU threads to set when the model runs (default: leave torch's setting).

    Greedy decoding at temperature 0 (the default); ``max_tokens`` defaults to 512.

    Example:
        >>> engine = TransformersEngine("models/qwen", soft_prompt="runs/soft")  # doctest: +SKIP
        >>> lm = dspy.LM("soft/qwen", engine=engine, async_engine=AsyncTransformersEngine(engine))  # doctest: +SKIP
    """

    #: The completion cap of a request that sets none; the budget meter bounds a call's tokens with it.
    default_max_tokens = DEFAULT_MAX_TOKENS

    def __init__(self, base_model: str | os.PathLike[str], *, soft_prompt: SoftPrompt | str | os.PathLike[str] | None = None,
                 seed: int = DEFAULT_SEED, n_threads: int | None = None) -> None:
        source_kind(base_model)  # a ValueError now, not on the first call
        self.base_model = str(base_model)
        self.soft_prompt = soft_prompt if isinstance(soft_prompt, SoftPrompt) or soft_prompt is None \
            else SoftPrompt.load(soft_prompt)
        if self.soft_prompt is not None:
            self.soft_prompt.check_base(base_identity(base_model))
        self.seed = int(seed)
        self.n_threads = n_threads
        self._peft: Any = None
        self._calls = itertools.count()
        self._lock = threading.Lock()
        self._prompt_cache = PromptCache()  # used under the model's lock

    def __repr__(self) -> str:
        soft = f", soft_prompt={self.soft_prompt.digest}" if self.soft_prompt is not None else ""
        return f"TransformersEngine({self.base_model!r}{soft})"

    def __deepcopy__(self, memo: dict[int, Any]) -> TransformersEngine:
        return self  # a handle on a shared model: program copies share it

    def _runner(self) -> tuple[LoadedModel, Any]:
        loaded = load_model(self.base_model)
        if self.soft_prompt is None:
            return loaded, loaded.model
        with self._lock:
            if self._peft is None:
                with loaded.lock:
                    self._peft = self.soft_prompt.attach(loaded.model, loaded.identity)
        return loaded, self._peft

    def render(self, request: Request) -> str:
        """The text the model reads for ``request`` (before any virtual tokens)."""
        return prompt_text(load_model(self.base_model).tokenizer, request_to_messages(request))

    def complete(self, request: Request) -> Response:
        """Generate one answer for ``request``."""
        validate_request(request)
        import torch

        loaded, model = self._runner()
        ids = torch.tensor([_prompt_ids(loaded, request)])
        options = self._generation_options(request, loaded)
        with loaded.lock, torch.no_grad():
            if self.n_threads:
                torch.set_num_threads(self.n_threads)
            if self.soft_prompt is not None:  # PEFT's generate garbles prompt-learning models (see soft_decode)
                new = soft_decode(model, loaded.model, ids, options, stop_ids=_stop_ids(loaded),
                                  prompt_cache=self._prompt_cache)
            else:
                if options.get("do_sample"):
                    torch.manual_seed(options.pop("seed"))
                options.pop("seed", None)
                output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **options)
                new = output[0, ids.shape[1]:].tolist()
        text = loaded.tokenizer.decode(new, skip_special_tokens=True)
        text, stopped = _cut_at_stop(text, request.config.stop)
        finish = "length" if len(new) >= options["max_new_tokens"] and not stopped else "stop"
        return Response(id=None, model=request.model, message=Message.assistant((TextPart(text),)),
                        finish_reason=finish, usage=Usage(input_tokens=ids.shape[1], output_tokens=len(new),
                                                          total_tokens=ids.shape[1] + len(new)))

    def _generation_options(self, request: Request, loaded: LoadedModel) -> dict[str, Any]:
        config = request.config
        temperature = float(config.temperature or 0.0)
        options: dict[str, Any] = {
            "max_new_tokens": DEFAULT_MAX_TOKENS if config.max_tokens is None else int(config.max_tokens),
            "do_sample": temperature > 0, "pad_token_id": loaded.tokenizer.pad_token_id
            if loaded.tokenizer.pad_token_id is not None else loaded.tokenizer.eos_token_id}
        if temperature > 0:
            base = self.seed if config.seed is None else int(config.seed)
            options.update(temperature=temperature, top_p=1.0 if config.top_p is None else float(config.top_p),
                           seed=derive_seed(base, call_index=next(self._calls) if config.seed is None else 0))
        for key in (config.extensions or {}):
            logger.warning("Ignoring option {}: the transformers engine does not support it", key)
        if config.response_format:
            logger.debug("Ignoring response_format: the transformers engine writes plain text")
        return options

    def stream(self, request: Request) -> Any:
        """The stream events of one completed response (no token streaming)."""
        return response_to_events(self.complete(request))

    def close(self) -> None:
        """Nothing to release: the model is shared (see :func:`~dspy_icl_opt.lm.hf_models.unload_all`)."""

    def dump_state(self) -> dict[str, Any]:
        """The settings :meth:`load_state` rebuilds the engine from (a soft prompt by its saved folder)."""
        soft = self.soft_prompt
        if soft is not None and soft.folder is None:
            raise TypeError("This engine's soft prompt was never saved, so a program using it cannot be saved. "
                            "Save it first: engine.soft_prompt.save('folder').")
        return {"version": STATE_VERSION, "base_model": self.base_model,
                "soft_prompt": str(soft.folder) if soft is not None else None, "seed": self.seed,
                "n_threads": self.n_threads}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> TransformersEngine:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"TransformersEngine state `version` must be {STATE_VERSION}, but got "
                             f"{state.get('version')!r}. Save the program again with this version of dspy-icl-opt.")
        return cls(state["base_model"], soft_prompt=state.get("soft_prompt"), seed=state.get("seed", DEFAULT_SEED),
                   n_threads=state.get("n_threads"))


def _stop_ids(loaded: LoadedModel) -> set[int]:
    """The tokens that end an answer: the model's end-of-turn / end-of-sequence ids."""
    ids = loaded.model.generation_config.eos_token_id
    if ids is None:
        ids = loaded.tokenizer.eos_token_id
    return set(ids) if isinstance(ids, (list, tuple)) else {ids} if ids is not None else set()


class PromptCache:
    """The keys and values of the last prompt a soft-prompted model read (its virtual tokens first).

    Consecutive DSPy calls of one program share their system message (field descriptions and
    instructions), often half the prompt: :func:`soft_decode` then runs only the tokens after the
    shared start. Holds one prompt; not thread-safe (the engine uses it under the model's lock).
    """

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.cache: Any = None
        self.virtual = 0  # cache positions before the first prompt token (the soft prompt's)

    def shared(self, tokens: list[int]) -> int:
        """How many leading tokens of ``tokens`` the cache holds (always leaving one to run)."""
        if self.cache is None:
            return 0
        n = 0
        for a, b in zip(self.tokens, tokens[:-1]):
            if a != b:
                break
            n += 1
        return n


def soft_decode(peft_model: Any, base: Any, ids: Any, options: dict[str, Any], *, stop_ids: set[int],
                prompt_cache: PromptCache | None = None) -> list[int]:
    """Decode after ``ids`` with a soft prompt, token by token, with a KV cache: the new token ids.

    The prompt goes through the PEFT model's own ``forward`` (the path training takes: virtual tokens
    prepended, or the prefix as past keys and values), which returns the cache; each new token then goes
    through the base model with that cache. PEFT's ``generate`` is not used: with the transformers and
    PEFT versions this extra allows it writes garbage for prompt-tuned models (measured on the embedded
    model: "[[ ## answer. Answer the correctAnswer theAnswerAnswer..." where this loop and an uncached
    full forward per token both write "[[ ## answer ## ]] (D) 06/18/2017").
    With a ``prompt_cache`` that holds the start of this prompt, the cache is cut back to that start and
    only the rest of the prompt runs, through the base model as the new tokens do (the same computation
    in other chunks, so equal up to floating-point rounding).
    Greedy at temperature 0; otherwise sampled at ``temperature`` with nucleus ``top_p`` from ``seed``.
    """
    import torch

    limit = int(options["max_new_tokens"])
    generator = None
    if options.get("do_sample"):
        generator = torch.Generator().manual_seed(int(options["seed"]))
    tokens = ids[0].tolist()
    shared = prompt_cache.shared(tokens) if prompt_cache is not None else 0
    if shared:
        # taken out of the holder, so a call that fails below leaves no half-cut cache for the next one
        cache, prompt_cache.cache = prompt_cache.cache, None
        surplus = cache.get_seq_length() - (prompt_cache.virtual + shared)
        if surplus < 0:  # it holds less than its tokens say: run the whole prompt
            shared = 0
        elif surplus > 0:  # a negative crop removes that many tokens in every transformers version the extra allows
            cache.crop(-surplus)
    if shared:
        out = base(input_ids=ids[:, shared:], past_key_values=cache, use_cache=True)
    else:
        out = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
    cache, logits = out.past_key_values, out.logits[0, -1]
    if prompt_cache is not None:
        if not hasattr(cache, "crop"):  # a legacy tuple cache cannot be cut back: nothing is kept
            prompt_cache.cache = None
        else:
            if not shared:
                prompt_cache.virtual = cache.get_seq_length() - len(tokens)
            prompt_cache.tokens, prompt_cache.cache = tokens, cache
    new: list[int] = []
    while len(new) < limit:
        token = _next_token(logits, options, generator)
        new.append(token)
        if token in stop_ids or len(new) >= limit:
            break
        step = base(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True)
        cache, logits = step.past_key_values, step.logits[0, -1]
    return new


def _next_token(logits: Any, options: dict[str, Any], generator: Any) -> int:
    import torch

    if not options.get("do_sample"):
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / float(options["temperature"]), dim=-1)
    top_p = float(options.get("top_p", 1.0))
    if top_p < 1.0:
        ordered, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(ordered, dim=-1) - ordered < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


def _prompt_ids(loaded: LoadedModel, request: Request) -> list[int]:
    return encode(loaded.tokenizer, prompt_text(loaded.tokenizer, request_to_messages(request)))


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cuts = [text.index(stop) for stop in stops or () if stop and stop in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


class AsyncTransformersEngine:
    """Async twin of :class:`TransformersEngine` for ``dspy.LM(..., async_engine=...)`` (runs it in a thread)."""

    def __init__(self, engine: TransformersEngine) -> None:
        self.engine = engine

    def __deepcopy__(self, memo: dict[int, Any]) -> AsyncTransformersEngine:
        return self

    async def complete(self, request: Request) -> Response:
        return await asyncio.to_thread(self.engine.complete, request)

    async def stream(self, request: Request) -> AsyncIterator[Any]:
        for event in response_to_events(await self.complete(request)):
            yield event

    async def aclose(self) -> None:
        self.engine.close()

    def dump_state(self) -> dict[str, Any]:
        return self.engine.dump_state()

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> AsyncTransformersEngine:
        return cls(TransformersEngine.load_state(state))


def lm_name(base_model: str | os.PathLike[str], soft_prompt: SoftPrompt | None) -> str:
    """``hf/<model>``, or ``soft2/<model>+<method>@<digest>`` so DSPy's cache tells soft prompts apart."""
    stem = "embedded" if source_kind(base_model) == "embedded" else Path(base_model).stem or Path(base_model).name
    if soft_prompt is None:
        return f"{LM_PREFIX}/{stem}"
    return f"{SOFT_LM_PREFIX}/{stem}+{soft_prompt.method}@{soft_prompt.digest}"


def transformers_lm(base_model: str | os.PathLike[str], *, soft_prompt: SoftPrompt | str | os.PathLike[str] | None = None,
                    seed: int = DEFAULT_SEED, n_threads: int | None = None, **lm_kwargs: Any) -> dspy.LM:
    """A ``dspy.LM`` running ``base_model`` in PyTorch, with ``soft_prompt`` before every input when given.

    ``lm_kwargs`` (``temperature``, ``max_tokens``, ``cache`` ...) go to ``dspy.LM``.
    """
    engine = TransformersEngine(base_model, soft_prompt=soft_prompt, seed=seed, n_threads=n_threads)
    return dspy.LM(lm_name(base_model, engine.soft_prompt), engine=engine, async_engine=AsyncTransformersEngine(engine),
                   **lm_kwargs)
