"""Configuration: schema and loading."""

from vitals_agent.config.schema import Config, DeviceConfig, load_config, parse_config

__all__ = ["Config", "DeviceConfig", "load_config", "parse_config"]
