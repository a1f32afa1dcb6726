"""The one exception type users see for bad input: configs, targets, paths, models."""


class ConfigError(ValueError):
    """Bad user input, reported as one line naming the key and what is allowed."""
