"""Loading and validating gotel's collector-shaped YAML config (DESIGN.md section 5)."""

from gotel.config.loader import default_config_text, load_config, load_default_config
from gotel.config.model import ComponentEntry, Config, ConfigError, PipelineSpec
from gotel.config.source import Issue
from gotel.config.types import Duration, parse_duration

__all__ = [
    "ComponentEntry",
    "Config",
    "ConfigError",
    "Duration",
    "Issue",
    "PipelineSpec",
    "default_config_text",
    "load_config",
    "load_default_config",
    "parse_duration",
]
