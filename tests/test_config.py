from pathlib import Path

import pytest

from llmspool.control.modelsfile import load_models
from llmspool.shared.config import DEFAULT_MODEL, default_config, load_config, parse_config
from llmspool.shared.errors import ConfigError, ModelNotFound


def test_default_config_serves_gemma_on_llama_cpp() -> None:
    config = default_config()
    assert config.names() == [DEFAULT_MODEL]
    assert config.model(DEFAULT_MODEL).backend == "llama_cpp"


def test_no_file_means_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(None).names() == [DEFAULT_MODEL]


def test_reads_models_file(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(
        '[[models]]\nname = "a"\nbackend = "fake"\nmax_concurrency = 4\n'
        "[models.options]\nttft_ms = 10\nitl_ms = 2\n"
    )
    model = load_models(path).model("a")
    assert (model.backend, model.max_concurrency, model.options["itl_ms"]) == ("fake", 4, 2)


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        (
            '[[models]]\nname = "a"\nbackend = "fake"\nmax_concurency = 4\n',
            "models[a].max_concurency: unknown key",
        ),
        (
            '[[models]]\nname = "a"\nbackend = "fake"\n[models.options]\nttft = 1\n',
            "options.ttft: unknown key",
        ),
        (
            '[[models]]\nname = "a"\nbackend = "fake"\n[models.options]\nitl_ms = -1\n',
            "options.itl_ms",
        ),
        ('[[models]]\nname = "a"\nbackend = "nope"\n', "unknown backend 'nope'"),
        (
            '[[models]]\nname = "a"\nbackend = "fake"\nmax_concurrency = 0\n',
            "models[a].max_concurrency",
        ),
        (
            '[[models]]\nname = "a"\nbackend = "fake"\nmin_workers = 3\nmax_workers = 2\n',
            "min_workers",
        ),
        (
            '[[models]]\nname = "a"\nbackend = "fake"\n[[models]]\nname = "a"\nbackend = "fake"\n',
            "repeated: a",
        ),
        ('[[models]]\nname = "a b"\nbackend = "fake"\n', "name"),
        ("models = 3\n", "models"),
        ("[[models]\n", "not valid TOML"),
    ],
)
def test_bad_files_are_refused_naming_the_key(tmp_path: Path, toml: str, named: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_models(path)
    assert named in info.value.message


def test_unknown_model_is_model_not_found() -> None:
    with pytest.raises(ModelNotFound):
        parse_config({"models": [{"name": "a", "backend": "fake"}]}).model("b")
