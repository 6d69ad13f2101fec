from __future__ import annotations

import pytest

from mixroute.errors import BadRequestError
from mixroute.frontend.detokenize import IncrementalDetokenizer
from mixroute.frontend.preprocess import ModelTokenizer, prepare_prompt
from mixroute.protocol.hashing import hash_prompt


def test_chat_template_renders_chatml(tokenizer: ModelTokenizer) -> None:
    ids = tokenizer.render_chat_sync([{"role": "user", "content": "hello there"}], None)
    text = tokenizer.fast.decode(ids, skip_special_tokens=False)
    assert text == "<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.eos_token_ids == (tokenizer.fast.token_to_id("<|im_end|>"),)


def test_template_errors_are_bad_requests(tokenizer: ModelTokenizer) -> None:
    with pytest.raises(BadRequestError):
        tokenizer.render_chat_sync([{"role": "user"}], None)  # no content key


def test_prepare_prompt_matches_protocol_hashing() -> None:
    ids = list(range(40))
    prepared = prepare_prompt(ids, 16)
    local, seq = hash_prompt(ids, 16)
    assert (prepared.local_hashes, prepared.seq_hashes) == (local, seq)
    assert len(prepared.local_hashes) == 2
    assert prepare_prompt(ids, 16, "salt").seq_hashes != seq


def test_incremental_detokenize_matches_full_decode(tokenizer: ModelTokenizer) -> None:
    text = "héllo wörld, 你好! The quick brown fox."
    ids = tokenizer.encode_sync(text)
    detok = IncrementalDetokenizer(tokenizer.fast)
    pieces = [detok.add([i]) for i in ids] + [detok.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_stop_string_cut_and_held_back(tokenizer: ModelTokenizer) -> None:
    ids = tokenizer.encode_sync("The quick brown fox jumps over the lazy dog.")
    detok = IncrementalDetokenizer(tokenizer.fast, stop=["fox jumps"])
    out = []
    for i in ids:
        out.append(detok.add([i]))
        if detok.is_stopped:
            break
    assert detok.is_stopped
    assert "".join(out) == "The quick brown "
    assert detok.add(ids) == ""  # nothing after a stop


def test_partial_stop_prefix_is_released_at_end(tokenizer: ModelTokenizer) -> None:
    ids = tokenizer.encode_sync("the lazy do")
    detok = IncrementalDetokenizer(tokenizer.fast, stop=["dog!"])
    emitted = "".join(detok.add([i]) for i in ids)
    assert emitted == "the lazy "  # "do" might start the stop string
    assert detok.flush() == "do"
    assert detok.text == "the lazy do"
