"""The category refiner: when it is asked, how its opinion is averaged in, and that the
training code produces an artifact the serving code loads (on a tiny random BERT)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mixroute.errors import ConfigError
from mixroute.router.classifiers import corpora
from mixroute.router.classifiers import refiner_training as rt
from mixroute.router.classifiers.category import CategoryClassifier
from mixroute.router.classifiers.embedder import Embedder
from mixroute.router.classifiers.featurizer import Featurizer
from mixroute.router.classifiers.minilm import default_model_dir
from mixroute.router.classifiers.refiner import MAX_TOKENS, CategoryRefiner, decisive_level


class RecordingRefiner:
    """Says "law" with certainty and records what it was asked."""

    weight = 0.3
    decisive_below = 1 / (2 * (1 - weight))

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.ids: list[list[int]] = []

    def probabilities(
        self, texts: list[str], categories: list[str], token_ids: list[np.ndarray] | None = None
    ) -> np.ndarray:
        self.asked += texts
        self.ids += [ids.tolist() for ids in token_ids or []]
        out = np.zeros((len(texts), len(categories)), dtype=np.float32)
        out[:, categories.index("law")] = 1.0
        return out


@pytest.mark.parametrize("w", [0.3, 0.4, 0.5])
def test_decisive_level_bounds_every_possible_flip(w: float) -> None:
    limit = decisive_level(w)
    assert limit == pytest.approx(min(1.0, 1 / (2 * (1 - w))))
    assert CategoryRefiner(Path("/nonexistent")).decisive_below == decisive_level(0.3)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        head = rng.dirichlet(np.full(14, 0.3))
        other = rng.dirichlet(np.full(14, 0.3))
        blended = (1 - w) * head + w * other
        if head.max() >= limit:
            assert blended.argmax() == head.argmax()
    # Just under the limit a certain refiner overturns a two-way split.
    if limit == 1.0:
        return
    head = np.zeros(14)
    head[0], head[1] = limit - 1e-3, 1 - limit + 1e-3
    other = np.eye(14)[1]
    assert ((1 - w) * head + w * other).argmax() == 1


@pytest.fixture(scope="module")
def head_and_embedder() -> tuple[CategoryClassifier, RecordingRefiner, Embedder]:
    featurizer = Featurizer()
    refiner = RecordingRefiner()
    classifier = CategoryClassifier(featurizer=featurizer, refiner=refiner)  # type: ignore[arg-type]
    return classifier, refiner, Embedder(featurizer=featurizer)


def test_refiner_is_asked_only_below_the_threshold(
    head_and_embedder: tuple[CategoryClassifier, RecordingRefiner, Embedder],
) -> None:
    classifier, refiner, embedder = head_and_embedder
    sure = "Balance the chemical equation for the combustion of propane and compute the moles of CO2."
    vague = "Tell me about it."
    vectors = embedder.encode([sure, vague])
    alone = classifier.probabilities([sure, vague], vectors)  # default: refiner off
    assert refiner.asked == []
    assert alone[0].max() >= refiner.decisive_below > alone[1].max()

    refined = classifier.probabilities([sure, vague], vectors, refine_below=None)  # its own level
    assert refiner.asked == [vague]
    # It gets the featurizer's token ids along, so it need not tokenise the prompt again.
    assert refiner.ids == [classifier.featurizer.features(vague).token_ids.tolist()]
    np.testing.assert_allclose(refined[0], alone[0])
    law = np.eye(len(corpora.CATEGORIES))[corpora.CATEGORIES.index("law")]
    np.testing.assert_allclose(refined[1], 0.7 * alone[1] + 0.3 * law, atol=1e-6)

    refiner.asked.clear()
    classifier.probabilities([sure, vague], vectors, refine_below=1.0)
    assert refiner.asked == [sure, vague]

    # A caller's threshold the refiner could not lift the vague prompt to, even unanimous:
    # (1 - w) * top + w stays under it, so the prompt is not read and keeps the head's answer.
    reach = 0.7 * alone[1].max() + 0.3
    refiner.asked.clear()
    kept = classifier.probabilities([sure, vague], vectors, refine_below=None, threshold=reach + 0.01)
    assert refiner.asked == []
    np.testing.assert_allclose(kept, alone)
    classifier.probabilities([sure, vague], vectors, refine_below=None, threshold=reach - 0.01)
    assert refiner.asked == [vague]

    # The caller's weight: at 0.5 the decisive level is 1, so every prompt is read.
    refiner.asked.clear()
    half = classifier.probabilities([sure, vague], vectors, refine_below=None, weight=0.5)
    assert refiner.asked == [sure, vague]
    np.testing.assert_allclose(half, 0.5 * alone + 0.5 * law, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide random BERT with the packaged MiniLM tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    directory = tmp_path_factory.mktemp("tiny-bert")
    source = default_model_dir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, directory / name)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(directory)
    return directory


def test_fine_tuned_artifact_loads_and_has_learned(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two labels told apart by their words; a random model must learn them to pass.
    monkeypatch.setattr(rt, "EPOCHS", 12)
    monkeypatch.setattr(rt, "LEARNING_RATE", 2e-3)
    texts = [f"the court ruled on the contract case number {i}" for i in range(32)]
    texts += [f"the enzyme bound the protein in cell sample {i}" for i in range(32)]
    labels = np.repeat([0, 1], 32)
    weights = rt.fine_tune(texts, labels, 2, tiny_bert, device="cpu")
    assert not any(k.startswith("encoder.embeddings.") for k in weights)
    stem = tmp_path / "refiner"
    rt.save_refiner(stem, weights, ["jurisprudence", "college biology"], ["law", "biology"], "test")

    refiner = CategoryRefiner(stem, model_dir=tiny_bert, num_threads=1)
    probe = ["the court ruled on the contract case number 99", "the enzyme bound the protein in cell sample 99"]
    proba = refiner.probabilities(probe, list(corpora.CATEGORIES))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert [corpora.CATEGORIES[k] for k in proba.argmax(axis=1)] == ["law", "biology"]
    assert refiner.weight == pytest.approx(0.3)


def test_missing_or_mismatched_artifact_is_a_config_error(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--only refiner"):
        CategoryRefiner(tmp_path / "absent", model_dir=tiny_bert).load()
    weights = rt.fine_tune(["a b c"] * 2, np.array([0, 1]), 2, tiny_bert, device="cpu")
    stem = tmp_path / "refiner"
    rt.save_refiner(stem, weights, ["x", "y"], ["law", "biology"], "test")
    meta = json.loads(stem.with_suffix(".json").read_text())
    meta["labels"] = ["x", "y", "z"]  # the subject layer has 2 rows
    stem.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="retrain"):
        CategoryRefiner(stem, model_dir=tiny_bert).load()


@pytest.mark.slow
def test_packaged_refiner_reads_questions_offline(no_network: list[str]) -> None:
    refiner = CategoryRefiner()
    texts = [
        "Which organelle produces most of the ATP in eukaryotic cells?",
        "Under the Fourth Amendment, when may police search a car without a warrant?",
    ]
    proba = refiner.probabilities(texts, list(corpora.CATEGORIES))
    assert [corpora.CATEGORIES[k] for k in proba.argmax(axis=1)] == ["biology", "law"]
    assert no_network == []


def test_given_token_ids_match_its_own_tokenising(tiny_bert: Path, tmp_path: Path) -> None:
    # The classifier passes the featurizer's ids; the refiner must read exactly what its
    # tokenizer would: [CLS], the first max_tokens - 2 ids, [SEP], padded in a batch.
    weights = rt.fine_tune(["a b c"] * 2, np.array([0, 1]), 2, tiny_bert, device="cpu")
    stem = tmp_path / "refiner"
    rt.save_refiner(stem, weights, ["x", "y"], ["law", "biology"], "test")
    refiner = CategoryRefiner(stem, model_dir=tiny_bert, num_threads=1)
    long = " ".join(f"The appellate court reviewed clause {i} of the lease." for i in range(40))
    texts = ["Which enzyme unwinds DNA?", long, ""]
    featurizer = Featurizer(tiny_bert / "tokenizer.json")
    ids = [featurizer.features(t).token_ids for t in texts]
    assert len(ids[1]) > MAX_TOKENS  # longer than the window: cut
    categories = list(corpora.CATEGORIES)
    tokenised = refiner.probabilities(texts, categories)
    np.testing.assert_allclose(refiner.probabilities(texts, categories, ids), tokenised, atol=1e-6)
    for i, text in enumerate(texts):  # one at a time: no padding, no mask
        np.testing.assert_allclose(
            refiner.probabilities([text], categories, [ids[i]]), tokenised[i : i + 1], atol=1e-5
        )


def test_a_device_this_host_lacks_is_a_config_error(tiny_bert: Path, tmp_path: Path) -> None:
    import torch

    weights = rt.fine_tune(["a b c"] * 2, np.array([0, 1]), 2, tiny_bert, device="cpu")
    stem = tmp_path / "refiner"
    rt.save_refiner(stem, weights, ["x", "y"], ["law", "biology"], "test")
    for device in ("tpu", "cuda:99", *(() if torch.cuda.is_available() else ("cuda",))):
        with pytest.raises(ConfigError, match="no such device"):
            CategoryRefiner(stem, model_dir=tiny_bert, device=device).load()


@pytest.mark.gpu
def test_packaged_refiner_on_the_gpu_agrees_with_the_cpu() -> None:
    texts = [
        "Which organelle produces most of the ATP in eukaryotic cells?",
        "Under the Fourth Amendment, when may police search a car without a warrant?",
        "Compute the derivative of x^3 sin(x).",
    ]
    categories = list(corpora.CATEGORIES)
    on_cpu = CategoryRefiner().probabilities(texts, categories)
    gpu = CategoryRefiner(device="cuda")
    np.testing.assert_allclose(gpu.probabilities(texts, categories), on_cpu, atol=1e-3)
    # One prompt at a time, with the featurizer's ids, is the router's call: it replays
    # the CUDA graph of that prompt's length, captured at load.
    assert sorted(gpu._graphs) == list(range(3, gpu.max_tokens + 1))
    featurizer = Featurizer()
    for i, text in enumerate(texts):
        alone = gpu.probabilities([text], categories, [featurizer.features(text).token_ids])
        np.testing.assert_allclose(alone, on_cpu[i : i + 1], atol=1e-3)
