"""Named-model registry: a name maps to one JSON file in ``model_configs/`` (or one you register)."""

from __future__ import annotations

from pathlib import Path

from .config import CLIPSConfig, ConfigError, load_config

_CONFIG_DIR = Path(__file__).parent / "model_configs"
_REGISTRY: dict[str, Path] = {p.stem: p for p in sorted(_CONFIG_DIR.glob("*.json"))}


def list_models() -> list[str]:
    """Names of every registered model config, sorted."""
    return sorted(_REGISTRY)


def register_model_config(path: str | Path, name: str | None = None) -> str:
    """Register a JSON config file under ``name`` (default: the file's stem); returns the name.

    The file is validated now so a bad config fails at registration, not at first use.
    """
    path = Path(path)
    cfg = load_config(path)
    name = name or path.stem
    if name in _REGISTRY and _REGISTRY[name].resolve() != path.resolve():
        raise ConfigError(f"model name {name!r} is already registered to {_REGISTRY[name]}")
    if cfg.name != name:
        raise ConfigError(f"{path}: its 'name' is {cfg.name!r} but it is being registered as {name!r}")
    _REGISTRY[name] = path
    return name


def get_model_config(name: str) -> CLIPSConfig:
    """The :class:`CLIPSConfig` of a registered model name, or of a model JSON file at path ``name``."""
    if name in _REGISTRY:
        return load_config(_REGISTRY[name])
    if Path(name).is_file():
        return load_config(name)
    raise KeyError(f"unknown model {name!r} (not a registered name nor a model JSON file); "
                   f"registered models: {', '.join(list_models())}")
