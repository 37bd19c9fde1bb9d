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


class PluginFailure(PluginError):
    """A technique's code raised, or returned what the core cannot use, in one of its hooks or in
    an object a hook returned (a loss, a router, a guidance): a fault of the plugin, not of the
    recipe. The message is one paragraph naming the technique, the hook and what went wrong;
    ``details`` (the traceback) goes into the run's ``log.txt``, and ``details_at`` names where it
    was written. ``exit_code`` is 2 while the recipe is being validated and the run set up
    (nothing trained: the recipe cannot run with this plugin), 1 once training has begun.
    ``notes`` are sentences the caller adds (what became of the run)."""

    def __init__(self, technique: str, origin: str, where: str, problem: str, details: str = ""):
        super().__init__(problem)
        self.technique = technique
        self.origin = origin
        self.where = where
        self.problem = problem
        self.details = details
        self.details_at = ""
        self.exit_code = 2
        self.notes: list[str] = []

    def __str__(self) -> str:
        problem = self.problem.rstrip()
        text = (f"technique '{self.technique}' ({self.origin}) failed in {self.where}: {problem}"
                f"{'' if problem.endswith(('.', '!', '?')) else '.'} This is a fault of the plugin, not of the recipe: "
                f"report it to the plugin's authors, or remove \"{self.technique}\" from plugins.")
        for note in self.notes:
            text += f" {note}"
        if self.details_at:
            text += f" The full traceback is in {self.details_at}."
        return text


class RunInterrupted(Exception):
    """A run stopped by a signal (Ctrl-C, SIGTERM) after it said what it saved; not an error of
    the input. The process exits with ``128 + signum``, as a shell reports a process a signal
    ended, so that a script or scheduler sees that the run did not finish."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
