"""Label masking, EOS, the truncation policy and the collator."""

import torch

from lora_lightning.data.tokenization import IGNORE_INDEX, CausalLMCollator, encode_pairs, fit_pair


def test_prompt_is_masked_and_completion_ends_with_trained_eos(tokenizer):
    [ex] = encode_pairs(tokenizer, ["Is the sky blue?"], ["True"], max_length=64)
    prompt_ids = tokenizer("Is the sky blue?\n")["input_ids"]
    completion_ids = tokenizer("True", add_special_tokens=False)["input_ids"]
    assert ex.input_ids == prompt_ids + completion_ids + [tokenizer.eos_token_id]
    assert ex.labels == [IGNORE_INDEX] * len(prompt_ids) + completion_ids + [tokenizer.eos_token_id]


def test_too_long_example_loses_the_start_of_its_prompt_never_the_completion():
    prompt, completion = list(range(100, 130)), [7, 8, 2]
    ex = fit_pair(prompt, completion, max_length=10)
    assert ex.input_ids == [123, 124, 125, 126, 127, 128, 129, 7, 8, 2]
    assert ex.labels[-3:] == completion and ex.labels[:7] == [IGNORE_INDEX] * 7


def test_example_whose_completion_cannot_fit_is_dropped():
    assert fit_pair([1, 2], list(range(10)), max_length=10) is None
    assert fit_pair([1, 2], list(range(9)), max_length=10).input_ids == [2] + list(range(9))
    assert fit_pair([1, 2], list(range(8)), max_length=10, min_prompt_tokens=3) is None


def test_batch_encoding_drops_only_what_does_not_fit(tokenizer):
    long_completion = "word " * 200
    out = encode_pairs(tokenizer, ["short", "short"], ["ok", long_completion], max_length=32)
    assert out[0] is not None and out[1] is None


def test_collate_pads_to_the_longest_in_batch_with_mask_and_ignored_labels(tokenizer):
    pad = tokenizer.eos_token_id  # the tiny tokenizer has no pad token: EOS doubles as pad
    batch = CausalLMCollator(pad)(
        [{"input_ids": [5, 6, 7, pad], "labels": [-100, -100, 7, pad]}, {"input_ids": [9, pad], "labels": [-100, pad]}]
    )
    assert batch["input_ids"].shape == (2, 4)
    assert batch["input_ids"][1].tolist() == [9, pad, pad, pad]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    # EOS keeps its label even though it equals the pad id; padding does not.
    assert batch["labels"].tolist() == [[-100, -100, 7, pad], [-100, pad, -100, -100]]
    assert batch["input_ids"].dtype == torch.long
