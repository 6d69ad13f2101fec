from __future__ import annotations

import argparse

import pytest

from mixroute.errors import ConfigError
from mixroute.mocker.config import MockerConfig, add_mocker_arguments, mocker_config_from_args
from mixroute.mocker.timing import TimingModel


def test_prefill_matches_dynamo_fit() -> None:
    t = TimingModel()
    n = 4000
    assert t.prefill_ms(n) == pytest.approx(4.209989e-7 * n * n + 0.01518344 * n + 16.50142)
    assert t.prefill_ms(1) == pytest.approx(16.5166, abs=1e-3)


def test_prefill_of_nothing_is_free_and_grows_superlinearly() -> None:
    t = TimingModel()
    assert t.prefill_ms(0) == 0.0
    # Quadratic term: one batch of 8000 costs more than two of 4000 minus the fixed cost.
    assert t.prefill_ms(8000) > 2 * t.prefill_ms(4000) - t.prefill_c


def test_decode_fit_clamps_usage_and_floor() -> None:
    t = TimingModel()
    assert t.decode_ms(0.0) == pytest.approx(5.74)
    assert t.decode_ms(0.5) == pytest.approx(-25.74 * 0.25 + 54.01 * 0.5 + 5.74)
    assert t.decode_ms(2.0) == t.decode_ms(1.0)
    assert TimingModel(decode_c=-10.0).decode_ms(0.0) == 1.0  # the 1 ms floor


def test_speedup_divides_every_time() -> None:
    base, fast = TimingModel(), TimingModel(speedup_ratio=8.0)
    assert fast.prefill_ms(1234) == pytest.approx(base.prefill_ms(1234) / 8)
    assert fast.decode_ms(0.3) == pytest.approx(base.decode_ms(0.3) / 8)
    assert fast.step_ms(100, 3, 0.3) == pytest.approx(base.step_ms(100, 3, 0.3) / 8)


def test_step_adds_decode_only_when_some_sequence_decodes() -> None:
    t = TimingModel()
    assert t.step_ms(500, 0, 0.2) == pytest.approx(t.prefill_ms(500))
    assert t.step_ms(500, 4, 0.2) == pytest.approx(t.prefill_ms(500) + t.decode_ms(0.2))
    assert t.step_ms(0, 4, 0.2) == pytest.approx(t.decode_ms(0.2))


def test_bad_speedup_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        TimingModel(speedup_ratio=0)


def test_cli_flags_build_the_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "config.json").write_text(
        '{"vocab_size": 100, "max_position_embeddings": 512, "eos_token_id": 7}'
    )
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--num-blocks", type=int, default=None)
    add_mocker_arguments(parser)
    args = parser.parse_args(
        [
            "--model",
            str(tmp_path),
            "--speedup-ratio",
            "4",
            "--num-blocks",
            "64",
            "--mocker-decode-coeffs",
            "0,0,3",
        ]
    )
    cfg = mocker_config_from_args(args)
    assert cfg.num_blocks == 64 and cfg.timing.speedup_ratio == 4.0 and args.num_workers == 1
    assert cfg.timing.decode_ms(0.9) == pytest.approx(3 / 4)
    assert cfg.model_facts() == (100, 512, (7,))
    with pytest.raises(SystemExit):
        parser.parse_args(["--mocker-prefill-coeffs", "1,2"])


def test_config_rejects_missing_model_dir(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="config.json"):
        MockerConfig(model_path=str(tmp_path / "nope"))
