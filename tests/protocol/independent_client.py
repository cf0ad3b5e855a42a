"""A fedmezo client written from docs/protocol.md alone: nothing of fedmezo is imported.

It uses the standard library, numpy, torch, transformers, grpc and protobuf (grpc_tools compiles the
proto files into a descriptor set at run time; the methods are called by their paths). Section numbers
(§) refer to docs/protocol.md.

    python independent_client.py --doc docs/protocol.md --proto-dir proto --model-dir MODEL \
        --data train.jsonl --server 127.0.0.1:50051 --client-id outsider --summary out.json

First it checks its own implementation against every test vector of the document (§13), then it
takes part in the run: GetRunConfig → Join → GetTask long-polls (bringing the closed rounds' deltas and
carrying its fingerprint) → τ real MeZO steps → SubmitUpdate (with its base fingerprint), with
heartbeats, until the run finishes; then ReportFingerprint of the final version. At the end it
downloads the final checkpoint and replays the whole run from θ_0. The summary (JSON) says what
happened; the exit code is 0 only when every check passed and the server found it in sync at every
version it reported. `--self-check-only` stops after the vectors.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import math
import re
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from transformers import AutoModelForCausalLM, AutoTokenizer

RNG_SPEC = "fedmezo-rng-v1"
FINGERPRINT_SPEC = "fedmezo-fp-v1"
M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF
IGNORE = -100
DEFAULT_MAX_LENGTH = 256
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
}
TRANSIENT_REASONS = {"rate_limited", "too_many_streams"}
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # §3.4
MAX_DELTAS = 16  # §3.4 max_deltas_per_task: what a poll asks for (§5.4)


def log(message: str) -> None:
    print(f"[independent] {message}", file=sys.stderr, flush=True)


def fp32(x: float) -> float:
    """§2: the nearest binary32 value, as a Python float."""
    return float(np.float32(x))


def f32_hex(x: float) -> str:
    return struct.pack(">f", x).hex()


def hex_f32(h: str) -> float:
    return float(struct.unpack(">f", bytes.fromhex(h))[0])


# ---------------------------------------------------------------------------------------------------
# §6 Seeds
# ---------------------------------------------------------------------------------------------------
def blake2b64(message: bytes, person: bytes = b"") -> int:
    return int.from_bytes(hashlib.blake2b(message, digest_size=8, person=person).digest(), "little")


def seed_message(run_seed: int, round_id: int, client_id: str, step: int) -> bytes:
    c = client_id.encode("utf-8")
    return struct.pack("<QQQI", run_seed, round_id, step, len(c)) + c


def derive_seed(run_seed: int, round_id: int, client_id: str, step: int) -> int:
    return blake2b64(seed_message(run_seed, round_id, client_id, step), b"fedmezo/seed/v1")


def derive_shared_seed(run_seed: int, round_id: int, t: int, p: int) -> int:
    return blake2b64(struct.pack("<QQQQ", run_seed, round_id, t, p), b"fedmezo/shared1")


@dataclass(frozen=True)
class SeedRule:
    """§6.3: which seeds step t of a client uses."""

    run_seed: int
    shared: bool
    perturbations: int

    def step(self, round_id: int, client_id: str, t: int) -> list[int]:
        p = self.perturbations
        if self.shared:
            return [derive_shared_seed(self.run_seed, round_id, t, k) for k in range(p)]
        return [derive_seed(self.run_seed, round_id, client_id, t * p + k) for k in range(p)]

    def client(self, round_id: int, client_id: str, steps: int) -> list[int]:
        return [s for t in range(steps) for s in self.step(round_id, client_id, t)]

    def delta_seeds(
        self, round_id: int, participants: Sequence[tuple[str, int]], local_steps: int
    ) -> list[int]:
        """§11.4: the distinct seeds of a round, ascending."""
        if self.shared:
            return sorted(set(self.client(round_id, "", local_steps)))
        return sorted({s for c, n in participants for s in self.client(round_id, c, n)})


# ---------------------------------------------------------------------------------------------------
# §7 Philox4x32-10 and z
# ---------------------------------------------------------------------------------------------------
def philox4x32_10(
    counter: tuple[Any, Any, Any, Any], key: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """§7.1 on arrays of counters (values < 2^32 held in uint64, so products are exact)."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in counter)
    k0, k1 = key
    for i in range(10):
        if i > 0:
            k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
        p0 = c0 * np.uint64(0xD2511F53)
        p1 = c2 * np.uint64(0xCD9E8D57)
        hi0, lo0 = p0 >> np.uint64(32), p0 & np.uint64(M32)
        hi1, lo1 = p1 >> np.uint64(32), p1 & np.uint64(M32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ np.uint64(k0), lo1, hi0 ^ c3 ^ np.uint64(k1), lo0
    return tuple(c.astype(np.uint32) for c in (c0, c1, c2, c3))  # type: ignore[return-value]


def block_words(seed: int, tensor_id: int, first_block: int, n_blocks: int, domain: int) -> np.ndarray:
    """(n, 4) uint32: the output words of blocks first_block.. of (seed, tensor id, domain), §7.2."""
    b = np.arange(n_blocks, dtype=np.uint64) + np.uint64(first_block)
    counter = (
        b & np.uint64(M32),
        np.full(n_blocks, tensor_id),
        np.full(n_blocks, domain),
        b >> np.uint64(32),
    )
    return np.stack(philox4x32_10(counter, (seed & M32, seed >> 32)), axis=1)


_BITS = np.arange(32, dtype=np.uint32)


def signs(seed: int, tensor_id: int, numel: int, domain: int = 0) -> np.ndarray:
    """z as booleans (True = +1): bit e mod 32 of word (e div 32) mod 4 of block e div 128."""
    words = block_words(seed, tensor_id, 0, -(-numel // 128), domain)
    bits = (words[:, :, None] >> _BITS) & np.uint32(1)
    return bits.reshape(-1)[:numel].astype(bool)


class Theta:
    """The trainable tensors in manifest order (§8.1), as fp32 numpy arrays (views of the model's)."""

    def __init__(self, names: list[str], shapes: list[tuple[int, ...]], arrays: list[np.ndarray]) -> None:
        self.names, self.shapes, self.arrays = names, shapes, arrays

    @classmethod
    def of_model(cls, model: torch.nn.Module) -> Theta:
        named = sorted(model.named_parameters(), key=lambda item: item[0])  # tied weights once
        arrays = []
        for name, param in named:
            if param.dtype != torch.float32 or not param.is_contiguous():
                raise ValueError(f"{name}: trainable tensors must be contiguous fp32")
            arrays.append(param.detach().numpy().reshape(-1))  # shares the model's memory
        return cls([n for n, _ in named], [tuple(p.shape) for _, p in named], arrays)

    def copy(self) -> Theta:
        return Theta(self.names, self.shapes, [a.copy() for a in self.arrays])

    @property
    def numel(self) -> int:
        return sum(a.size for a in self.arrays)

    def apply(self, pairs: Sequence[tuple[int, float]]) -> None:
        """§7.3: for every element, in list order, w ← fp32(w ± fp32(c))."""
        for tensor_id, w in enumerate(self.arrays):
            for seed, value in pairs:
                v = np.float32(value)
                w += np.where(signs(seed, tensor_id, w.size), v, -v)

    def words(self) -> np.ndarray:
        """§8.2: the flat buffer's fp32 bits as uint32."""
        return np.concatenate([a.view(np.uint32) for a in self.arrays])

    def load_words(self, words: np.ndarray) -> None:
        offset = 0
        for a in self.arrays:
            a.view(np.uint32)[:] = words[offset : offset + a.size]
            offset += a.size

    def manifest_json(self) -> str:
        """§8.3."""
        tensors = [[n, list(s)] for n, s in zip(self.names, self.shapes)]
        doc = {"rng_spec": RNG_SPEC, "fingerprint_spec": FINGERPRINT_SPEC, "tensors": tensors}
        return json.dumps(doc, separators=(",", ":"))

    def manifest_sha256(self) -> bytes:
        return hashlib.sha256(self.manifest_json().encode("utf-8")).digest()

    def fingerprint(self) -> bytes:
        return fingerprint_of_words(self.words())


# ---------------------------------------------------------------------------------------------------
# §9 The fingerprint
# ---------------------------------------------------------------------------------------------------
CHUNK = 65536
LANE_MULTIPLIERS = (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F)
FP_KEY = int.from_bytes(hashlib.sha256(FINGERPRINT_SPEC.encode()).digest()[:8], "little")


def fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def chunk_keys(n_chunks: int) -> np.ndarray:
    c = np.arange(n_chunks, dtype=np.uint64)
    counter = (c & np.uint64(M32), np.zeros(n_chunks), np.full(n_chunks, 3), c >> np.uint64(32))
    return np.stack(philox4x32_10(counter, (FP_KEY & M32, FP_KEY >> 32)), axis=1)


def chunk_digests(words: np.ndarray) -> np.ndarray:
    n_chunks = -(-words.size // CHUNK)
    keys = chunk_keys(n_chunks)
    out = np.empty((n_chunks, 4), dtype=np.uint32)
    j = np.arange(CHUNK, dtype=np.uint32)
    with np.errstate(over="ignore"):
        for c in range(n_chunks):
            w = words[c * CHUNK : (c + 1) * CHUNK]
            for lane, a in enumerate(LANE_MULTIPLIERS):
                position = keys[c, lane] + j[: w.size] * np.uint32(a)
                out[c, lane] = int(fmix32(w ^ position).sum(dtype=np.uint64)) & M32
    return out


def fingerprint_of_words(words: np.ndarray) -> bytes:
    digests = chunk_digests(words)
    sha = hashlib.sha256(FINGERPRINT_SPEC.encode() + b"\0" + struct.pack("<QI", words.size, CHUNK))
    sha.update(digests.astype("<u4").tobytes())
    return sha.digest()


# ---------------------------------------------------------------------------------------------------
# §10 Local training: data, encoding, batches, loss, the MeZO step
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    instruction: str
    input: str
    output: str


def read_jsonl(path: Path) -> list[Example]:
    examples = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if "output" in record:
            examples.append(Example(record["instruction"], record.get("input") or "", record["output"]))
        else:
            examples.append(Example(record["instruction"], record.get("context") or "", record["response"]))
    return examples


class Encoder:
    """§10.2 with a transformers tokenizer."""

    SENTINEL = "\x00independent-answer\x00"

    def __init__(self, tokenizer: Any) -> None:
        if not tokenizer.chat_template:
            tokenizer.chat_template = CHATML
        self.tok = tokenizer
        self.pad_id = int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        self.end_of_turn = self._end_of_turn()

    def _ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def _end_of_turn(self) -> int:
        try:
            text = self.tok.apply_chat_template(
                [{"role": "user", "content": "?"}, {"role": "assistant", "content": self.SENTINEL}],
                tokenize=False,
            )
        except Exception:
            text = ""
        _, found, after = str(text).partition(self.SENTINEL)
        after = after.strip()
        if found and after:
            ids = self._ids(after.split()[0])
            if len(ids) == 1:
                return ids[0]
        return int(self.tok.eos_token_id)

    def encode(self, ex: Example, max_length: int) -> tuple[list[int], list[int]]:
        user = f"{ex.instruction}\n\n{ex.input}" if ex.input else ex.instruction
        text = self.tok.apply_chat_template(
            [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False
        )
        prompt = self._ids(str(text))
        response = [*self._ids(ex.output), self.end_of_turn]
        if len(prompt) + len(response) > max_length:
            keep_response = min(len(response), max(max_length - len(prompt), max_length // 2))
            keep_prompt = max_length - keep_response
            prompt, response = prompt[len(prompt) - keep_prompt :], response[:keep_response]
        return prompt + response, [IGNORE] * len(prompt) + response


def philox4x64_10(counter: tuple[int, int, int, int], key: tuple[int, int]) -> tuple[int, int, int, int]:
    """§10.3: the 64-bit Philox, with Python integers."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for i in range(10):
        if i > 0:
            k0, k1 = (k0 + 0x9E3779B97F4A7C15) & M64, (k1 + 0xBB67AE8584CAA73B) & M64
        p0, p1 = 0xD2E7470EE14C6C93 * c0, 0xCA5A826395121157 * c2
        c0, c1, c2, c3 = (p1 >> 64) ^ c1 ^ k0, p1 & M64, (p0 >> 64) ^ c3 ^ k1, p0 & M64
    return c0, c1, c2, c3


def batch_words(seed: int) -> Iterator[int]:
    block = 1
    while True:
        yield from philox4x64_10((block, 0, 0, 0), (seed, 0x64617461))
        block += 1


def step_indices(seed: int, batch_size: int, n: int) -> list[int]:
    words = batch_words(seed)
    indices: list[int] = []
    while len(indices) < batch_size:
        take = min(batch_size - len(indices), n)
        perm = list(range(n))
        for i in range(take):
            j = i + next(words) % (n - i)
            perm[i], perm[j] = perm[j], perm[i]
        indices += perm[:take]
    return indices


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def collate(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int) -> Batch:
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(encoded), width), dtype=torch.int64)
    labels = torch.full((len(encoded), width), IGNORE, dtype=torch.int64)
    for row, (ids, lab) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
        labels[row, : len(ids)] = torch.tensor(lab)
    return Batch(input_ids, mask, labels)


def loss_of(model: torch.nn.Module, batch: Batch) -> float:
    """§10.4: token-mean next-token cross-entropy over the labelled positions, fp32, eval mode."""
    with torch.inference_mode():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        shift = logits[:, :-1, :].float()
        return float(
            torch.nn.functional.cross_entropy(
                shift.reshape(-1, shift.shape[-1]), batch.labels[:, 1:].reshape(-1), ignore_index=IGNORE
            )
        )


@dataclass
class StepOutcome:
    scalars: list[float]
    loss: float
    losses: list[float]


def mezo_step(
    theta: Theta, loss_fn: Callable[[], float], seeds: Sequence[int], eps: float, lr: float, clip: float
) -> StepOutcome:
    """§10.5 (mezo) with the apply sequence of §10.6: the step moves θ by Σ fp32(−η·a_p)·z(s_p)."""
    grads: list[float] = []
    losses: list[float] = []
    for p, seed in enumerate(seeds):
        theta.apply([(seed, fp32(eps))])
        loss_plus = loss_fn()
        theta.apply([(seed, fp32(-2.0 * eps))])
        loss_minus = loss_fn()
        losses += [loss_plus, loss_minus]
        if not (math.isfinite(loss_plus) and math.isfinite(loss_minus)):  # skipped step
            theta.apply([(seed, fp32(eps))])
            return StepOutcome([0.0] * len(seeds), math.fsum(losses) / len(losses), losses)
        g = (loss_plus - loss_minus) / (2.0 * eps)
        if clip > 0 and abs(g) > clip:
            g = math.copysign(clip, g)
        grads.append(fp32(g))
        if p < len(seeds) - 1:
            theta.apply([(seed, fp32(eps))])  # back before the next perturbation
    scalars = grads if len(seeds) == 1 else [fp32(g / len(seeds)) for g in grads]
    theta.apply([(seeds[-1], fp32(eps)), *((s, fp32(-lr * a)) for s, a in zip(seeds, scalars))])
    return StepOutcome(scalars, math.fsum(losses) / len(losses), losses)


# ---------------------------------------------------------------------------------------------------
# §11 Aggregation (to check the document's round vectors) and the checkpoint file (§5.9)
# ---------------------------------------------------------------------------------------------------
def coefficients(
    updates: Sequence[dict[str, Any]], rule: SeedRule, round_id: int, tau: int, by_examples: bool
) -> tuple[list[float], list[int], list[float]]:
    """§11.2–11.3: (ω per client in ascending id order, seeds ascending, fp32 coefficients)."""
    ordered = sorted(updates, key=lambda u: u["client_id"])
    weights = [float(max(u["num_examples"], 1)) if by_examples else 1.0 for u in ordered]
    total = math.fsum(weights)
    sums: dict[int, float] = {}
    omegas = []
    for u, w in zip(ordered, weights):
        omega = w / total
        omegas.append(omega)
        lr = hex_f32(u["lr_f32_hex"])
        for seed, a in zip(rule.client(round_id, u["client_id"], tau), u["projected_grads"]):
            sums[seed] = sums.get(seed, 0.0) + omega * (-lr * a)
    seeds = sorted(sums)
    return omegas, seeds, [fp32(sums[s]) for s in seeds]


def read_safetensors_flat(data: bytes) -> tuple[dict[str, str], np.ndarray]:
    (n,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    entry = header["flat"]
    if entry["dtype"] != "F32" or len(header) != 1:
        raise ValueError(f"unexpected checkpoint tensors {sorted(header)}")
    begin, end = entry["data_offsets"]
    raw = data[8 + n + begin : 8 + n + end]
    return meta, np.frombuffer(raw, dtype="<u4").astype(np.uint32)


# ---------------------------------------------------------------------------------------------------
# §13 Self-check against the document's test vectors
# ---------------------------------------------------------------------------------------------------
VECTOR_BLOCK = re.compile(r"<!-- vector: (\S+) -->\n```json\n(.*?)\n```", re.DOTALL)


def doc_vectors(doc: Path) -> dict[str, Any]:
    return {name: json.loads(body) for name, body in VECTOR_BLOCK.findall(doc.read_text(encoding="utf-8"))}


class SelfCheck:
    """Every vector of §13, recomputed here; `failures` lists what differs."""

    def __init__(
        self, vectors: dict[str, Any], model: torch.nn.Module, tokenizer: Any, proto: Protocol
    ) -> None:
        self.v, self.model, self.tokenizer, self.proto = vectors, model, tokenizer, proto
        self.failures: list[str] = []
        self.passed: list[str] = []

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        (self.passed if ok else self.failures).append(name if ok else f"{name}: {detail}")

    def run(self) -> None:
        for name in sorted(self.v):
            method = getattr(self, "v_" + name, None)
            if method is None:
                self.check(name, False, "no check for this vector")
                continue
            before = len(self.failures)
            method(self.v[name])
            if len(self.failures) == before:
                self.passed.append(name)

    def fail(self, name: str, detail: str) -> None:
        self.failures.append(f"{name}: {detail}")

    def v_derive_seed(self, cases: list[dict[str, Any]]) -> None:
        for c in cases:
            msg = seed_message(c["run_seed"], c["round"], c["client_id"], c["step"])
            seed = derive_seed(c["run_seed"], c["round"], c["client_id"], c["step"])
            if msg.hex() != c["message_hex"] or seed != c["seed"] or f"{seed:016x}" != c["seed_hex"]:
                self.fail("derive_seed", f"{c}")

    def v_derive_shared_seed(self, cases: list[dict[str, Any]]) -> None:
        for c in cases:
            if derive_shared_seed(c["run_seed"], c["round"], c["step"], c["perturbation"]) != c["seed"]:
                self.fail("derive_shared_seed", f"{c}")

    def v_philox4x32_10(self, cases: list[dict[str, Any]]) -> None:
        for c in cases:
            counter = tuple(np.array([int(x, 16)]) for x in c["counter"])
            key = (int(c["key"][0], 16), int(c["key"][1], 16))
            out = [f"{int(w[0]):08x}" for w in philox4x32_10(counter, key)]  # type: ignore[arg-type]
            if out != c["output"]:
                self.fail("philox4x32_10", f"{out} != {c['output']}")

    def v_rng_v1_blocks(self, cases: list[dict[str, Any]]) -> None:
        for c in cases:
            words = block_words(c["seed"], c["tensor_id"], c["block"], 1, c["domain"])[0]
            if [f"{int(w):08x}" for w in words] != c["words"]:
                self.fail("rng_v1_blocks", f"{c}")

    def v_rng_v1_signs(self, cases: list[dict[str, Any]]) -> None:
        for c in cases:
            z = np.where(signs(c["seed"], c["tensor_id"], c["numel"]), 1, -1).astype(np.int8)
            first = "".join("+" if x > 0 else "-" for x in z[:32])
            if first != c["first_signs"] or hashlib.sha256(z.tobytes()).hexdigest() != c["sha256_int8"]:
                self.fail("rng_v1_signs", f"{c}")

    def v_apply(self, cases: list[dict[str, Any]]) -> None:
        for c in cases:
            flat = np.array([int(h, 16) for h in c["initial_f32_hex"]], dtype=np.uint32).view(np.float32)
            sizes, arrays, offset = c["tensor_sizes"], [], 0
            for n in sizes:
                arrays.append(flat[offset : offset + n].copy())
                offset += n
            theta = Theta([str(i) for i in range(len(sizes))], [(n,) for n in sizes], arrays)
            pairs = [(p["seed"], hex_f32(p["value_f32_hex"])) for p in c["pairs"]]
            shown = [
                "".join("+" if x else "-" for t, n in enumerate(sizes) for x in signs(s, t, n))
                for s, _ in pairs
            ]
            theta.apply(pairs)
            result = [f"{int(w):08x}" for w in theta.words()]
            if result != c["result_f32_hex"] or shown != c["signs"]:
                self.fail("apply", f"{result} != {c['result_f32_hex']} (signs {shown})")

    def v_sr_apply_bf16(self, c: dict[str, Any]) -> None:
        """§7.4: one apply: per pair one fp32 add of ±v to fp32(w), then once 16 random bits (domain 1,
        the first pair's seed) added below the kept half."""
        t = c["tensor_id"]
        w = np.array([int(h, 16) for h in c["initial_bf16_hex"]], dtype=np.uint32)  # bf16 bit patterns
        n = w.size
        x = (w << np.uint32(16)).view(np.float32)
        for p in c["pairs"]:
            seed, v = p["seed"], np.float32(hex_f32(p["value_f32_hex"]))
            z = signs(seed, t, n)
            with np.errstate(over="ignore"):
                x = x + np.where(z, v, -v).astype(np.float32)
            shown = "".join("+" if x else "-" for x in z)
            sums = [f"{int(u):08x}" for u in x.view(np.uint32)]
            if shown != p["signs"] or sums != p["sum_f32_hex"]:
                self.fail("sr_apply_bf16", f"pair {seed}: sums {sums} != {p['sum_f32_hex']}")
        words = block_words(c["pairs"][0]["seed"], t, 0, -(-n // 8), 1)  # one domain-1 block per 8 elements
        e = np.arange(n)
        word = words[e // 8, (e % 8) // 2]
        draws = np.where(e % 2 == 1, word >> np.uint32(16), word & np.uint32(0xFFFF))
        u = x.view(np.uint32).astype(np.uint64)
        kept = np.where(np.isfinite(x), (u + draws.astype(np.uint64)) >> np.uint64(16), u >> np.uint64(16))
        kept = np.where(np.isnan(x), np.uint64(0x7FC0), kept)
        result = [f"{int(k):04x}" for k in kept]
        if [f"{int(r):04x}" for r in draws] != c["draws_hex"] or result != c["result_bf16_hex"]:
            self.fail("sr_apply_bf16", f"{result} != {c['result_bf16_hex']}")

    def v_fingerprint_spec(self, c: dict[str, Any]) -> None:
        n = c["numel"]
        words = (np.arange(n, dtype=np.uint64) * np.uint64(2654435761) % np.uint64(2**32)).astype(np.uint32)
        keys = [[f"{int(w):08x}" for w in row] for row in chunk_keys(3)]
        digests = [[f"{int(w):08x}" for w in row] for row in chunk_digests(words)]
        ok = f"{FP_KEY:016x}" == c["fingerprint_key"] and keys == c["chunk_keys"] and digests == c["digests"]
        if not ok or fingerprint_of_words(words).hex() != c["fingerprint"]:
            self.fail("fingerprint_spec", "keys, digests or fingerprint differ")

    def v_step_indices(self, cases: list[dict[str, Any]]) -> None:
        for c in cases:
            words = batch_words(c["seed"])
            raw = [f"{next(words):016x}" for _ in range(4)]
            indices = step_indices(c["seed"], c["batch_size"], c["num_examples"])
            if raw != c["first_raw_words"] or indices != c["indices"]:
                self.fail("step_indices", f"{raw} {indices} != {c}")

    def v_encode(self, c: dict[str, Any]) -> None:
        enc = Encoder(self.tokenizer)
        if enc.end_of_turn != c["end_of_turn_id"] or enc.pad_id != c["pad_id"]:
            self.fail("encode", f"end of turn {enc.end_of_turn}, pad {enc.pad_id}")
        for case in c["encoded"]:
            ex = Example(case["example"]["instruction"], case["example"]["input"], case["example"]["output"])
            ids, labels = enc.encode(ex, case["max_length"])
            if ids != case["input_ids"] or labels != case["labels"]:
                self.fail("encode", f"{case['example']} at {case['max_length']}: {ids} {labels}")

    def v_manifest_tiny_random(self, c: dict[str, Any]) -> None:
        theta = Theta.of_model(self.model)
        tensors = [[n, list(s)] for n, s in zip(theta.names, theta.shapes)]
        text = theta.manifest_json()
        ok = tensors == c["tensors"] and theta.numel == c["numel"] and text.startswith(c["json_head"])
        if not ok or theta.manifest_sha256().hex() != c["sha256"]:
            self.fail("manifest_tiny_random", f"manifest {theta.manifest_sha256().hex()}")

    def v_theta0_tiny_random(self, c: dict[str, Any]) -> None:
        theta = Theta.of_model(self.model)
        key = blake2b64(b"fedmezo-random-init-v1/0")
        if key != c["init_key"] or theta.fingerprint().hex() != c["fingerprint"]:
            self.fail("theta0_tiny_random", f"key {key}, fingerprint {theta.fingerprint().hex()}")
        for tensor_id, (name, w) in enumerate(zip(theta.names, theta.arrays)):  # §8.4, rebuilt by the spec
            if len(theta.shapes[tensor_id]) >= 2:
                std = np.float32(0.02)
                expected = np.where(signs(key, tensor_id, w.size, domain=2), std, -std)
            else:
                expected = np.full(w.size, 0.0 if name.endswith("bias") else 1.0, dtype=np.float32)
            if not np.array_equal(expected.view(np.uint32), w.view(np.uint32)):
                self.fail("theta0_tiny_random", f"{name} is not the §8.4 initialisation")

    def v_mezo_step_tiny_random(self, c: dict[str, Any]) -> None:
        theta = Theta.of_model(self.model)
        snapshot = theta.words().copy()
        enc = Encoder(self.tokenizer)
        examples = [Example(e["instruction"], e["input"], e["output"]) for e in c["examples"]]
        encoded = [enc.encode(e, c["max_length"]) for e in examples]
        seed = derive_seed(c["run_seed"], c["round"], c["client_id"], c["step"])
        indices = step_indices(seed, c["batch_size"], len(examples))
        batch = collate([encoded[i] for i in indices], enc.pad_id)
        eps = hex_f32(c["eps_f32_hex"])
        loss_0 = loss_of(self.model, batch)
        out = mezo_step(theta, lambda: loss_of(self.model, batch), [seed], eps, fp32(1e-4), 0.0)
        theta.load_words(snapshot)  # back to θ_0
        close = (
            abs(loss_0 - c["loss_at_theta_approx"]) < 1e-4
            and abs(out.losses[0] - c["loss_plus_approx"]) < 1e-4
            and abs(out.losses[1] - c["loss_minus_approx"]) < 1e-4
            and abs(out.scalars[0] - c["projected_grad_approx"]) < 5e-2
        )
        if seed != c["seed"] or indices != c["indices"] or not close:
            self.fail("mezo_step_tiny_random", f"seed {seed} {indices} L0 {loss_0} {out}")

    def _round(self, name: str, c: dict[str, Any]) -> None:
        rule = SeedRule(c["run_seed"], c["seed_scheme"] == "shared", c["perturbations"])
        for u in c["updates"]:
            if rule.client(c["round"], u["client_id"], c["local_steps"]) != u["seeds"]:
                self.fail(name, f"seeds of {u['client_id']}")
        omegas, seeds, coefs = coefficients(
            c["updates"], rule, c["round"], c["local_steps"], c["aggregation"] == "examples"
        )
        participants = [(u["client_id"], c["local_steps"]) for u in c["updates"]] if not rule.shared else []
        derived = rule.delta_seeds(c["round"], participants, c["local_steps"])
        if omegas != c["weights"] or seeds != c["seeds"] or derived != c["seeds"]:
            self.fail(name, f"weights {omegas} or seeds {seeds} differ")
        if [f32_hex(x) for x in coefs] != c["coefficients_f32_hex"]:
            self.fail(name, f"coefficients {[f32_hex(x) for x in coefs]}")
        if [list(p) for p in participants] != c["participants"]:
            self.fail(name, f"participants {participants}")
        theta = Theta.of_model(self.model).copy()
        before = theta.fingerprint().hex()
        theta.apply(list(zip(derived, [hex_f32(h) for h in c["coefficients_f32_hex"]])))
        if before != c["fingerprint_before"] or theta.fingerprint().hex() != c["fingerprint_after"]:
            self.fail(name, f"fingerprints {before} → {theta.fingerprint().hex()}")

    def v_round_per_client(self, c: dict[str, Any]) -> None:
        self._round("round_per_client", c)

    def v_round_shared(self, c: dict[str, Any]) -> None:
        self._round("round_shared", c)

    def v_refusal_reasons(self, c: dict[str, int]) -> None:
        enum = self.proto.pool.FindEnumTypeByName("fedmezo.v1.RefusalReason")
        names = {v.name.removeprefix("REFUSAL_REASON_").lower(): v.number for v in enum.values[1:]}
        if names != c:
            self.fail("refusal_reasons", f"{names}")

    def v_protocol_limits(self, c: dict[str, int]) -> None:
        limits = self.proto.limits()
        if limits != c:
            self.fail("protocol_limits", f"{limits}")


# ---------------------------------------------------------------------------------------------------
# §3 The wire: protos compiled at run time, methods called by path
# ---------------------------------------------------------------------------------------------------
class Protocol:
    """Message classes and enum values from a descriptor set compiled from proto/fedmezo/v1/*.proto."""

    LIMITS_FIELD = 51000  # the ProtocolLimits file option of common.proto (§3.4)

    def __init__(self, proto_dir: Path, work: Path) -> None:
        from grpc_tools import protoc  # the proto compiler of grpc, used only here

        include = Path(protoc.__file__).parent / "_proto"
        files = sorted(str(p.relative_to(proto_dir)) for p in (proto_dir / "fedmezo" / "v1").glob("*.proto"))
        out = work / "fedmezo-v1.desc"
        args = [
            "protoc",
            f"-I{proto_dir}",
            f"-I{include}",
            f"--descriptor_set_out={out}",
            "--include_imports",
        ]
        if protoc.main([*args, *files]) != 0:
            raise RuntimeError("protoc failed")
        self.files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
        self.pool = descriptor_pool.DescriptorPool()
        for file in self.files.file:
            self.pool.Add(file)

    def msg(self, name: str) -> Any:
        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(f"fedmezo.v1.{name}"))

    def enum(self, enum: str, value: str) -> int:
        return int(self.pool.FindEnumTypeByName(f"fedmezo.v1.{enum}").values_by_name[value].number)

    def limits(self) -> dict[str, int]:
        """Read the ProtocolLimits option out of common.proto's serialized FileOptions."""
        common = next(f for f in self.files.file if f.name == "fedmezo/v1/common.proto")
        raw, i = common.options.SerializeToString(), 0

        def varint() -> int:
            nonlocal i
            shift = value = 0
            while True:
                byte = raw[i]
                i += 1
                value |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    return value

        while i < len(raw):
            tag = varint()
            number, wire_type = tag >> 3, tag & 7
            if wire_type == 0:
                varint()
            elif wire_type == 2:
                length = varint()
                if number == self.LIMITS_FIELD:
                    limits = self.msg("ProtocolLimits").FromString(raw[i : i + length])
                    return {f.name: getattr(limits, f.name) for f in limits.DESCRIPTOR.fields}
                i += length
            else:
                raise ValueError(f"unexpected wire type {wire_type} in FileOptions")
        raise ValueError("common.proto has no ProtocolLimits option")


class Refused(Exception):
    """A failed RPC: its status code, the `fedmezo-reason` (§3.5) and the details."""

    def __init__(self, code: grpc.StatusCode, reason: str, details: str) -> None:
        super().__init__(f"{code.name} {reason}: {details}")
        self.code, self.reason, self.details = code, reason, details

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT or self.reason in TRANSIENT_REASONS

    @classmethod
    def of(cls, exc: grpc.RpcError) -> Refused:
        call: Any = exc
        reason = ""
        for key, value in call.trailing_metadata() or ():
            if key == "fedmezo-reason":
                reason = value if isinstance(value, str) else value.decode()
        return cls(call.code(), reason, call.details() or "")


class Link:
    """The channel, the bearer token, and unary/stream calls by method path (§3.1, §3.3)."""

    def __init__(self, target: str, proto: Protocol, token: str | None) -> None:
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.enable_retries", 0),
        ]
        self.channel = grpc.insecure_channel(target, options=options)
        self.proto = proto
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def _callable(self, service: str, method: str, streaming: bool) -> Any:
        response = self.proto.msg(f"{method}Response")
        path = f"/fedmezo.v1.{service}/{method}"
        make = self.channel.unary_stream if streaming else self.channel.unary_unary
        return make(
            path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response.FromString,
        )

    def call(self, service: str, method: str, timeout: float = 30.0, **fields: Any) -> Any:
        request = self.proto.msg(f"{method}Request")(**fields)
        try:
            return self._callable(service, method, False)(request, timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise Refused.of(exc) from exc

    def stream(self, method: str, timeout: float, **fields: Any) -> Generator[Any, None, None]:
        request = self.proto.msg(f"{method}Request")(**fields)
        call = self._callable("FederationService", method, True)(
            request, timeout=timeout, metadata=self.metadata
        )
        try:
            yield from call
        except grpc.RpcError as exc:
            raise Refused.of(exc) from exc
        finally:
            call.cancel()

    def close(self) -> None:
        self.channel.close()


# ---------------------------------------------------------------------------------------------------
# §5 The client life cycle
# ---------------------------------------------------------------------------------------------------
class SyncError(Exception):
    pass


@dataclass
class Client:
    link: Link
    proto: Protocol
    client_id: str
    model: torch.nn.Module
    tokenizer: Any
    examples: list[Example]
    summary: dict[str, Any]
    version: int = 0
    reported: int = -1  # the latest version the server judged in sync (§5.7)
    theta: Theta = field(init=False)
    theta0: np.ndarray = field(init=False)
    config: Any = None
    rule: SeedRule | None = None
    activity: str = "CLIENT_ACTIVITY_IDLE"
    encoder: Encoder = field(init=False)
    encoded: list[tuple[list[int], list[int]]] = field(init=False)
    _stop: threading.Event = field(default_factory=threading.Event)
    _heartbeats: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.theta = Theta.of_model(self.model)
        self.theta0 = self.theta.words().copy()

    # -- §4, §5.1 -----------------------------------------------------------------------------------
    def prepare(self) -> None:
        self.config = self.link.call("StatusService", "GetRunConfig").config
        cfg = self.config
        if cfg.rng_spec != RNG_SPEC:
            raise SystemExit(f"the run uses {cfg.rng_spec!r}, this client implements {RNG_SPEC}")
        if cfg.mode != self.proto.enum("TrainingMode", "TRAINING_MODE_FULL"):
            raise SystemExit("this client trains full models only")
        if cfg.estimator not in (0, self.proto.enum("Estimator", "ESTIMATOR_MEZO")):
            raise SystemExit("this client implements the mezo estimator only")
        if self.theta.manifest_sha256() != cfg.manifest_sha256:
            raise SystemExit(f"manifest {self.theta.manifest_sha256().hex()} != {cfg.manifest_sha256.hex()}")
        if cfg.trainable_params and cfg.trainable_params != self.theta.numel:
            raise SystemExit(f"{self.theta.numel} trainable elements, the run has {cfg.trainable_params}")
        shared = cfg.seed_scheme == self.proto.enum("SeedScheme", "SEED_SCHEME_SHARED")
        self.rule = SeedRule(cfg.run_seed, shared, cfg.perturbations or 1)
        self.encoder = Encoder(self.tokenizer)
        max_length = cfg.max_length or DEFAULT_MAX_LENGTH
        self.encoded = [self.encoder.encode(ex, max_length) for ex in self.examples]
        self.summary["run"] = {"run_id": cfg.run_id, "max_length": max_length, "local_steps": cfg.local_steps}
        log(f"run {cfg.run_id}: manifest ok, {self.theta.numel} trainable, {len(self.examples)} examples")

    def probe(self, name: str, fn: Callable[[], Any]) -> None:
        """Record the refusal a deliberately wrong request gets (§3.5)."""
        try:
            fn()
        except Refused as exc:
            self.summary.setdefault("refusals", {})[name] = [exc.code.name, exc.reason]
        else:
            self.summary.setdefault("refusals", {})[name] = ["OK", ""]

    def join(self) -> Any:
        joined = self.link.call(
            "FederationService", "Join",
            client_id=self.client_id, manifest_sha256=self.theta.manifest_sha256(), rng_spec=RNG_SPEC,
            num_examples=len(self.examples), device="cpu", model_version=self.version,
            client_version="independent-client/1",
        )  # fmt: skip
        if joined.config.run_id != self.config.run_id:
            raise SystemExit("the server runs another run now (new_run)")
        if joined.rounds_completed == 0 and self.version == 0:  # §5.1: θ_0 is the server's
            ok = self.theta.fingerprint() == joined.fingerprint
            self.summary["theta0_matches_server"] = ok
            self.summary["theta0_fingerprint"] = joined.fingerprint.hex()
            if not ok:
                raise SyncError("θ_0 differs from the server's")
        return joined

    # -- §5.8 ---------------------------------------------------------------------------------------
    def heartbeat(self) -> None:
        try:
            self.link.call(
                "FederationService", "Heartbeat", timeout=10.0, client_id=self.client_id,
                model_version=self.version, activity=self.proto.enum("ClientActivity", self.activity),
            )  # fmt: skip
            self.summary["heartbeats"] = self.summary.get("heartbeats", 0) + 1
        except Refused as exc:
            log(f"heartbeat failed: {exc}")

    def start_heartbeats(self) -> None:
        """One heartbeat now, then one every heartbeat_interval_s in a thread, until the run ends."""
        if self._heartbeats is not None:
            return
        self.heartbeat()
        interval = self.config.heartbeat_interval_s or 5.0

        def beat() -> None:
            while not self._stop.wait(interval):
                self.heartbeat()

        self._heartbeats = threading.Thread(target=beat, name="heartbeat", daemon=True)
        self._heartbeats.start()

    # -- §11.5, §5.3, §5.6 --------------------------------------------------------------------------
    def apply_delta(self, msg: Any, theta: Theta | None = None, version: int | None = None) -> None:
        theta = theta or self.theta
        current = self.version if version is None else version
        assert self.rule is not None
        if msg.round_id != current + 1:
            raise SyncError(f"round {msg.round_id}'s delta at version {current}")
        pairs: list[tuple[int, float]] = []
        if msg.coefficients:
            participants = [(p.client_id, p.local_steps) for p in msg.participants]
            seeds = self.rule.delta_seeds(msg.round_id, participants, self.config.local_steps)
            if len(seeds) != len(msg.coefficients):
                raise SyncError(f"{len(seeds)} seeds, {len(msg.coefficients)} coefficients")
            pairs = list(zip(seeds, msg.coefficients))
        theta.apply(pairs)
        if msg.fingerprint and theta.fingerprint() != msg.fingerprint:
            raise SyncError(f"fingerprint differs from the server's after round {msg.round_id}")
        if version is None:
            self.version += 1
            self.summary.setdefault("applied", []).append(
                {
                    "round": msg.round_id,
                    "seeds": len(pairs),
                    "participants": [p.client_id for p in msg.participants],
                }
            )

    def replay(self, until: int | None, follow: bool) -> None:
        if until is not None and self.version >= until:
            return
        timeout = 300.0 if follow else 600.0
        stream = self.link.stream(
            "StreamRoundDeltas", timeout, client_id=self.client_id, from_round=self.version + 1, follow=follow
        )
        with contextlib.closing(stream):  # closing cancels the call (a follow stream never ends by itself)
            for msg in stream:
                if msg.round_id <= self.version:
                    continue  # a resend after a reconnect
                self.apply_delta(msg)
                if until is not None and self.version >= until:
                    break

    def catch_up(self, target: int) -> None:
        if self.version >= target:
            return
        self.activity = "CLIENT_ACTIVITY_SYNCING"
        self.replay(None, follow=False)
        if self.version < target:
            raise SyncError(f"the server promised version {target}, its stream ended at {self.version}")
        self.report()

    # -- §5.7, §5.9 ---------------------------------------------------------------------------------
    def report(self) -> None:
        fp = self.theta.fingerprint()
        answer = self.link.call(
            "FederationService", "ReportFingerprint",
            client_id=self.client_id, model_version=self.version, fingerprint=fp,
        )  # fmt: skip
        resync = answer.action == self.proto.enum("SyncAction", "SYNC_ACTION_RESYNC")
        self.judged(fp, bool(answer.in_sync) and not resync)

    def unreported(self) -> bytes:
        """The fingerprint to carry in the next poll or update: empty once this version was judged."""
        return self.theta.fingerprint() if self.version > self.reported else b""

    def judged(self, fp: bytes, in_sync: bool) -> None:
        """The server judged `fp`, of the current version (by any of the three calls of §5.7)."""
        self.summary.setdefault("reports", []).append(
            {"version": self.version, "fingerprint": fp.hex(), "in_sync": in_sync}
        )
        log(f"version {self.version} fingerprint {fp.hex()[:16]} in_sync={in_sync}")
        if not in_sync:
            self.resync()
        else:
            self.reported = self.version

    def download_checkpoint(self) -> tuple[int, bytes, np.ndarray]:
        header: Any = None
        data = bytearray()
        for chunk in self.link.stream("DownloadCheckpoint", 1800.0, client_id=self.client_id):
            header = header or chunk
            if chunk.offset != len(data):
                raise SyncError(f"checkpoint_gap: chunk at {chunk.offset}, expected {len(data)}")
            data += chunk.data
        if header is None or len(data) != header.total_size:
            raise SyncError("checkpoint_truncated")
        if hashlib.sha256(data).digest() != header.sha256:
            raise SyncError("checkpoint sha256 differs")
        meta, words = read_safetensors_flat(bytes(data))
        if (
            fingerprint_of_words(words) != header.fingerprint
            or meta.get("fingerprint") != header.fingerprint.hex()
        ):
            raise SyncError("checkpoint fingerprint differs")
        if int(meta.get("version", -1)) != header.round_id:
            raise SyncError("checkpoint version differs")
        return header.round_id, header.fingerprint, words

    def resync(self) -> None:
        round_id, _, words = self.download_checkpoint()
        self.theta.load_words(words)
        self.version = round_id
        self.reported = -1  # report the checkpoint's version again
        self.summary["resyncs"] = self.summary.get("resyncs", 0) + 1
        self.replay(None, follow=False)

    # -- §5.4, §5.5, §10 ----------------------------------------------------------------------------
    def train(self, task: Any) -> dict[str, Any]:
        assert self.rule is not None
        if task.estimator not in (0, self.proto.enum("Estimator", "ESTIMATOR_MEZO")):
            raise SystemExit("task with an estimator this client does not implement")
        perturbations = task.perturbations or 1
        shared = task.seed_scheme == self.proto.enum("SeedScheme", "SEED_SCHEME_SHARED")
        rule = SeedRule(task.run_seed, shared, perturbations)
        snapshot = self.theta.words().copy()
        scalars: list[float] = []
        losses: list[float] = []
        start = time.perf_counter()
        try:
            for t in range(task.local_steps):
                seeds = rule.step(task.round_id, self.client_id, t)
                indices = step_indices(seeds[0], task.batch_size, len(self.encoded))
                batch = collate([self.encoded[i] for i in indices], self.encoder.pad_id)
                loss_fn = functools.partial(loss_of, self.model, batch)
                out = mezo_step(self.theta, loss_fn, seeds, task.eps, task.lr, task.clip)
                scalars += out.scalars
                losses.append(fp32(out.loss))
                log(f"round {task.round_id} step {t}: batch {indices} loss {out.loss:.4f} a {out.scalars}")
        finally:
            self.theta.load_words(snapshot)  # θ_{r−1}, bit for bit
        if self.theta.fingerprint() != fingerprint_of_words(snapshot):
            raise SyncError("restore failed")
        return {
            "round_id": task.round_id,
            "projected_grads": scalars,
            "losses": losses,
            "step_time_s": fp32((time.perf_counter() - start) / max(task.local_steps, 1)),
            "device": "cpu",
            "forward_passes": 2 * perturbations * task.local_steps,
        }

    def do_task(self, task: Any) -> None:
        self.replay(task.round_id - 1, follow=False)
        if self.version != task.round_id - 1:
            log(f"task for round {task.round_id} at version {self.version}: skipped")
            return
        self.activity = "CLIENT_ACTIVITY_TRAINING"
        update = self.train(task)
        self.activity = "CLIENT_ACTIVITY_IDLE"
        record = {"round": task.round_id, "lr": task.lr, "eps": task.eps, "tau": task.local_steps, **update}
        base = self.unreported()  # §5.5: the θ it trained from, unless the poll already reported it
        try:
            answer = self.link.call(
                "FederationService", "SubmitUpdate", client_id=self.client_id, base_fingerprint=base, **update
            )
            accepted = self.proto.enum("UpdateStatus", "UPDATE_STATUS_ACCEPTED")
            record["submit"] = "accepted" if answer.status == accepted else str(answer.status)
            # §5.5: resending the identical update is answered the same way
            again = self.link.call("FederationService", "SubmitUpdate", client_id=self.client_id, **update)
            record["resend"] = "accepted" if again.status == answer.status else str(again.status)
            if base:
                self.judged(base, True)  # a base fingerprint that differs is refused (diverged)
        except Refused as exc:
            if exc.transient:
                raise
            record["submit"] = exc.reason
            if exc.reason == "diverged":
                self.summary.setdefault("trained", []).append(record)
                self.judged(base, False)
                return
        self.summary.setdefault("trained", []).append(record)
        log(f"round {task.round_id}: submitted {len(update['projected_grads'])} scalars ({record['submit']})")
        # §5: no stream to follow; the next poll brings this round's delta with the next task

    def session(self) -> bool:
        """One connection's worth of §5; returns True when the run finished."""
        joined = self.join()
        self.reported = -1  # a restarted server may have gone back: report again
        self.start_heartbeats()
        if self.version > joined.rounds_completed:
            self.resync()
        self.catch_up(joined.rounds_completed)
        if joined.run_state == self.proto.enum("RunState", "RUN_STATE_FINISHED"):
            return True
        while True:
            fp = self.unreported()
            poll = self.link.call(
                "FederationService", "GetTask", timeout=40.0, client_id=self.client_id,
                known_version=self.version, wait_s=5.0, max_deltas=MAX_DELTAS, fingerprint=fp,
            )  # fmt: skip
            if fp:  # §5.4: judged as ReportFingerprint would judge it
                self.judged(fp, poll.sync_action != self.proto.enum("SyncAction", "SYNC_ACTION_RESYNC"))
                if self.version > self.reported:
                    continue  # it resynced: poll again from the checkpoint's version
            for msg in poll.deltas:  # rounds version+1 .. rounds_completed, each checked (§11.5)
                if msg.round_id == self.version + 1:
                    self.apply_delta(msg)
            if poll.status == self.proto.enum("TaskStatus", "TASK_STATUS_RUN_FINISHED"):
                self.catch_up(poll.rounds_completed)
                if self.version > self.reported:
                    self.report()  # the final version (catch_up reports only when it moved)
                return True
            if poll.status == self.proto.enum("TaskStatus", "TASK_STATUS_NO_TASK"):
                self.catch_up(poll.rounds_completed)
                continue
            if poll.status != self.proto.enum("TaskStatus", "TASK_STATUS_ASSIGNED"):
                log(f"unknown task status {poll.status} (bad_task_status)")
                continue
            self.do_task(poll.task)

    def run(self) -> None:
        self.prepare()
        wrong = bytes(32)
        self.probe("GetTask before Join", lambda: self.link.call(
            "FederationService", "GetTask", client_id=self.client_id, known_version=0, wait_s=0.0,
        ))  # fmt: skip
        self.probe("Join with another manifest", lambda: self.link.call(
            "FederationService", "Join", client_id=self.client_id, manifest_sha256=wrong,
            rng_spec=RNG_SPEC, num_examples=1))  # fmt: skip
        attempt = 0
        while True:
            try:
                if self.session():
                    break
            except Refused as exc:
                if not (exc.transient or exc.reason == "not_joined"):
                    raise
                log(f"transient failure ({exc}); joining again")
            except SyncError as exc:
                log(f"sync failed ({exc}); resyncing")
                self.summary.setdefault("sync_errors", []).append(str(exc))
                self.resync()
            attempt += 1
            time.sleep(min(30.0, 0.5 * 2**attempt) * np.random.random())
        self._stop.set()
        self.finish()

    # -- §5.10 and the final checks -----------------------------------------------------------------
    def finish(self) -> None:
        fp = self.theta.fingerprint()
        self.summary["final"] = {"version": self.version, "fingerprint": fp.hex()}
        round_id, ck_fp, words = self.download_checkpoint()  # §5.9
        self.summary["checkpoint"] = {
            "round": round_id,
            "fingerprint_matches": ck_fp == fp,
            "bytes_equal": bool(np.array_equal(words, self.theta.words())),
        }
        replica = Theta(self.theta.names, self.theta.shapes, [a.copy() for a in self.theta.arrays])
        replica.load_words(self.theta0)  # θ_0 again, then every delta from round 1 (§5.3)
        version = 0
        for msg in self.link.stream(
            "StreamRoundDeltas", 600.0, client_id=self.client_id, from_round=1, follow=False
        ):
            self.apply_delta(msg, replica, version)
            version += 1
        self.summary["replay_from_theta0"] = {
            "version": version,
            "fingerprint_matches": replica.fingerprint() == fp,
        }
        self.probe("ReportFingerprint of 31 bytes", lambda: self.link.call(
            "FederationService", "ReportFingerprint", client_id=self.client_id,
            model_version=self.version, fingerprint=bytes(31)))  # fmt: skip
        self.probe("ReportFingerprint beyond the last version", lambda: self.link.call(
            "FederationService", "ReportFingerprint", client_id=self.client_id,
            model_version=self.version + 5, fingerprint=fp))  # fmt: skip
        self.probe("SubmitUpdate, another update for an answered round", lambda: self.link.call(
            "FederationService", "SubmitUpdate", client_id=self.client_id, round_id=self.version,
            projected_grads=[0.0], losses=[]))  # fmt: skip
        self.probe("SubmitUpdate for a round that does not exist", lambda: self.link.call(
            "FederationService", "SubmitUpdate", client_id=self.client_id, round_id=self.version + 1,
            projected_grads=[0.0], losses=[]))  # fmt: skip


def load_model(folder: Path) -> tuple[torch.nn.Module, Any]:
    """§8.4: a save_pretrained folder, fp32, eval mode; pad with EOS when there is no pad token."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    return model, tokenizer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doc", type=Path, required=True, help="docs/protocol.md (for its test vectors)")
    parser.add_argument("--proto-dir", type=Path, required=True, help="the folder holding fedmezo/v1/*.proto")
    parser.add_argument("--model-dir", type=Path, required=True, help="a save_pretrained folder of θ_0")
    parser.add_argument("--data", type=Path, help="training data, JSON Lines")
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--client-id", default="outsider")
    parser.add_argument("--token", default=None)
    parser.add_argument("--summary", type=Path, required=True)
    parser.add_argument("--self-check-only", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    summary: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as work:
            proto = Protocol(args.proto_dir, Path(work))
            model, tokenizer = load_model(args.model_dir)
            check = SelfCheck(doc_vectors(args.doc), model, tokenizer, proto)
            check.run()
            summary["self_check"] = {"passed": sorted(check.passed), "failed": check.failures}
            summary["self_check_s"] = round(time.perf_counter() - started, 2)
            log(f"self-check: {len(check.passed)} vectors pass, failures: {check.failures}")
            if check.failures:
                return 1
            if args.self_check_only:
                return 0
            link = Link(args.server, proto, args.token)
            try:
                client = Client(link, proto, args.client_id, model, tokenizer, read_jsonl(args.data), summary)
                client.run()
            finally:
                link.close()
    except BaseException as exc:
        summary["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        summary["seconds"] = round(time.perf_counter() - started, 2)
        summary["fedmezo_modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "fedmezo")
        args.summary.write_text(json.dumps(summary, indent=1))
    reports = summary.get("reports", [])
    ok = bool(reports) and all(r["in_sync"] for r in reports) and not summary["fedmezo_modules"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
