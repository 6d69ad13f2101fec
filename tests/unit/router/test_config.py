from __future__ import annotations

import pytest

from mixroute.errors import ConfigError
from mixroute.router.config import DEFAULT_CONFIG_PATH, load_config, parse_config
from tests.unit.router.fakes import CONFIG_YAML


def test_default_config_is_valid_and_covers_the_mmlu_pro_categories():
    config = load_config(DEFAULT_CONFIG_PATH)
    names = {c.name for c in config.categories}
    assert len(names) == 14 and {"computer science", "math", "other", "law"} <= names
    assert config.models[config.default_model].pii_policy.violations(["US_SSN"]) == ["US_SSN"]
    assert config.jailbreak.enabled and config.cache.backend == "memory"


def test_fixture_config_parses():
    config = parse_config(CONFIG_YAML)
    assert config.endpoint_for("effort") == "http://127.0.0.1:10"
    assert config.endpoint_for("small") == "http://127.0.0.1:9"
    assert config.is_auto("MoM") and not config.is_auto("small")


@pytest.mark.parametrize("mutation, expected", [
    (("default_model: small", "default_model: nope"), "default_model: unknown model 'nope'"),
    (("{model: big, score: 0.9", "{model: huge, score: 0.9"), "categories.0.model_scores.0.model"),
    (("reasoning_family: qwen3", "reasoning_family: qwen9"), "models.big.reasoning_family"),
    (("category: law", "category: lawz"), "keyword_rules.1.category"),
    (("similarity_threshold: 0.9", "similarity_threshold: 1.9"), "cache.similarity_threshold"),
    (("cache: {", "classifier: {category_refine_below: 1.5}\ncache: {"), "classifier.category_refine_below"),
    (("cache: {", "classifier: {category_refiner_weight: 0}\ncache: {"), "classifier.category_refiner_weight"),
    (("system_prompt_mode: insert", "system_prompt_mode: prepend"), "categories.1.system_prompt_mode"),
    (("cache: {", "cache: {colour: red, "), "cache.colour: unknown field"),
    (("default_endpoint: http://127.0.0.1:9", "default_endpoint: 127.0.0.1:9"), "must start with http://"),
])
def test_errors_name_the_field_and_the_fix(mutation, expected):
    old, new = mutation
    assert old in CONFIG_YAML
    with pytest.raises(ConfigError) as info:
        parse_config(CONFIG_YAML.replace(old, new, 1), "router.yaml")
    assert expected in str(info.value)
    assert "router.yaml" in str(info.value)


def test_not_yaml_and_not_a_mapping():
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config("models: [")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        parse_config("- a\n- b\n")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read router config"):
        load_config(tmp_path / "absent.yaml")


async def test_watch_follows_a_configmap_style_symlink_swap(tmp_path):
    """Kubernetes mounts `config.yaml -> ..data/config.yaml` and updates by swapping `..data`."""
    import asyncio
    import os

    from mixroute.router.reload import ConfigSource

    def version_dir(name: str, text: str) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(text)

    version_dir("..v1", CONFIG_YAML)
    os.symlink("..v1", tmp_path / "..data")
    os.symlink("..data/config.yaml", tmp_path / "config.yaml")
    source = ConfigSource(tmp_path / "config.yaml")
    stop = asyncio.Event()
    watcher = asyncio.create_task(source.watch(stop=stop))
    try:
        await asyncio.sleep(0.5)  # the watch is running
        version_dir("..v2", CONFIG_YAML.replace("default_model: small", "default_model: big", 1))
        os.symlink("..v2", tmp_path / "..data_tmp")
        os.rename(tmp_path / "..data_tmp", tmp_path / "..data")
        for _ in range(100):
            if source.current.default_model == "big":
                break
            await asyncio.sleep(0.05)
        assert source.current.default_model == "big" and source.version == 2
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 5)


async def test_watch_is_not_woken_by_other_files_in_the_config_directory(tmp_path, monkeypatch, caplog):
    # A log file next to the config: each wake-up of the watcher used to log a line into
    # it, which woke the watcher again, forever.
    import asyncio
    import logging

    from mixroute.router.reload import ConfigSource

    caplog.set_level(logging.DEBUG, logger="watchfiles")
    path = tmp_path / "router.yaml"
    path.write_text(CONFIG_YAML)
    source = ConfigSource(path)
    reloads = []
    monkeypatch.setattr(source, "reload", lambda metrics=None: reloads.append(1))
    stop = asyncio.Event()
    watcher = asyncio.create_task(source.watch(stop=stop))
    try:
        await asyncio.sleep(0.5)
        for i in range(5):
            with (tmp_path / "router.log").open("a") as log:
                log.write(f"line {i}\n")
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        assert reloads == []
        assert not [r for r in caplog.records if "change detected" in r.getMessage()]
        path.write_text(CONFIG_YAML + "\n")
        for _ in range(100):
            if reloads:
                break
            await asyncio.sleep(0.05)
        assert reloads
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 5)


def test_reload_that_changes_the_cache_backend_says_it_needs_a_restart(tmp_path, caplog):
    import logging

    from mixroute.router.reload import ConfigSource

    path = tmp_path / "router.yaml"
    path.write_text(CONFIG_YAML)
    source = ConfigSource(path)
    caplog.set_level(logging.WARNING, logger="mixroute.router.reload")
    path.write_text(CONFIG_YAML + "\ncache:\n  backend: milvus\n")
    assert source.reload() and source.current.cache.backend == "milvus"
    assert any("next restart" in r.getMessage() for r in caplog.records)
