"""`yaie serve` settings: precedence CLI > env > YAML > defaults, validation messages, --help coverage."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from yaie.server.settings import (
    ServeSettings,
    SettingsError,
    add_settings_arguments,
    cli_values,
    load_settings,
)

YAML = """
model:
  name: /models/tiny.gguf
  dtype: float32
scheduler:
  max_num_seqs: 8
  max_num_batched_tokens: 256
memory:
  block_size: 32
  kv_cache_memory: 0.5
server:
  port: 9000
  shutdown_timeout_s: 3
"""


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(YAML)
    return path


def test_defaults() -> None:
    settings = load_settings({}, environ={})
    assert settings.host == "127.0.0.1" and settings.port == 8000 and settings.api_key is None
    engine = settings.engine_config()
    assert engine.model.model is None and engine.scheduler.max_num_seqs == 64
    assert engine.cache.block_size is None and engine.cache.prefault  # block size: the device picks


def test_yaml_sections_fill_the_configs(config_file: Path) -> None:
    settings = load_settings({}, config_file, environ={})
    engine = settings.engine_config()
    assert engine.model.model == "/models/tiny.gguf" and engine.model.dtype == "float32"
    assert engine.scheduler.max_num_seqs == 8 and engine.scheduler.max_num_batched_tokens == 256
    assert engine.cache.block_size == 32 and engine.cache.kv_cache_memory == 0.5
    server = settings.server_config()
    assert server.port == 9000 and server.shutdown_timeout_s == 3


def test_precedence_cli_over_env_over_yaml(config_file: Path) -> None:
    environ = {"YAIE_MAX_NUM_SEQS": "4", "YAIE_PORT": "9100", "YAIE_API_KEY": "secret"}
    args = parse(["--port", "9200", "--no-prefix-caching"])
    settings = load_settings(cli_values(args), config_file, environ=environ)
    assert settings.port == 9200  # CLI beats env and YAML
    assert settings.max_num_seqs == 4  # env beats YAML
    assert settings.block_size == 32  # YAML beats default
    assert settings.api_key == "secret"
    assert settings.enable_prefix_caching is False


def test_config_path_from_environment(config_file: Path) -> None:
    assert load_settings({}, environ={"YAIE_CONFIG": str(config_file)}).port == 9000


def test_positional_model_and_flags_parse() -> None:
    args = parse(["/m.gguf", "--max-model-len", "512", "--shutdown-timeout", "2.5", "--log-content"])
    settings = load_settings(cli_values(args), environ={})
    assert settings.model == "/m.gguf" and settings.max_model_len == 512
    assert settings.shutdown_timeout_s == 2.5 and settings.log_content is True


def test_invalid_value_names_option_and_source() -> None:
    with pytest.raises(SettingsError, match=r"max_num_seqs \(from environment YAIE_MAX_NUM_SEQS\)"):
        load_settings({}, environ={"YAIE_MAX_NUM_SEQS": "many"})
    with pytest.raises(SettingsError, match=r"port \(from command line --port\)"):
        load_settings(cli_values(parse(["--port", "70000"])), environ={})


def test_engine_config_checks_surface_as_settings_errors() -> None:
    with pytest.raises(SettingsError, match="block_size must be a positive power of two"):
        load_settings({"block_size": 24}, environ={})


def test_unknown_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("scheduler:\n  max_seqs: 3\n")
    with pytest.raises(SettingsError, match=r"unknown key 'scheduler.max_seqs'.*scheduler.max_num_seqs"):
        load_settings({}, path, environ={})
    path.write_text("engine:\n  x: 1\n")
    with pytest.raises(SettingsError, match="unknown section 'engine'"):
        load_settings({}, path, environ={})


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read config file"):
        load_settings({}, tmp_path / "absent.yaml", environ={})


def test_help_documents_every_option() -> None:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    text = parser.format_help()
    for name, info in ServeSettings.model_fields.items():
        assert f"YAIE_{name.upper()}" in text, name
        assert info.description
