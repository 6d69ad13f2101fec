"""MockerConfig: the simulated worker's sizes and timing, and its CLI flags.

The worker's main owns the engine flags shared with the real engine (`--block-size`,
`--num-blocks`, `--max-num-seqs`, `--max-num-batched-tokens`, `--max-model-len`,
`--num-workers`); `add_mocker_arguments` adds only what the mocker alone needs.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from mixroute.errors import ConfigError
from mixroute.mocker.timing import TimingModel

DEFAULT_NUM_BLOCKS = 16384
"""Per worker, as Dynamo's mocker (so a fleet here and there holds the same cache)."""
DEFAULT_MAX_MODEL_LEN = 32768
DEFAULT_VOCAB_SIZE = 32000


@dataclass(slots=True, frozen=True)
class MockerConfig:
    model_path: str | None = None
    """A tokenizer / model directory; only its config.json (vocab size, EOS, context) is read."""
    served_model_name: str = "mocker"
    block_size: int = 16
    num_blocks: int = DEFAULT_NUM_BLOCKS
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int | None = None
    """None: the model directory's max_position_embeddings, else 32768."""
    enable_prefix_caching: bool = True
    kv_hold_timeout_s: float = 30.0
    worker_id: int = 0
    seed: int = 0
    timing: TimingModel = field(default_factory=TimingModel)

    def __post_init__(self) -> None:
        for name in ("block_size", "num_blocks", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"mocker {name} must be >= 1, got {getattr(self, name)}")
        if self.num_blocks < 2:
            raise ConfigError("mocker num_blocks must be >= 2")
        if self.model_path is not None and not (Path(self.model_path) / "config.json").is_file():
            raise ConfigError(
                f"{self.model_path!r} has no config.json; pass a model/tokenizer directory to --model"
            )

    def with_worker_id(self, worker_id: int) -> MockerConfig:
        return replace(self, worker_id=worker_id)

    def with_seed(self, seed: int) -> MockerConfig:
        return replace(self, seed=seed)

    def model_facts(self) -> tuple[int, int, tuple[int, ...]]:
        """(vocab_size, max_model_len, eos_token_ids) from the model directory, or defaults."""
        vocab, ctx, eos = DEFAULT_VOCAB_SIZE, DEFAULT_MAX_MODEL_LEN, ()
        if self.model_path is not None:
            cfg = json.loads((Path(self.model_path) / "config.json").read_text())
            vocab = int(cfg.get("vocab_size") or vocab)
            ctx = int(cfg.get("max_position_embeddings") or ctx)
            raw = cfg.get("eos_token_id")
            eos = tuple(raw) if isinstance(raw, list) else ((raw,) if isinstance(raw, int) else ())
        return vocab, self.max_model_len or ctx, eos


def _coeffs(text: str) -> tuple[float, float, float]:
    try:
        a, b, c = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected three comma-separated numbers A,B,C, got {text!r}"
        ) from None
    return a, b, c


def _has_option(parser: argparse.ArgumentParser, flag: str) -> bool:
    return any(flag in action.option_strings for action in parser._actions)


def add_mocker_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("mocker (--engine mocker)")
    g.add_argument(
        "--speedup-ratio", type=float, default=1.0, help="divide every simulated time by this"
    )
    g.add_argument(
        "--mocker-prefill-coeffs",
        type=_coeffs,
        default=None,
        metavar="A,B,C",
        help="prefill ms = A*N^2 + B*N + C for N uncached tokens (default: Dynamo's fit)",
    )
    g.add_argument(
        "--mocker-decode-coeffs",
        type=_coeffs,
        default=None,
        metavar="A,B,C",
        help="decode step ms = max(1, A*p^2 + B*p + C), p = KV usage (default: Dynamo's fit)",
    )
    if not _has_option(parser, "--num-workers"):
        g.add_argument(
            "--num-workers", type=int, default=1, help="mocker instances in this process"
        )


def mocker_config_from_args(args: argparse.Namespace) -> MockerConfig:
    """Build the config from the worker's parsed flags (absent or None flags take mocker defaults)."""
    timing = TimingModel(speedup_ratio=getattr(args, "speedup_ratio", 1.0) or 1.0)
    if getattr(args, "mocker_prefill_coeffs", None):
        a, b, c = args.mocker_prefill_coeffs
        timing = replace(timing, prefill_a=a, prefill_b=b, prefill_c=c)
    if getattr(args, "mocker_decode_coeffs", None):
        a, b, c = args.mocker_decode_coeffs
        timing = replace(timing, decode_a=a, decode_b=b, decode_c=c)

    def pick(name: str, default: object) -> object:
        value = getattr(args, name, None)
        return default if value is None else value

    model = getattr(args, "model", None)
    return MockerConfig(
        model_path=str(model) if model else None,
        served_model_name=str(pick("served_model_name", Path(model).name if model else "mocker")),
        block_size=int(pick("block_size", 16)),  # type: ignore[call-overload]
        num_blocks=int(pick("num_blocks", DEFAULT_NUM_BLOCKS)),  # type: ignore[call-overload]
        max_num_seqs=int(pick("max_num_seqs", 256)),  # type: ignore[call-overload]
        max_num_batched_tokens=int(pick("max_num_batched_tokens", 8192)),  # type: ignore[call-overload]
        max_model_len=getattr(args, "max_model_len", None),
        timing=timing,
    )
