"""The test vectors of docs/protocol.md, computed by fedmezo's own code.

`compute_vectors()` returns every vector block of the document, keyed by its name; the document's
blocks were pasted from `python tests/protocol/reference_vectors.py` once, and
test_protocol_vectors.py recomputes them here and compares. Entries whose key ends in `_approx` are
float results of forward passes (their last bits depend on the machine's matmul kernels): they are
compared with a tolerance, everything else exactly.
"""

from __future__ import annotations

import copy
import hashlib
import json
import struct
import sys
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
import torch

from fedmezo.data import Example, encode_example, end_of_turn_id, pad_token_id, step_indices
from fedmezo.data.loader import BATCH_KEY_DOMAIN, ClientDataset
from fedmezo.fl import vocabulary
from fedmezo.fl.aggregation import aggregate
from fedmezo.fl.records import TaskRecord, UpdateRecord
from fedmezo.fl.seeds import PER_CLIENT, SHARED, SeedPlan
from fedmezo.models.builtin import INIT_SEED_LABEL, build_tiny_random
from fedmezo.trainable import prepare_trainable
from fedmezo.v1 import common_pb2
from fedmezo.zo import (
    RoundDelta,
    TrainableParams,
    derive_seed,
    derive_shared_seed,
    get_backend,
    make_loss_fn,
    mezo_step,
    rademacher,
)
from fedmezo.zo.fingerprint import (
    CHUNK_WORDS,
    FINGERPRINT_KEY,
    chunk_digests_reference,
    chunk_keys,
    fingerprint_from_digests,
)
from fedmezo.zo.layout import FlatBuffer, segments_of
from fedmezo.zo.philox import philox4x32
from fedmezo.zo.rng import DOMAIN_DIRECTION, DOMAIN_INIT, direction_words
from fedmezo.zo.rounding import rounding_bits, sr_apply_bf16, sr_sum_bf16
from fedmezo.zo.values import to_fp32

__all__ = ["APPROX_TOLERANCE", "compute_vectors", "f32_hex", "tiny_random_params"]

APPROX_TOLERANCE = {"loss": 1e-4, "projected_grad": 5e-2}  # absolute, by the key's prefix


def f32_hex(value: float) -> str:
    """The IEEE binary32 bits of `value` (already an fp32 value), as 8 hex digits."""
    return struct.pack(">f", value).hex()


def _h32(word: int) -> str:
    return f"{int(word):08x}"


@cache
def _tiny_random() -> tuple[Any, Any]:
    return build_tiny_random()


def tiny_random_params() -> tuple[torch.nn.Module, TrainableParams, Any]:
    """A fresh tiny-random θ_0 in full mode (model, its flat parameters, tokenizer)."""
    model, tokenizer = _tiny_random()
    model, params = prepare_trainable(copy.deepcopy(model), "full")
    return model, params, tokenizer


def _derive_seed_vectors() -> list[dict[str, Any]]:
    cases = [(0, 0, "client-1", 0), (2**64 - 1, 5, "é", 19), (42, 1, "outsider", 0), (42, 1, "outsider", 1)]
    out = []
    for run_seed, round_id, client, step in cases:
        encoded = client.encode()
        message = struct.pack("<QQQI", run_seed, round_id, step, len(encoded)) + encoded
        seed = derive_seed(run_seed, round_id, client, step)
        out.append(
            {
                "run_seed": run_seed,
                "round": round_id,
                "client_id": client,
                "step": step,
                "message_hex": message.hex(),
                "seed": seed,
                "seed_hex": f"{seed:016x}",
            }
        )
    return out


def _shared_seed_vectors() -> list[dict[str, Any]]:
    cases = [(0, 1, 0, 0), (42, 1, 0, 1), (2**64 - 1, 7, 3, 2)]
    return [
        {"run_seed": r, "round": n, "step": t, "perturbation": p, "seed": derive_shared_seed(r, n, t, p)}
        for r, n, t, p in cases
    ]


