from __future__ import annotations

from pathlib import Path

import pytest

from mixroute.frontend.preprocess import ModelTokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mixroute.testing.tiny_model import build_tokenizer

    path = tmp_path_factory.mktemp("tok")
    build_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> ModelTokenizer:
    return ModelTokenizer.load_sync(str(tokenizer_dir))
