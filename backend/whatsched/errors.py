"""Errors that stop a command with one clear sentence instead of a traceback."""


class ConfigError(Exception):
    """Bad configuration or environment: the message is shown to the operator as is."""