def _philox_vectors() -> list[dict[str, Any]]:
    cases = [
        ((0, 0, 0, 0), (0, 0)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)),
    ]
    out = []
    for counter, key in cases:
        words = philox4x32(tuple(np.array([c], dtype=np.uint32) for c in counter), key)  # type: ignore[arg-type]
        out.append(
            {
                "counter": [_h32(c) for c in counter],
                "key": [_h32(k) for k in key],
                "output": [_h32(w[0]) for w in words],
            }
        )
    return out


def _rng_block_vectors() -> list[dict[str, Any]]:
    cases = [
        (0, 0, DOMAIN_DIRECTION, 0),
        (0x0123456789ABCDEF, 3, DOMAIN_DIRECTION, 1),
        (12517903811774076336, 37, DOMAIN_DIRECTION, 2**32 + 5),
        (7, 1, DOMAIN_INIT, 0),
    ]
    return [
        {
            "seed": seed,
            "tensor_id": t,
            "domain": domain,
            "block": block,
            "words": [_h32(w) for w in direction_words(seed, t, block, 1, domain)[0]],
        }
        for seed, t, domain, block in cases
    ]


def _rng_sign_vectors() -> list[dict[str, Any]]:
    cases = [(0, 0, 1000), (42, 7, 4099), (0x0123456789ABCDEF, 0, 1), (12517903811774076336, 2, 200)]
    out = []
    for seed, t, numel in cases:
        z = rademacher(seed, t, numel).numpy()
        out.append(
            {
                "seed": seed,
                "tensor_id": t,
                "numel": numel,
                "first_signs": "".join("+" if v > 0 else "-" for v in z[:32]),
                "sha256_int8": hashlib.sha256(z.tobytes()).hexdigest(),
            }
        )
    return out


def _bits(words: list[int]) -> np.ndarray:
    return np.array(words, dtype=np.uint32).view(np.float32)


APPLY_CASES = [  # (tensor sizes, initial fp32 bits, [(seed, fp32 value)])
    (  # ordinary values in two tensors (ids 0 and 1), three pairs added one after the other
        [5, 3],
        [0x3F800000, 0x80000000, 0x00000000, 0x00000001, 0xC0200000, 0x4B800000, 0x3A83126F, 0xC0E00000],
        [(5, to_fp32(0.1)), (5, to_fp32(-0.25)), (2**64 - 1, to_fp32(1e-8))],
    ),
    (  # a zero coefficient is still an add: −0.0 + (+0.0) = +0.0, −0.0 + (−0.0) = −0.0
        [8],
        [0x80000000] * 4 + [0x00000000] * 4,
        [(4, 0.0)],
    ),
    (  # subnormal operands and results are kept (no flush to zero)
        [8],
        [0x00000001, 0x80000001, 0x00000000, 0x80000000, 0x00800000, 0x80800000, 0x007FFFFF, 0x3F800000],
        [(11, float(_bits([0x00000003])[0]))],
    ),
]


def _apply_vectors() -> list[dict[str, Any]]:
    """θ ← θ + Σ value·z(seed), one fp32 add per (element, pair) in order, on tiny buffers."""
    out = []
    for sizes, initial_bits, pairs in APPLY_CASES:
        initial = _bits(initial_bits)
        buffer = FlatBuffer(torch.from_numpy(initial.copy()), segments_of(sizes))
        with np.errstate(over="ignore"):
            get_backend("cpu", "reference").apply(buffer, [s for s, _ in pairs], [v for _, v in pairs])
        out.append(
            {
                "tensor_sizes": sizes,
                "initial_f32_hex": [f32_hex(float(x)) for x in initial],
                "pairs": [{"seed": s, "value_f32_hex": f32_hex(v)} for s, v in pairs],
                "signs": [
                    "".join(
                        "+" if z > 0 else "-"
                        for t, n in enumerate(sizes)
                        for z in rademacher(s, t, n).tolist()
                    )
                    for s, _ in pairs
                ],
                "result_f32_hex": [f32_hex(float(x)) for x in buffer.flat.numpy()],
            }
        )
    return out


