"""Errors a user can fix. The CLI prints their message (one paragraph naming the file, table,
key or sample and what to do) and exits with code 2."""


class UserError(Exception):
    """Base of every error caused by input rather than by a bug."""


class RecipeError(UserError):
    """A recipe that cannot run: bad TOML, unknown key, wrong type, unknown plugin, conflict."""


class PluginError(UserError):
    """A plugin that cannot be loaded or that conflicts with another."""


class DataError(UserError):
    """Training data that cannot be read, or too much bad data in a window."""


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated or does not match the recipe."""


class WeightsNotFoundError(UserError):
    """Pretrained weights (teacher, text encoder) that are not available on this machine."""
