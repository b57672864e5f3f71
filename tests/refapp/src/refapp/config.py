"""Settings, read only from REFAPP_* environment variables."""

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field


class ConfigError(Exception):
    pass


DB_REQUIRED = ("REFAPP_DB_NAME", "REFAPP_DB_USER", "REFAPP_DB_PASSWORD")
SERVE_REQUIRED = ("REFAPP_INSTANCE", "REFAPP_DATA_DIR", "REFAPP_API_TOKEN", *DB_REQUIRED)


@dataclass(frozen=True)
class Config:
    listen_host: str
    listen_port: int
    instance: str
    data_dir: str
    db_host: str
    db_port: int
    db_name: str
    db_user: str
    db_password: str = field(repr=False)
    api_token: str = field(repr=False)
    previous_tokens: tuple[str, ...] = field(repr=False)
    features: tuple[str, ...]
    log_level: str


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _port(name: str, value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ConfigError(f"{name} must be a TCP port number, got {value!r}")
    return int(value)


def load(env: Mapping[str, str], required: tuple[str, ...] = SERVE_REQUIRED) -> Config:
    def get(name: str, default: str = "") -> str:
        return env.get(name, "").strip() or default

    missing = [name for name in required if not get(name)]
    if missing:
        raise ConfigError(f"missing required setting(s): {', '.join(missing)}")

    host, sep, port = get("REFAPP_LISTEN", "127.0.0.1:8080").rpartition(":")
    if not sep or not host:
        raise ConfigError("REFAPP_LISTEN must look like host:port")
    log_level = get("REFAPP_LOG_LEVEL", "INFO").upper()
    if not isinstance(logging.getLevelName(log_level), int):
        raise ConfigError(f"REFAPP_LOG_LEVEL is not a log level: {log_level!r}")

    return Config(
        listen_host=host.strip("[]"),
        listen_port=_port("REFAPP_LISTEN", port),
        instance=get("REFAPP_INSTANCE"),
        data_dir=get("REFAPP_DATA_DIR"),
        db_host=get("REFAPP_DB_HOST", "127.0.0.1"),
        db_port=_port("REFAPP_DB_PORT", get("REFAPP_DB_PORT", "5432")),
        db_name=get("REFAPP_DB_NAME"),
        db_user=get("REFAPP_DB_USER"),
        db_password=get("REFAPP_DB_PASSWORD"),
        api_token=get("REFAPP_API_TOKEN"),
        previous_tokens=_csv(get("REFAPP_API_TOKEN_PREVIOUS")),
        features=_csv(get("REFAPP_FEATURES")),
        log_level=log_level,
    )