def _bf16_hex(t: torch.Tensor) -> list[str]:
    return [f"{int(x) & 0xFFFF:04x}" for x in t.view(torch.int16).tolist()]


def _sr_apply_vector() -> dict[str, Any]:
    """§7.4 on one bf16 tensor of 9 elements (two rounding blocks, the second partial), one apply of two
    pairs: per pair its signs and the fp32 sums after its adds; then the draws (the first pair's seed)
    and the rounded weights."""
    initial = torch.tensor(
        [1.0, -0.0, 3.0e-3, -2.5, 1.0e-2, 0.1, -0.1, 65504.0, 1.0e-40], dtype=torch.float32
    ).bfloat16()
    pairs = [(7, to_fp32(1.0e-3)), (2**64 - 1, to_fp32(-3.0e-4))]
    tensor_id = 3
    steps = []
    for k, (seed, value) in enumerate(pairs):
        x = sr_sum_bf16(initial, pairs[: k + 1], tensor_id)
        steps.append(
            {
                "seed": seed,
                "value_f32_hex": f32_hex(value),
                "signs": "".join("+" if z > 0 else "-" for z in rademacher(seed, tensor_id, 9).tolist()),
                "sum_f32_hex": [_h32(u & 0xFFFFFFFF) for u in x.view(torch.int32).tolist()],
            }
        )
    return {
        "tensor_id": tensor_id,
        "initial_bf16_hex": _bf16_hex(initial),
        "pairs": steps,
        "draws_hex": [f"{int(r):04x}" for r in rounding_bits(pairs[0][0], tensor_id, 9).tolist()],
        "result_bf16_hex": _bf16_hex(sr_apply_bf16(initial, pairs, tensor_id)),
    }


def _fingerprint_spec_vector() -> dict[str, Any]:
    numel = 2 * CHUNK_WORDS + 5
    words = (np.arange(numel, dtype=np.uint64) * np.uint64(2654435761) % np.uint64(2**32)).astype(np.uint32)
    digests = chunk_digests_reference(words)
    return {
        "fingerprint_key": f"{FINGERPRINT_KEY:016x}",
        "chunk_keys": [[_h32(w) for w in row] for row in chunk_keys(3)],
        "words": "w[i] = i * 2654435761 mod 2^32 for i < numel",
        "numel": numel,
        "digests": [[_h32(w) for w in row] for row in digests],
        "fingerprint": fingerprint_from_digests(digests, numel),
    }


