"""Full-parameter and LoRA modes: what trains, and LoRA adapters that start bit-identical everywhere."""

from __future__ import annotations

import math

import pytest
import torch

from fedmezo.models import load_model
from fedmezo.trainable import prepare_trainable
from fedmezo.zo import Batch, get_backend, make_loss_fn, mezo_step


def batch(vocab: int) -> Batch:
    ids = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(0))
    return Batch(ids, torch.ones_like(ids), ids.clone())


def test_full_mode_trains_every_weight_once():
    model = load_model("tiny-random").model
    total = sum(p.numel() for p in model.parameters())  # tied weights listed once
    _, params = prepare_trainable(model, "full")
    assert params.numel == total


def test_lora_mode_trains_only_adapters_and_starts_at_the_base_model():
    base = load_model("tiny-random").model
    b = batch(base.config.vocab_size)
    base_loss = make_loss_fn(base, b)()
    model, params = prepare_trainable(load_model("tiny-random").model, "lora", lora_rank=4, run_seed=7)
    assert params.names and all("lora_" in name for name in params.names)
    assert params.numel < sum(p.numel() for p in model.parameters()) / 10
    assert make_loss_fn(model, b)() == base_loss  # B = 0: the adapted model equals the base model
    for name, tensor in params.tensors():
        if "lora_B" in name:
            assert torch.count_nonzero(tensor) == 0
        else:
            assert torch.count_nonzero(tensor) == tensor.numel()


def test_lora_init_is_portable_and_seeded():
    def fingerprint(run_seed: int) -> str:
        return prepare_trainable(load_model("tiny-random").model, "lora", run_seed=run_seed)[1].fingerprint()

    assert fingerprint(7) == fingerprint(7)
    assert fingerprint(7) != fingerprint(8)


def test_lora_step_changes_only_adapters():
    model, params = prepare_trainable(load_model("tiny-random").model, "lora", run_seed=1)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = params.snapshot()
    loss_fn = make_loss_fn(model, batch(model.config.vocab_size))
    mezo_step(params, loss_fn, seed=3, eps=1e-2, lr=1e-2, backend=get_backend("cpu"))
    assert not torch.equal(params.flat, before)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert torch.equal(param, frozen[name])


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="unknown training mode"):
        prepare_trainable(load_model("tiny-random").model, "qlora")  # type: ignore[arg-type]


def test_lora_on_a_bf16_base_keeps_fp32_adapters_and_names_the_base_in_the_manifest():
    fp32_model, fp32_params = prepare_trainable(load_model("tiny-random").model, "lora", run_seed=3)
    loaded = load_model("tiny-random", dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    model, params = prepare_trainable(loaded.model, "lora", run_seed=3, base_dtype="bf16")
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert params.fingerprint() == fp32_params.fingerprint()  # the same adapters, portably initialised
    assert '"base":"bf16"' in params.manifest().to_json()
    assert '"base":' not in fp32_params.manifest().to_json()  # an fp32 base keeps every earlier hash
    assert params.manifest().sha256() != fp32_params.manifest().sha256()  # refused at Join if mixed
    b = batch(model.config.vocab_size)
    bf16_loss, fp32_loss = make_loss_fn(model, b)(), make_loss_fn(fp32_model, b)()
    assert bf16_loss == pytest.approx(fp32_loss, rel=2e-2) and bf16_loss != fp32_loss
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    result = mezo_step(params, make_loss_fn(model, b), seed=3, eps=1e-2, lr=1e-2, backend=get_backend("cpu"))
    assert result.projected_grad != 0.0
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)


@pytest.mark.parametrize(
    ("mode", "base", "message"), [("full", "bf16", "needs mode 'lora'"), ("lora", "int4", "unknown base")]
)
def test_bad_base_dtypes_are_rejected(mode: str, base: str, message: str):
    with pytest.raises(ValueError, match=message):
        prepare_trainable(load_model("tiny-random").model, mode, base_dtype=base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("base", "layer"), [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_lora_on_a_quantized_base_trains_fp32_adapters_only(base: str, layer: str):
    from fedmezo.trainable import base_load_options

    reference = prepare_trainable(load_model("tiny-random").model, "lora", run_seed=3)[1]
    dtype, quantize = base_load_options(base, "lora")
    loaded = load_model("tiny-random", dtype=dtype, quantize=quantize)
    model, params = prepare_trainable(loaded.model, "lora", run_seed=3, base_dtype=base)
    q_proj = model.get_submodule("base_model.model.model.layers.0.self_attn.q_proj")
    assert type(q_proj.base_layer).__name__ == layer  # 8 or 4 bits per base weight (bitsandbytes)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert params.names == reference.names and params.fingerprint() == reference.fingerprint()
    assert f'"base":"{base}"' in params.manifest().to_json()
    b = batch(model.config.vocab_size)
    make_loss_fn(model, b)()  # bitsandbytes may repack its weights at the first forward on this device
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    result = mezo_step(params, make_loss_fn(model, b), seed=3, eps=1e-2, lr=1e-2, backend=get_backend("cpu"))
    assert math.isfinite(result.loss_plus) and result.projected_grad != 0.0
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)


def test_a_quantized_base_must_be_loaded_quantized():
    with pytest.raises(ValueError, match="load the model quantized"):
        prepare_trainable(load_model("tiny-random").model, "lora", base_dtype="nf4")
