"""bench/workloads.py: the benchmark's prompts share exactly what they claim to share."""

from __future__ import annotations

import itertools
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
import workloads as w


def test_shared_prefix_groups_share_their_prefix_only() -> None:
    wl = w.shared_prefix(
        num_requests=40,
        num_groups=4,
        prefix_ratio=0.75,
        isl=w.LengthDist("fixed", 64),
        osl=w.LengthDist("fixed", 5),
    )
    reqs = wl.requests()
    assert wl.num_requests == 40 and all(len(r.token_ids) == 64 and r.max_tokens == 5 for r in reqs)
    by_group: dict[int, list[w.BenchRequest]] = {}
    for r in reqs:
        by_group.setdefault(r.group, []).append(r)
    for group in by_group.values():
        assert all(r.token_ids[:48] == group[0].token_ids[:48] for r in group)
        assert group[0].num_shared_tokens == 0 and all(r.num_shared_tokens == 48 for r in group[1:])
    firsts = [g[0].token_ids[:48] for g in by_group.values()]
    assert len({tuple(f) for f in firsts}) == len(firsts)
    assert len({tuple(r.token_ids[48:]) for r in reqs}) == 40  # tails are unique


def test_multi_turn_turns_extend_the_previous_turn() -> None:
    wl = w.multi_turn(
        num_conversations=3,
        num_turns=4,
        first_isl=w.LengthDist("fixed", 30),
        turn_isl=w.LengthDist("fixed", 10),
        osl=w.LengthDist("fixed", 5),
        system_prompt_len=8,
    )
    for session in wl.sessions:
        turns = session.requests
        assert [len(t.token_ids) for t in turns] == [38, 53, 68, 83]
        for prev, cur in itertools.pairwise(turns):
            assert cur.token_ids[: len(prev.token_ids)] == prev.token_ids
            assert cur.num_shared_tokens == len(prev.token_ids) + prev.max_tokens
    systems = {tuple(s.requests[0].token_ids[:8]) for s in wl.sessions}
    assert len(systems) == 1


def test_length_specs_and_arrivals() -> None:
    rng = random.Random(0)
    assert w.LengthDist.parse("100").sample(rng) == 100
    u = w.LengthDist.parse("uniform:10:20")
    assert all(10 <= u.sample(rng) <= 20 for _ in range(100)) and u.mean == 15
    assert w.LengthDist.parse("normal:50:0").sample(rng) == 50
    with pytest.raises(ValueError, match="uniform:LO:HI"):
        w.LengthDist.parse("lognormal:1:2")
    assert w.Arrival("closed", 4).start_offsets(3) is None
    offsets = w.Arrival("poisson", 0, rate=100.0).start_offsets(2000)
    assert offsets is not None and offsets == sorted(offsets)
    assert 15 < offsets[-1] < 25  # ~2000 / 100 per second
    with pytest.raises(ValueError):
        w.Arrival("poisson", 0, rate=0).start_offsets(1)


def test_prompt_text_round_trips_through_the_bench_tokenizer(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    model_dir = w.ensure_bench_model(tmp_path / "m")
    assert (model_dir / "config.json").exists() and (model_dir / "tokenizer_config.json").exists()
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = [0, 5, 31999, 17, 17, 4000]
    assert tok.encode(w.prompt_text(ids), add_special_tokens=False).ids == ids
    assert tok.decode([5, 6]) == "t5 t6"
