"""Held-out evaluation: response-token loss (what MeZO minimises) and greedy exact match (what users see).

Loss alone can improve while answers stay wrong, and exact match alone is too coarse to see early
progress; reporting both shows whether federated training helps. Everything runs in eval() mode under
`torch.inference_mode()`, so evaluation never keeps autograd state and fits wherever training fits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedTokenizerBase

from fedmezo.data.records import Example
from fedmezo.data.tokenize import collate, encode_example, end_of_turn_id, pad_token_id, prompt_ids
from fedmezo.zo.objective import causal_lm_loss

__all__ = ["EvalResult", "evaluate", "exact_match", "generate_answers", "normalize_answer"]


@dataclass(frozen=True)
class EvalResult:
    """`loss`: token-weighted mean CE over response tokens; `exact_match`: share of answers right (NaN
    when generation was skipped with max_new_tokens=0)."""

    loss: float
    exact_match: float
    num_examples: int


def normalize_answer(text: str) -> str:
    """Forgive what does not change an answer: surrounding whitespace, one trailing period, letter case."""
    text = text.strip()
    if text.endswith("."):
        text = text[:-1].rstrip()
    return text.casefold()


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batches(items: Sequence[Example], batch_size: int) -> list[Sequence[Example]]:
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


def _stop_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = [end_of_turn_id(tokenizer)]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def generate_answers(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int = 8,
    max_length: int = 256,
    max_new_tokens: int = 16,
    progress: bool = True,
) -> list[str]:
    """Greedy answers, decoded from the new tokens up to the first end-of-turn/EOS token.

    Prompts keep their last `max_length` tokens and are left-padded, so every row's answer starts
    right after its own prompt.
    """
    stop_ids = _stop_ids(tokenizer)
    pad_id = pad_token_id(tokenizer)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids, pad_token_id=pad_id
    )
    device = _device(model)
    answers: list[str] = []
    for chunk in tqdm(_batches(examples, batch_size), desc="generate", disable=not progress or None):
        prompts = [prompt_ids(tokenizer, ex)[-max_length:] for ex in chunk]
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.int64)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.int64)
        for row, p in enumerate(prompts):  # left padding
            input_ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.int64)
            attention_mask[row, width - len(p) :] = 1
        output = model.generate(  # type: ignore[operator]  # nn.Module: mypy cannot see generate()
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config
        )
        for new_tokens in output[:, width:].tolist():
            end = next((i for i, t in enumerate(new_tokens) if t in stop_ids), len(new_tokens))
            text = tokenizer.decode(new_tokens[:end], skip_special_tokens=True)
            assert isinstance(text, str)  # one sequence in, one string out
            answers.append(text)
    return answers


def evaluate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int = 8,
    max_length: int = 256,
    max_new_tokens: int = 16,
    limit: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """Loss and exact match on the first `limit` examples (all when None), in eval() mode.

    The loss is the token-weighted mean over all response tokens (each batch's `causal_lm_loss` times its
    token count), so it does not depend on how examples fall into batches.
    """
    examples = examples[:limit] if limit is not None else examples
    if not examples:
        raise ValueError("nothing to evaluate: no examples")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            pad_id = pad_token_id(tokenizer)
            device = _device(model)
            total_loss, total_tokens = 0.0, 0
            for chunk in tqdm(_batches(examples, batch_size), desc="eval loss", disable=not progress or None):
                encoded = [encode_example(tokenizer, ex, max_length) for ex in chunk]
                batch = collate(encoded, pad_id).to(device)
                total_loss += causal_lm_loss(model, batch) * batch.num_tokens
                total_tokens += batch.num_tokens
            answers = (
                generate_answers(
                    model,
                    tokenizer,
                    examples,
                    batch_size=batch_size,
                    max_length=max_length,
                    max_new_tokens=max_new_tokens,
                    progress=progress,
                )
                if max_new_tokens > 0
                else None  # loss only: generation costs more than the loss and sweeps may not need it
            )
    finally:
        model.train(was_training)
    if answers is None:
        accuracy = math.nan
    else:
        accuracy = sum(exact_match(a, ex.output) for a, ex in zip(answers, examples, strict=True)) / len(
            examples
        )
    return EvalResult(
        loss=total_loss / total_tokens if total_tokens else math.nan,
        exact_match=accuracy,
        num_examples=len(examples),
    )
