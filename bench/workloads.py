"""Benchmark workloads: token-id prompts with known sharing, and how they arrive.

A workload is a list of *sessions*; a session is a list of requests sent one after the
other (a multi-turn conversation), each turn's prompt extending the previous turn's
prompt and answer. Single-shot workloads have one request per session.

Prompts are token ids over a word-level vocabulary (`t0 ... t{V-1}`); `prompt_text`
turns ids into text that the bench tokenizer (`ensure_bench_model`) maps back to exactly
the same ids, so every router and client (ours, Dynamo, smg, vllm-router, aiperf) sees
identical token sequences and identical prefix sharing.

Arrivals: closed loop (a fixed number of sessions in flight) or Poisson (sessions start
at exponential inter-arrival times). ISL/OSL: fixed or sampled (`LengthDist`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

VOCAB_SIZE = 32000
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + ' ' + message['content'] + ' <|im_end|> ' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant ' }}{% endif %}"
)


# ---------------------------------------------------------------- lengths


@dataclass(slots=True, frozen=True)
class LengthDist:
    """A token-count distribution: fixed, uniform [a, b], or normal(a, b) clipped to >= 1."""

    kind: Literal["fixed", "uniform", "normal"]
    a: float
    b: float = 0.0

    @classmethod
    def parse(cls, spec: str | int) -> LengthDist:
        """`4000`, `uniform:3000:5000` or `normal:4000:400`."""
        if isinstance(spec, int):
            return cls("fixed", spec)
        parts = str(spec).split(":")
        try:
            if len(parts) == 1:
                return cls("fixed", int(parts[0]))
            if parts[0] in ("uniform", "normal") and len(parts) == 3:
                return cls(parts[0], float(parts[1]), float(parts[2]))  # type: ignore[arg-type]
        except ValueError:
            pass
        raise ValueError(f"bad length spec {spec!r}: use N, uniform:LO:HI or normal:MEAN:STD")

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return max(1, int(self.a))
        if self.kind == "uniform":
            return max(1, rng.randint(int(self.a), int(self.b)))
        return max(1, round(rng.gauss(self.a, self.b)))

    @property
    def mean(self) -> float:
        return (self.a + self.b) / 2 if self.kind == "uniform" else self.a


# ---------------------------------------------------------------- requests


@dataclass(slots=True)
class BenchRequest:
    request_id: str
    token_ids: list[int]
    max_tokens: int
    group: int
    """Prefix group (shared-prefix workloads) or conversation index (multi-turn)."""
    turn: int = 0
    num_shared_tokens: int = 0
    """Tokens this prompt shares with an earlier prompt (an upper bound on cache hits)."""


@dataclass(slots=True)
class Session:
    requests: list[BenchRequest]
    think_time_s: float = 0.0
    """Pause between a turn's end and the next turn's start."""


@dataclass(slots=True)
class Workload:
    name: str
    sessions: list[Session]
    description: dict[str, object] = field(default_factory=dict)

    @property
    def num_requests(self) -> int:
        return sum(len(s.requests) for s in self.sessions)

    def requests(self) -> list[BenchRequest]:
        return [r for s in self.sessions for r in s.requests]


def _random_tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(VOCAB_SIZE) for _ in range(n)]


def shared_prefix(
    *,
    num_requests: int,
    num_groups: int,
    prefix_ratio: float,
    isl: LengthDist,
    osl: LengthDist,
    seed: int = 0,
) -> Workload:
    """Each request belongs to one of `num_groups` groups (uniformly at random); the first
    `prefix_ratio` of its prompt is its group's prefix, the rest is unique to the request."""
    if not 0.0 <= prefix_ratio <= 1.0:
        raise ValueError(f"prefix_ratio must be in [0, 1], got {prefix_ratio}")
    if num_groups < 1 or num_requests < 1:
        raise ValueError("num_groups and num_requests must be >= 1")
    rng = random.Random(seed)
    prefix_len = round(prefix_ratio * isl.mean)
    prefixes = [_random_tokens(rng, prefix_len) for _ in range(num_groups)]
    seen: set[int] = set()
    sessions = []
    for i in range(num_requests):
        g = rng.randrange(num_groups)
        n = isl.sample(rng)
        shared = min(prefix_len, n)
        tokens = prefixes[g][:shared] + _random_tokens(rng, n - shared)
        req = BenchRequest(
            request_id=f"sp-{seed}-{i}",
            token_ids=tokens,
            max_tokens=osl.sample(rng),
            group=g,
            num_shared_tokens=shared if g in seen else 0,
        )
        seen.add(g)
        sessions.append(Session([req]))
    desc = {
        "kind": "shared_prefix",
        "num_requests": num_requests,
        "num_groups": num_groups,
        "prefix_ratio": prefix_ratio,
        "isl": isl,
        "osl": osl,
        "seed": seed,
    }
    return Workload(f"shared_prefix_g{num_groups}_r{prefix_ratio}", sessions, desc)