def _init_key(seed: int) -> int:
    digest = hashlib.blake2b(f"{INIT_SEED_LABEL}/{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _tiny_random_vectors() -> tuple[dict[str, Any], dict[str, Any]]:
    _, params, _ = tiny_random_params()
    manifest = params.manifest()
    return (
        {
            "rng_spec": manifest.rng_spec,
            "fingerprint_spec": manifest.fingerprint_spec,
            "tensors": [[name, list(shape)] for name, shape in zip(manifest.names, manifest.shapes)],
            "num_tensors": len(manifest.names),
            "numel": manifest.numel,
            "json_head": manifest.to_json()[:120],
            "sha256": manifest.sha256(),
        },
        {"init_key": _init_key(0), "fingerprint": params.fingerprint()},
    )


def _step_indices_vectors() -> list[dict[str, Any]]:
    cases = [(12517903811774076336, 2, 24), (0, 8, 1000), (2**64 - 1, 5, 3)]
    out = []
    for seed, batch, n in cases:
        raw = np.random.Philox(key=np.array([seed, BATCH_KEY_DOMAIN], dtype=np.uint64)).random_raw(4)
        out.append(
            {
                "seed": seed,
                "batch_size": batch,
                "num_examples": n,
                "first_raw_words": [f"{int(w):016x}" for w in raw],
                "indices": step_indices(seed, batch, n),
            }
        )
    return out


EXAMPLES = [
    {"instruction": "What is 12 + 30?", "input": "", "output": "42"},
    {"instruction": "Reverse the word 'tiger'.", "input": "", "output": "regit"},
    {"instruction": "Summarise.", "input": "The sky is blue today.", "output": "Blue sky."},
    {"instruction": "Which letter comes right after 'q' in the alphabet?", "input": "", "output": "r"},
]


def _example(record: dict[str, str]) -> Example:
    return Example(instruction=record["instruction"], input=record["input"], output=record["output"])


def _encode_vectors() -> dict[str, Any]:
    _, tokenizer = _tiny_random()
    cases = [(EXAMPLES[0], 64), (EXAMPLES[2], 64), (EXAMPLES[2], 16)]
    encoded = []
    for record, max_length in cases:
        ex = encode_example(tokenizer, _example(record), max_length)
        encoded.append(
            {"example": record, "max_length": max_length, "input_ids": ex.input_ids, "labels": ex.labels}
        )
    return {
        "end_of_turn_id": end_of_turn_id(tokenizer),
        "pad_id": pad_token_id(tokenizer),
        "encoded": encoded,
    }


def _mezo_step_vector() -> dict[str, Any]:
    model, params, tokenizer = tiny_random_params()
    dataset = ClientDataset.from_examples(tokenizer, [_example(r) for r in EXAMPLES], 64)
    run_seed, round_id, client, batch_size = 42, 1, "outsider", 2
    eps = to_fp32(1e-3)
    lr = to_fp32(1e-4)
    seed = derive_seed(run_seed, round_id, client, 0)
    batch = dataset.batch_for_step(seed, batch_size)
    loss_fn = make_loss_fn(model, batch)
    loss_0 = loss_fn()
    result = mezo_step(params, loss_fn, seed=seed, eps=eps, lr=lr)
    return {
        "model": "tiny-random",
        "examples": EXAMPLES,
        "max_length": 64,
        "run_seed": run_seed,
        "round": round_id,
        "client_id": client,
        "step": 0,
        "seed": seed,
        "batch_size": batch_size,
        "indices": step_indices(seed, batch_size, len(EXAMPLES)),
        "eps_f32_hex": f32_hex(eps),
        "loss_at_theta_approx": loss_0,
        "loss_plus_approx": result.loss_plus,
        "loss_minus_approx": result.loss_minus,
        "projected_grad_approx": result.projected_grad,
    }


def _update(client: str, round_id: int, grads: list[float], num_examples: int) -> UpdateRecord:
    return UpdateRecord(
        round_id=round_id,
        client_id=client,
        projected_grads=tuple(to_fp32(g) for g in grads),
        losses=(),
        step_time_s=0.0,
        peak_memory_bytes=0,
        device="",
        num_examples=num_examples,
        received_at=0.0,
    )


def _round_vector(scheme: str, perturbations: int) -> dict[str, Any]:
    """One closed round on tiny-random θ_0: two clients, τ = 2, the server's own aggregation."""
    run_seed, round_id, tau = 42, 1, 2
    plan = SeedPlan(run_seed, scheme, perturbations)
    clients = {  # client → (lr, num_examples, τ·P scalars)
        "alice": (to_fp32(1e-4), 24, [1.5, -0.75, 0.125, 2.0][: tau * perturbations]),
        "bob": (to_fp32(2e-4), 40, [-3.25, 0.5, 1.0, -0.0625][: tau * perturbations]),
    }
    updates = [_update(c, round_id, grads, n) for c, (_, n, grads) in clients.items()]
    tasks = {c: TaskRecord(round_id, c, lr, tau) for c, (lr, _, _) in clients.items()}
    agg = aggregate(round_id, updates, tasks, seeds=plan, rule="examples")
    _, params, _ = tiny_random_params()
    before = params.fingerprint()
    get_backend("cpu").apply(params, agg.delta.seeds, agg.delta.coefficients)
    return {
        "run_seed": run_seed,
        "round": round_id,
        "seed_scheme": scheme,
        "perturbations": perturbations,
        "local_steps": tau,
        "aggregation": "examples",
        "updates": [
            {
                "client_id": c,
                "lr_f32_hex": f32_hex(lr),
                "num_examples": n,
                "projected_grads": [to_fp32(g) for g in grads],
                "seeds": plan.client_seeds(round_id, c, tau),
            }
            for c, (lr, n, grads) in clients.items()
        ],
        "weights": [o.weight for o in agg.outcomes],
        "participants": [list(p) for p in agg.participants] if scheme == PER_CLIENT else [],
        "seeds": list(agg.delta.seeds),
        "coefficients_f32_hex": [f32_hex(c) for c in agg.delta.coefficients],
        "fingerprint_before": before,
        "fingerprint_after": params.fingerprint(),
    }


def _refusal_reasons() -> dict[str, int]:
    return {
        vocabulary.reason_name(v.number): v.number for v in common_pb2.RefusalReason.DESCRIPTOR.values[1:]
    }


def _protocol_limits() -> dict[str, int]:
    return {
        "fingerprint_bytes": vocabulary.FINGERPRINT_BYTES,
        "max_message_bytes": vocabulary.MAX_MESSAGE_BYTES,
        "max_text_chars": vocabulary.MAX_TEXT_CHARS,
        "max_stored_int": vocabulary.MAX_STORED_INT,
        "max_event_cursor": vocabulary.MAX_EVENT_CURSOR,
        "max_client_id_chars": vocabulary.MAX_CLIENT_ID_CHARS,
        "max_deltas_per_task": vocabulary.MAX_DELTAS_PER_TASK,
    }


def _round_delta_check(vector: dict[str, Any]) -> None:
    """The vector's coefficients form a valid RoundDelta (distinct ascending seeds, fp32 values)."""
    coefficients = [struct.unpack(">f", bytes.fromhex(h))[0] for h in vector["coefficients_f32_hex"]]
    RoundDelta(tuple(vector["seeds"]), tuple(coefficients))


VECTORS: dict[str, Callable[[], Any]] = {
    "derive_seed": _derive_seed_vectors,
    "derive_shared_seed": _shared_seed_vectors,
    "philox4x32_10": _philox_vectors,
    "rng_v1_blocks": _rng_block_vectors,
    "rng_v1_signs": _rng_sign_vectors,
    "apply": _apply_vectors,
    "sr_apply_bf16": _sr_apply_vector,
    "fingerprint_spec": _fingerprint_spec_vector,
    "step_indices": _step_indices_vectors,
    "encode": _encode_vectors,
    "refusal_reasons": _refusal_reasons,
    "protocol_limits": _protocol_limits,
}


def compute_vectors() -> dict[str, Any]:
    """Every vector of docs/protocol.md, by name."""
    out = {name: fn() for name, fn in VECTORS.items()}
    out["manifest_tiny_random"], out["theta0_tiny_random"] = _tiny_random_vectors()
    out["mezo_step_tiny_random"] = _mezo_step_vector()
    out["round_per_client"] = _round_vector(PER_CLIENT, 1)
    out["round_shared"] = _round_vector(SHARED, 2)
    for name in ("round_per_client", "round_shared"):
        _round_delta_check(out[name])
    return out


def dump(value: Any, indent: str = "") -> str:
    """JSON with short values on one line and longer lists/objects one item per line."""
    flat = json.dumps(value, ensure_ascii=False)
    if len(indent) + len(flat) <= 108 or not isinstance(value, (dict, list)):
        return flat
    if isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
        return flat  # a list of scalars stays on one line however long
    inner = indent + " "
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k)}: {dump(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    return "[\n" + ",\n".join(inner + dump(v, inner) for v in value) + "\n" + indent + "]"


def main() -> None:
    """Print every vector as the document's blocks (marker comment + fenced JSON)."""
    names = sys.argv[1:]
    for name, value in compute_vectors().items():
        if names and name not in names:
            continue
        print(f"<!-- vector: {name} -->\n```json\n{dump(value)}\n```\n")


if __name__ == "__main__":
    main()
