"""Every backend adds exactly the reference's bits: odd sizes, many seeds, subnormals, signed zeros."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmezo.zo.backend import (
    WARM_UP_ELEMENTS,
    available_backends,
    compute_copy_backend,
    get_backend,
    warm_up,
)
from fedmezo.zo.cpu_kernel import CHUNK_BLOCKS
from fedmezo.zo.params import TrainableParams
from fedmezo.zo.triton_kernel import triton_philox_blocks

CPU_BACKENDS = [name for name in ("numba", "triton") if name in available_backends("cpu")]


class Shapes(torch.nn.Module):
    """Tensors that hit every edge: < 1 block, exact blocks, partial blocks, > one work chunk."""

    def __init__(self, sizes: list[int]):
        super().__init__()
        for i, n in enumerate(sizes):
            self.register_parameter(f"p{i:02d}", torch.nn.Parameter(torch.empty(n)))


def make_params(sizes: list[int], seed: int = 0, device: str = "cpu") -> TrainableParams:
    module = Shapes(sizes).to(device)
    params = TrainableParams.from_model(module)
    gen = torch.Generator().manual_seed(seed)
    params.flat.copy_(torch.randn(params.numel, generator=gen).to(device))
    return params


SIZES = [1, 5, 127, 128, 129, 256, 1000, 128 * CHUNK_BLOCKS + 77, 3 * 128 * CHUNK_BLOCKS]
SEEDS = [0, 1, 2**63 + 11, 2**64 - 1, 0x0123456789ABCDEF]
VALUES = [1e-3, -2.5e-4, 3.3e-7, -1.0, 7.0]


def reference_result(sizes: list[int], seeds: list[int], values: list[float]) -> torch.Tensor:
    params = make_params(sizes)
    get_backend("cpu", "reference").apply(params, seeds, values)
    return params.flat.clone()


def test_reference_adds_plus_minus_v():
    params = make_params([300])
    before = params.flat.clone()
    get_backend("cpu", "reference").apply(params, [3], [0.5])
    delta = params.flat.double() - before.double()
    assert torch.allclose(delta.abs(), torch.full_like(delta, 0.5), atol=1e-6)


@pytest.mark.parametrize("name", CPU_BACKENDS)
@pytest.mark.parametrize("n_seeds", [1, 2, 5])
def test_cpu_backends_bit_identical_to_reference(name, n_seeds):
    expected = reference_result(SIZES, SEEDS[:n_seeds], VALUES[:n_seeds])
    params = make_params(SIZES)
    get_backend("cpu", name).apply(params, SEEDS[:n_seeds], VALUES[:n_seeds])
    assert torch.equal(params.flat.view(torch.int32), expected.view(torch.int32))


@pytest.mark.parametrize("name", ["reference", *CPU_BACKENDS])
def test_subnormals_are_not_flushed_and_signed_zero_kept(name):
    params = make_params([256])
    tiny = float(np.float32(1e-41))  # subnormal in fp32
    params.flat.fill_(0.0)
    get_backend("cpu", name).apply(params, [77], [tiny])
    values = params.flat.abs().unique()
    assert values.tolist() == [pytest.approx(tiny, rel=0, abs=0)]
    assert float(values[0]) != 0.0


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_seed_order_matters_and_equals_sequential(name):
    """Applying [(a, x), (b, y)] fused equals applying (a, x) then (b, y): one add per pair, in order."""
    fused = make_params([1000, 333])
    get_backend("cpu", name).apply(fused, [5, 9], [1e-3, 3e-3])
    sequential = make_params([1000, 333])
    backend = get_backend("cpu", name)
    backend.apply(sequential, [5], [1e-3])
    backend.apply(sequential, [9], [3e-3])
    assert torch.equal(fused.flat, sequential.flat)


@pytest.mark.parametrize("name", ["reference", *CPU_BACKENDS])
def test_rejects_bad_input_without_touching_weights(name):
    params = make_params([300])
    before = params.flat.clone()
    backend = get_backend("cpu", name)
    for seeds, values in [([1], [float("nan")]), ([1], [float("inf")]), ([-1], [1.0]), ([1, 2], [1.0])]:
        with pytest.raises(ValueError):
            backend.apply(params, seeds, values)
    assert torch.equal(params.flat, before)


@pytest.mark.parametrize("name", ["reference", *CPU_BACKENDS])
def test_derive_copy_rounds_theta_plus_sum_vz_and_leaves_theta(name):
    """The compute-copy operation of every backend: fused (Triton) or on a scratch θ, the same bits."""
    sizes = [5, 129, 1000]
    params = make_params(sizes)
    theta = params.flat.clone()
    copy = torch.zeros(params.numel, dtype=torch.bfloat16)
    get_backend("cpu", name).derive_copy(params, copy, SEEDS[:2], VALUES[:2])
    assert torch.equal(params.flat.view(torch.int32), theta.view(torch.int32))
    assert torch.equal(copy, reference_result(sizes, SEEDS[:2], VALUES[:2]).to(torch.bfloat16))
    with pytest.raises(ValueError, match="bf16"):
        get_backend("cpu", name).derive_copy(params, copy.float(), SEEDS[:1], VALUES[:1])


def test_compute_copy_backend_prefers_the_fused_copy_write(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    expected = "triton" if "triton" in available_backends("cpu") else "numba"
    assert compute_copy_backend("cpu").name == expected
    monkeypatch.delenv("TRITON_INTERPRET")
    assert compute_copy_backend("cpu").name == "numba"


class Recording:
    """A backend that records what warm_up asks of it."""

    name = "recording"
    seed_batch = None

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def apply(self, params, seeds, values):
        self.calls.append(("apply", params.numel))

    def derive_copy(self, params, copy, seeds, values):
        self.calls.append(("derive_copy", params.numel))

    def chunk_digests(self, flat):
        self.calls.append(("chunk_digests", flat.numel()))
        return np.zeros((1, 4), dtype=np.uint32)


def test_warm_up_runs_the_delta_and_fingerprint_kernels_on_scratch():
    recording = Recording()
    warm_up("cpu", recording)
    assert recording.calls == [("apply", WARM_UP_ELEMENTS), ("chunk_digests", WARM_UP_ELEMENTS)]
    for name in ["reference", *CPU_BACKENDS]:
        warm_up("cpu", get_backend("cpu", name))
    warm_up("cpu")  # the device's default backend (numba)


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="Triton interpreter unavailable")
def test_triton_philox_high_counter_word():
    from fedmezo.zo.rng import direction_words

    blocks = [0, 5, 2**32 - 1, 2**32, 2**32 + 5, 2**40 + 3]
    got = triton_philox_blocks(0xFEEDFACECAFEBEEF, 17, blocks, "cpu")
    for i, b in enumerate(blocks):
        assert np.array_equal(got[i], direction_words(0xFEEDFACECAFEBEEF, 17, b, 1)[0])


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown backend"):
        get_backend("cpu", "fortran")


@pytest.mark.gpu
def test_cuda_triton_bit_identical_to_numba():
    sizes = [*SIZES, 5_000_003]
    expected = make_params(sizes)
    get_backend("cpu", "numba").apply(expected, SEEDS, VALUES)
    params = make_params(sizes, device="cuda")
    get_backend("cuda").apply(params, SEEDS, VALUES)
    assert torch.equal(params.flat.cpu().view(torch.int32), expected.flat.view(torch.int32))
    tiny = float(np.float32(1e-41))
    params.flat.zero_()
    get_backend("cuda").apply(params, [77], [tiny])
    assert float(params.flat.abs().min()) == tiny  # no flush-to-zero on the GPU either
    blocks = [0, 2**32 + 5]
    from fedmezo.zo.rng import direction_words

    got = triton_philox_blocks(42, 3, blocks, "cuda")
    assert np.array_equal(got[1], direction_words(42, 3, 2**32 + 5, 1)[0])


TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.skipif("triton" not in available_backends(TRITON_DEVICE), reason="no Triton here")
@pytest.mark.parametrize("tile_blocks", [4, 32])
def test_triton_tile_size_does_not_change_bits(tile_blocks):
    from fedmezo.zo.triton_kernel import TritonBackend

    sizes = [5, 129, 128 * 40 + 3]
    expected = make_params(sizes)
    get_backend("cpu", "reference").apply(expected, SEEDS[:2], VALUES[:2])
    params = make_params(sizes, device=TRITON_DEVICE)
    TritonBackend(tile_blocks=tile_blocks).apply(params, SEEDS[:2], VALUES[:2])
    assert torch.equal(params.flat.cpu(), expected.flat)