def multi_turn(
    *,
    num_conversations: int,
    num_turns: int,
    first_isl: LengthDist,
    turn_isl: LengthDist,
    osl: LengthDist,
    system_prompt_len: int = 0,
    think_time_s: float = 0.0,
    seed: int = 0,
) -> Workload:
    """Conversations whose turn k prompt = turn k-1 prompt + its answer + a new user message.

    The answer is a fixed pseudo-random stand-in for what the model said (the mocker's
    output is random anyway), so turn k shares everything before its new message with
    turn k-1 at the token level. An optional system prompt is shared by all conversations."""
    if num_turns < 1 or num_conversations < 1:
        raise ValueError("num_conversations and num_turns must be >= 1")
    rng = random.Random(seed)
    system = _random_tokens(rng, system_prompt_len)
    sessions = []
    for c in range(num_conversations):
        history = list(system) + _random_tokens(rng, first_isl.sample(rng))
        reqs = []
        for t in range(num_turns):
            if t > 0:
                shared = len(history)
                history = history + _random_tokens(rng, turn_isl.sample(rng))
            else:
                shared = system_prompt_len if c > 0 else 0
            max_tokens = osl.sample(rng)
            reqs.append(BenchRequest(f"mt-{seed}-{c}-{t}", list(history), max_tokens, c, t, shared))
            history = history + _random_tokens(rng, max_tokens)
        sessions.append(Session(reqs, think_time_s))
    desc = {
        "kind": "multi_turn",
        "num_conversations": num_conversations,
        "num_turns": num_turns,
        "first_isl": first_isl,
        "turn_isl": turn_isl,
        "osl": osl,
        "system_prompt_len": system_prompt_len,
        "seed": seed,
    }
    return Workload(f"multi_turn_c{num_conversations}_t{num_turns}", sessions, desc)


# ---------------------------------------------------------------- arrivals


@dataclass(slots=True, frozen=True)
class Arrival:
    """`closed`: `concurrency` sessions in flight at all times. `poisson`: sessions start at
    rate `rate` per second (exponential gaps), with at most `concurrency` in flight (0: no cap)."""

    kind: Literal["closed", "poisson"] = "closed"
    concurrency: int = 32
    rate: float = 0.0
    seed: int = 0

    def start_offsets(self, num_sessions: int) -> list[float] | None:
        """Seconds after the start at which each session begins (None for closed loop)."""
        if self.kind == "closed":
            return None
        if self.rate <= 0:
            raise ValueError("poisson arrivals need rate > 0")
        rng = random.Random(self.seed)
        t, out = 0.0, []
        for _ in range(num_sessions):
            out.append(t)
            t += rng.expovariate(self.rate)
        return out


# ---------------------------------------------------------------- text and tokenizer


def prompt_text(token_ids: list[int]) -> str:
    """Text that the bench tokenizer maps back to exactly `token_ids`."""
    return " ".join(f"t{i}" for i in token_ids)


def ensure_bench_model(path: str | Path, max_model_len: int = 32768) -> Path:
    """Write (once) a weightless HF model directory whose tokenizer is word-level over
    `t0 ... t{VOCAB_SIZE-1}` plus ChatML specials: a tokenizer directory for routers and
    clients that need one, and the `--model` of mocker workers."""
    path = Path(path)
    if (path / "tokenizer.json").exists() and (path / "config.json").exists():
        return path
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    path.mkdir(parents=True, exist_ok=True)
    vocab = {f"t{i}": i for i in range(VOCAB_SIZE)}
    for j, tok in enumerate(SPECIAL_TOKENS):
        vocab[tok] = VOCAB_SIZE + j
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.save(str(path / "tokenizer.json"))
    eos_id = VOCAB_SIZE + 2
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_model_len,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=1))
    (path / "special_tokens_map.json").write_text(
        json.dumps(
            {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
        )
    )
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB_SIZE + len(SPECIAL_TOKENS),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": max_model_len,
        "eos_token_id": eos_id,
        "bos_token_id": None,
        "torch_dtype": "float32",
    }
    (path / "config.json").write_text(json.dumps(config, indent=1))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_id}))
    return path


def workload_a(num_requests: int = 512, seed: int = 0) -> Workload:
    """Workload A: 64 prefix groups, 90% shared prefix, ISL 4,000, OSL 100."""
    return shared_prefix(
        num_requests=num_requests,
        num_groups=64,
        prefix_ratio=0.9,
        isl=LengthDist("fixed", 4000),
        osl=LengthDist("fixed", 100),
        seed=seed,
    )
