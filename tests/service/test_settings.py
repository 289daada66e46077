"""Settings: environment names, unprefixed REDIS_URL, refusal of unsafe admin tokens."""

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_env_prefix_and_unprefixed_redis_url(monkeypatch):
    monkeypatch.setenv("LEVI_MAX_BATCH", "16")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/2")
    monkeypatch.delenv("LEVI_REDIS_URL", raising=False)
    s = Settings()
    assert s.max_batch == 16 and s.redis_url == "redis://cache:6379/2"
    monkeypatch.setenv("LEVI_REDIS_URL", "redis://other:6379/0")
    assert Settings().redis_url == "redis://other:6379/0"


@pytest.mark.parametrize("token", ["short", "changeme", "aaaaaaaaaaaaaaaaaaaa", "password"])
def test_unsafe_admin_tokens_are_refused(token):
    with pytest.raises(ValidationError, match="LEVI_ADMIN_TOKEN"):
        Settings(admin_token=token, redis_url=None)


def test_bad_redis_url_is_refused_with_an_example():
    with pytest.raises(ValidationError, match="redis://127.0.0.1:6379/0"):
        Settings(redis_url="127.0.0.1:6379")


def test_admin_token_is_secret_and_defaults_off():
    s = Settings(admin_token="Zq8-vLk3_PxW91aaRt", redis_url=None)
    assert "Zq8" not in repr(s)
    assert Settings(redis_url=None).admin_token is None


def test_settings_errors_name_the_variable_and_hide_the_value():
    from service.settings import describe_settings_error

    with pytest.raises(ValidationError) as info:
        Settings(admin_token="tiny-secret", max_batch=0, redis_url=None)
    text = describe_settings_error(info.value)
    assert "LEVI_ADMIN_TOKEN" in text and "LEVI_MAX_BATCH" in text
    assert "tiny-secret" not in text


def test_compilation_cache_is_on_by_default_in_the_user_cache_and_can_be_turned_off(
    monkeypatch, tmp_path
):
    monkeypatch.delenv("LEVI_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("LEVI_CACHE_DIR", str(tmp_path / "cache"))
    assert Settings(redis_url=None).compilation_cache_path() == tmp_path / "cache" / "xla"
    monkeypatch.setenv("LEVI_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    assert Settings(redis_url=None).compilation_cache_path() == tmp_path / "mine"
    monkeypatch.setenv("LEVI_COMPILATION_CACHE", "0")
    assert Settings(redis_url=None).compilation_cache_path() is None


def test_an_unwritable_compilation_cache_is_a_warning_not_a_failure(tmp_path, caplog):
    from model.compilation_cache import enable_compilation_cache

    (tmp_path / "a-file").write_text("")
    with caplog.at_level("WARNING", logger="model.compilation_cache"):
        assert enable_compilation_cache(tmp_path / "a-file" / "xla") is False
    assert "compilation cache off" in caplog.text and "LEVI_COMPILATION_CACHE=0" in caplog.text


def test_slow_client_limits_are_settings_with_safe_defaults(monkeypatch):
    from service.settings import describe_settings_error

    defaults = Settings(redis_url=None)
    assert defaults.receive_timeout_s == 10.0 and defaults.max_connections == 1000
    monkeypatch.setenv("LEVI_RECEIVE_TIMEOUT_S", "2.5")
    monkeypatch.setenv("LEVI_MAX_CONNECTIONS", "64")
    s = Settings(redis_url=None)
    assert s.receive_timeout_s == 2.5 and s.max_connections == 64
    monkeypatch.setenv("LEVI_RECEIVE_TIMEOUT_S", "0")
    monkeypatch.setenv("LEVI_MAX_CONNECTIONS", "0")
    with pytest.raises(ValidationError) as info:
        Settings(redis_url=None)
    text = describe_settings_error(info.value)
    assert "LEVI_RECEIVE_TIMEOUT_S" in text and "LEVI_MAX_CONNECTIONS" in text
