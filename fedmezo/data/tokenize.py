"""Examples → token ids with the loss on the answer only, and padded batches of them.

The prompt is the user turn rendered with the tokenizer's chat template (so fine-tuning sees exactly
what the instruct model sees at inference), the response is the answer followed by the template's
end-of-turn token (so the model also learns to stop). Labels are IGNORE_INDEX on prompt and padding
tokens: the objective (`fedmezo.zo.objective.causal_lm_loss`) then averages over answer tokens only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from fedmezo.data.records import Example
from fedmezo.zo.objective import IGNORE_INDEX, Batch

__all__ = [
    "PLAIN_PROMPT_TEMPLATE",
    "EncodedExample",
    "collate",
    "encode_example",
    "end_of_turn_id",
    "pad_token_id",
    "prompt_ids",
    "truncate",
    "user_text",
]

# Used when a tokenizer has no chat template (base models): the Alpaca-style layout they know best.
PLAIN_PROMPT_TEMPLATE = "### Instruction:\n{user}\n\n### Response:\n"

_SENTINEL = "\x00fedmezo-answer\x00"  # probe text for finding what a template puts after an answer


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of prompt + response, and labels (IGNORE_INDEX on the prompt, the ids on the response)."""

    input_ids: list[int]
    labels: list[int]

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.labels):
            raise ValueError(f"input_ids ({len(self.input_ids)}) and labels ({len(self.labels)}) differ")


def user_text(example: Example) -> str:
    """The user turn: the instruction, then the input (context) after a blank line when there is one."""
    return f"{example.instruction}\n\n{example.input}" if example.input else example.instruction


def _ids(tokenizer: PreTrainedTokenizerBase, text: str, *, add_special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def prompt_ids(tokenizer: PreTrainedTokenizerBase, example: Example) -> list[int]:
    """Token ids of the prompt, ending where the model starts answering (the generation prompt)."""
    if tokenizer.chat_template is None:
        # Plain format: let the tokenizer add its usual BOS, as a base model was trained with one.
        return _ids(tokenizer, PLAIN_PROMPT_TEMPLATE.format(user=user_text(example)), add_special_tokens=True)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": user_text(example)}], add_generation_prompt=True, tokenize=False
    )
    assert isinstance(text, str)
    # The template writes its own special tokens (BOS, role markers); adding them again would double them.
    return _ids(tokenizer, text, add_special_tokens=False)


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that ends an assistant turn: what the chat template writes after an answer
    (`<|im_end|>` for ChatML, `<|eot_id|>` for Llama 3) when that is one token, else the EOS token."""
    if tokenizer.chat_template is not None:
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": "?"}, {"role": "assistant", "content": _SENTINEL}],
                tokenize=False,
            )
        except TemplateError:  # a template that refuses this conversation shape: fall back to EOS
            text = ""
        assert isinstance(text, str)
        _, found, after = text.partition(_SENTINEL)
        after = after.strip()
        if found and after:
            ids = _ids(tokenizer, after.split()[0], add_special_tokens=False)
            if len(ids) == 1:
                return ids[0]
    if tokenizer.eos_token_id is None:
        raise ValueError(
            "tokenizer has neither a one-token end of turn in its chat template nor an EOS token"
        )
    return int(tokenizer.eos_token_id)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The padding id: the tokenizer's pad token, else EOS (padding is masked out, so any id works)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError("tokenizer has neither a pad nor an EOS token")


def truncate(prompt: list[int], response: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Cut prompt + response to at most `max_length` tokens (≥ 2), keeping both sides non-empty.

    Rule: the response keeps what the whole prompt leaves free, but never less than half the window
    (or its own length, if shorter), and is cut on the right; the prompt keeps its *tail*. The tail holds
    the question and the assistant header, which condition the answer; the head is system text or
    the start of a long context. So a long context cannot starve the answer of loss tokens, a long
    answer cannot push out the question, and at least one prompt token and one response token always
    remain (the first response token needs a prompt token to be predicted from).
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (one prompt + one response token), got {max_length}")
    if len(prompt) + len(response) <= max_length:
        return prompt, response
    keep_response = min(len(response), max(max_length - len(prompt), max_length // 2))
    keep_prompt = max_length - keep_response
    return prompt[len(prompt) - keep_prompt :], response[:keep_response]


def encode_example(tokenizer: PreTrainedTokenizerBase, example: Example, max_length: int) -> EncodedExample:
    """Prompt (chat template, or the plain format) + answer + end-of-turn, truncated by `truncate`."""
    prompt = prompt_ids(tokenizer, example)
    response = [*_ids(tokenizer, example.output, add_special_tokens=False), end_of_turn_id(tokenizer)]
    prompt, response = truncate(prompt, response, max_length)
    return EncodedExample(input_ids=prompt + response, labels=[IGNORE_INDEX] * len(prompt) + response)


def collate(encoded: Sequence[EncodedExample], pad_id: int) -> Batch:
    """Right-pad to the longest example: attention_mask 0 and labels IGNORE_INDEX on padding."""
    if not encoded:
        raise ValueError("cannot collate an empty list of examples")
    seq_len = max(len(ex.input_ids) for ex in encoded)
    input_ids = torch.full((len(encoded), seq_len), pad_id, dtype=torch.int64)
    attention_mask = torch.zeros((len(encoded), seq_len), dtype=torch.int64)
    labels = torch.full((len(encoded), seq_len), IGNORE_INDEX, dtype=torch.int64)
    for row, ex in enumerate(encoded):
        n = len(ex.input_ids)
        input_ids[row, :n] = torch.tensor(ex.input_ids, dtype=torch.int64)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(ex.labels, dtype=torch.int64)
    return Batch(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
