"""fedmezo-fp-v1: identical bits on numpy, numba and Triton; every change to θ's words is seen."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmezo.models import build_random_model, tiny_random_config
from fedmezo.zo import TrainableParams, get_backend
from fedmezo.zo.backend import available_backends, fingerprint
from fedmezo.zo.fingerprint import (
    CHUNK_WORDS,
    FINGERPRINT_SPEC,
    FMIX_M1,
    FMIX_M2,
    LANE_MULTIPLIERS,
    chunk_digests_reference,
    chunk_keys,
    fingerprint_from_digests,
)
from fedmezo.zo.params import Manifest

TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HAS_TRITON = "triton" in available_backends(TRITON_DEVICE)

# Pinned values of the spec. They change only with a deliberate new spec version (fedmezo-fp-v2).
GOLDEN_WORDS_FINGERPRINT = "08caf1b5ed943319bbfe13a348eef15aaa0497c77e1565360922867e2b4fe4e7"
GOLDEN_FIRST_DIGEST = (108716266, 3318521079, 490836009, 1443798821)
# θ_0 of tiny-random (full mode, seed 0): pins fedmezo-fp-v1 together with the portable init.
TINY_RANDOM_FP_V1 = "d85e290db3630ea432e581a9cc017ecad9d0ea0c1ec800147fdb2358c33664a0"

SIZES = [1, 7, CHUNK_WORDS - 1, CHUNK_WORDS, CHUNK_WORDS + 1, 3 * CHUNK_WORDS + 777]

SPECIAL_BITS = [
    0x00000000,  # +0.0
    0x80000000,  # -0.0
    0x00000001,  # smallest subnormal
    0x807FFFFF,  # largest negative subnormal
    0x7F800000,  # +inf
    0xFF800000,  # -inf
    0x7FC00000,  # the canonical quiet NaN
    0x7FC00001,  # a quiet NaN with a payload
    0x7F800001,  # a signalling NaN
    0xFFFFFFFF,  # a negative NaN, all payload bits set
]


def golden_words() -> np.ndarray:
    """2·CHUNK_WORDS + 5 words i·2654435761 mod 2^32: no RNG, so the golden value pins only the spec."""
    n = 2 * CHUNK_WORDS + 5
    return ((np.arange(n, dtype=np.uint64) * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def buffer(numel: int, seed: int = 0) -> torch.Tensor:
    """Random fp32 bits with every special value planted, including at chunk edges."""
    gen = np.random.default_rng(seed)
    words = gen.integers(0, 2**32, size=numel, dtype=np.uint32)
    for i, bits in enumerate(SPECIAL_BITS):
        for position in (i, CHUNK_WORDS - 1 - i, CHUNK_WORDS + i, numel - 1 - i):
            if 0 <= position < numel:
                words[position] = bits
    return torch.from_numpy(words.view(np.float32).copy())


def words(flat: torch.Tensor) -> np.ndarray:
    return flat.cpu().numpy().view(np.uint32)


def fmix32_scalar(h: int) -> int:
    h ^= h >> 16
    h = (h * FMIX_M1) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * FMIX_M2) & 0xFFFFFFFF
    return h ^ (h >> 16)


def test_reference_follows_the_written_formula():
    """The numpy reference equals the module docstring's formula in plain Python integers."""
    w = [int(x) for x in golden_words()[:300]]
    keys = chunk_keys(1)
    expected = [
        sum(fmix32_scalar(x ^ ((int(keys[0, lane]) + j * a) & 0xFFFFFFFF)) for j, x in enumerate(w)) % 2**32
        for lane, a in enumerate(LANE_MULTIPLIERS)
    ]
    assert chunk_digests_reference(np.array(w, dtype=np.uint32)).tolist() == [expected]


def test_golden_value():
    w = golden_words()
    digests = chunk_digests_reference(w)
    assert tuple(int(x) for x in digests[0]) == GOLDEN_FIRST_DIGEST
    assert fingerprint_from_digests(digests, w.size) == GOLDEN_WORDS_FINGERPRINT
    assert fingerprint(torch.from_numpy(w.view(np.float32).copy())) == GOLDEN_WORDS_FINGERPRINT  # numba
    sha = hashlib.sha256(FINGERPRINT_SPEC.encode() + b"\0" + struct.pack("<QI", w.size, CHUNK_WORDS))
    sha.update(digests.astype("<u4").tobytes())  # the outer hash, spelled out
    assert sha.hexdigest() == GOLDEN_WORDS_FINGERPRINT


def test_tiny_random_golden_fingerprint():
    params = TrainableParams.from_model(build_random_model(tiny_random_config()))
    assert params.fingerprint() == TINY_RANDOM_FP_V1


@pytest.mark.parametrize("numel", SIZES)
def test_numba_bit_identical_to_reference(numel):
    flat = buffer(numel, seed=numel)
    expected = get_backend("cpu", "reference").chunk_digests(flat)
    assert np.array_equal(get_backend("cpu", "numba").chunk_digests(flat), expected)
    assert fingerprint(flat, "numba") == fingerprint(flat, "reference")


@pytest.mark.skipif(not HAS_TRITON, reason="no Triton here")
@pytest.mark.parametrize("tile", [2048, 16384])
def test_triton_bit_identical_to_reference(tile):
    """Through the interpreter on CPU (conftest): the tile split never changes the chunk sums."""
    from fedmezo.zo.triton_kernel import triton_chunk_digests

    for numel in SIZES:
        flat = buffer(numel, seed=numel)
        expected = chunk_digests_reference(words(flat))
        assert np.array_equal(triton_chunk_digests(flat.to(TRITON_DEVICE), tile=tile), expected), numel
    flat = torch.from_numpy(golden_words().view(np.float32).copy()).to(TRITON_DEVICE)
    assert fingerprint(flat, "triton") == GOLDEN_WORDS_FINGERPRINT


