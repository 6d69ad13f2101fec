"""The packaged SmolLM2-135M-Instruct answers a factual question (slow: converts/loads a real model)."""

from __future__ import annotations

import pytest
import torch

from mixroute.engine.config import EngineConfig
from mixroute.engine.llm_engine import LLMEngine
from mixroute.engine.model.smollm2 import default_model_path
from mixroute.protocol.messages import GenerateRequest, SamplingParams


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france() -> None:
    from transformers import AutoTokenizer

    path = default_model_path()
    assert default_model_path() == path  # converted once, reused
    tokenizer = AutoTokenizer.from_pretrained(path)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    token_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    engine = LLMEngine(EngineConfig(model_path=str(path), device="cuda" if torch.cuda.is_available() else "cpu"))
    engine.add_request(GenerateRequest(request_id="q", token_ids=token_ids, sampling=SamplingParams(max_tokens=40)))
    out: list[int] = []
    while engine.has_work:
        for _, frame in engine.step():
            out.extend(frame.token_ids)
    text = tokenizer.decode(out, skip_special_tokens=True)
    assert "Paris" in text, text
