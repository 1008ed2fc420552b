"""The one exception type for bad user input: the CLI turns it into `error: ...` and exit 2."""


class UserError(Exception):
    """Bad input from the user: a recipe field, a file, a host. The message names it and the fix."""


class StageFailed(UserError):
    """A stage's check failed (a parity gate, an unreachable target); also exit code 2."""