def test_special_values_are_hashed_as_bits():
    """-0.0 vs +0.0 and two NaN payloads compare equal or unordered as floats, but differ as words."""
    base = buffer(1000)
    for a, b in [(0x00000000, 0x80000000), (0x7FC00000, 0x7FC00001), (0x00000001, 0x00000000)]:
        x, y = base.clone(), base.clone()
        x.view(torch.int32)[500] = np.int32(np.uint32(a).view(np.int32))
        y.view(torch.int32)[500] = np.int32(np.uint32(b).view(np.int32))
        assert fingerprint(x) != fingerprint(y), (hex(a), hex(b))


FLIP_BUFFER = buffer(2 * CHUNK_WORDS + 99, seed=3)
FLIP_FINGERPRINT = fingerprint(FLIP_BUFFER)
FLIP_DIGESTS = get_backend("cpu", "numba").chunk_digests(FLIP_BUFFER)


@settings(max_examples=60, deadline=None)
@given(
    position=st.one_of(
        st.sampled_from([0, CHUNK_WORDS - 1, CHUNK_WORDS, FLIP_BUFFER.numel() - 1]),
        st.integers(0, FLIP_BUFFER.numel() - 1),
    ),
    bit=st.integers(0, 31),
)
def test_any_flipped_bit_changes_every_lane_of_its_chunk(position, bit):
    """A one-word change is caught with certainty: w ↦ fmix32(w ^ k) is a bijection per lane."""
    flipped = FLIP_BUFFER.clone()
    flipped.view(torch.int32)[position] ^= np.int32(np.uint32(1 << bit).view(np.int32))
    digests = get_backend("cpu", "numba").chunk_digests(flipped)
    chunk = position // CHUNK_WORDS
    assert np.all(digests[chunk] != FLIP_DIGESTS[chunk])
    assert np.array_equal(np.delete(digests, chunk, axis=0), np.delete(FLIP_DIGESTS, chunk, axis=0))
    assert fingerprint(flipped) != FLIP_FINGERPRINT


def test_permutations_and_lengths_change_the_fingerprint():
    flat = buffer(3 * CHUNK_WORDS, seed=5)
    chunks = flat.view(3, CHUNK_WORDS)
    swapped = chunks[[1, 0, 2]].reshape(-1).contiguous()  # two whole chunks trade places
    assert fingerprint(swapped) != fingerprint(flat)
    words_swapped = flat.clone()
    words_swapped[[10, 11]] = flat[[11, 10]]  # two words inside one chunk trade places
    assert fingerprint(words_swapped) != fingerprint(flat)
    zeros = torch.zeros(CHUNK_WORDS + 3)
    assert fingerprint(zeros) != fingerprint(torch.zeros(CHUNK_WORDS + 4))  # a trailing zero word counts
    assert fingerprint(zeros[:CHUNK_WORDS].contiguous()) != fingerprint(torch.zeros(CHUNK_WORDS - 1))


def test_chunk_keys_are_distinct_and_digests_must_fit():
    keys = chunk_keys(20_000)
    assert len({row.tobytes() for row in keys}) == 20_000
    with pytest.raises(ValueError, match="digests"):
        fingerprint_from_digests(np.zeros((1, 4), np.uint32), CHUNK_WORDS + 1)
    with pytest.raises(ValueError, match="fp32"):
        fingerprint(torch.zeros(4, dtype=torch.float64))


def test_manifest_names_the_fingerprint_spec():
    """A replica that hashes θ another way has another manifest hash, so it is refused at join."""
    manifest = Manifest(("w",), ((3,),))
    assert FINGERPRINT_SPEC in manifest.to_json()
    assert Manifest(("w",), ((3,),), fingerprint_spec="sha256").sha256() != manifest.sha256()


def test_trainable_params_fingerprint_is_fp_v1_and_sees_restores():
    model = torch.nn.Linear(300, 250)
    params = TrainableParams.from_model(model)
    assert params.fingerprint() == fingerprint(params.flat, "reference")
    snapshot, before = params.snapshot(), params.fingerprint()
    get_backend("cpu").apply(params, [9], [1e-3])
    assert params.fingerprint() != before
    params.restore(snapshot)
    assert params.fingerprint() == before


@pytest.mark.gpu
def test_cuda_fingerprint_of_a_large_buffer_matches_the_cpu():
    """135M words (smollm2-135m's size) on the GPU: Triton's digests equal numba's on the host copy."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    flat = torch.randn(134_515_008 + 77, generator=gen, device="cuda")
    flat[::1_000_003] = -0.0
    host = flat.cpu()
    assert np.array_equal(
        get_backend("cuda").chunk_digests(flat), get_backend("cpu", "numba").chunk_digests(host)
    )
    assert fingerprint(flat) == fingerprint(host)
    flat.view(torch.int32)[123_456_789] ^= 1 << 30
    assert fingerprint(flat) != fingerprint(host)


@pytest.mark.slow
def test_numba_fingerprint_is_not_slower_than_host_sha256():
    """The new fingerprint on a 135M buffer must not cost a CPU replica more than the SHA-256 it replaces."""
    import time

    words = np.random.default_rng(0).integers(0, 2**32, 134_515_008, dtype=np.uint32)
    flat = torch.from_numpy(words.view(np.float32))

    def best_of_3(fn) -> float:
        samples = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return min(samples)

    fingerprint(flat)  # compile or load the cached kernel first
    new_s = best_of_3(lambda: fingerprint(flat))
    sha_s = best_of_3(lambda: hashlib.sha256(flat.numpy().data).hexdigest())
    assert new_s <= sha_s, (new_s, sha_s)
