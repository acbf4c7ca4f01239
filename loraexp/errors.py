"""Error hierarchy of loraexp.

Every error a user can cause derives from :class:`LoraexpError` and from the builtin it
refines (as PEFT's ``src/peft/utils/error.py`` does), so ``except ValueError`` still works.
The CLI turns any :class:`LoraexpError` raised before training into exit code 2.
"""

from __future__ import annotations


class LoraexpError(Exception):
    """Base class of every error raised by loraexp on purpose."""


class ConfigError(LoraexpError, ValueError):
    """A config field has a bad value, or an unknown key was given.

    ``problems`` holds every problem found, so a user fixes them all at once.
    """

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} problems in the config:\n" + "\n".join(
                f"  - {p}" for p in self.problems
            )
        super().__init__(message)


class DataError(LoraexpError, FileNotFoundError):
    """A data directory or file is missing or does not have the expected columns/rows."""


class ModelError(LoraexpError, ValueError):
    """A model id, alias or path cannot be resolved or loaded."""


class VerificationError(LoraexpError, RuntimeError):
    """A run-time invariant broke (base weights changed, non-finite LoRA gradients...)."""


class NonFiniteError(LoraexpError, FloatingPointError):
    """Training produced a NaN/inf loss or gradient.

    ``step`` is the optimizer step (1-based) that was about to be taken: the weights were not
    updated with the bad gradient, so every checkpoint saved before it is good. ``reason``
    names the loss or the first offending parameter.
    """

    def __init__(self, step: int, reason: str):
        self.step = step
        self.reason = reason
        super().__init__(f"non-finite training at optimizer step {step}: {reason}")


class DiskFullError(LoraexpError, OSError):
    """The disk holding the results is full (ENOSPC). The run that hit it is recorded
    ``failed`` (its partial checkpoint removed) and the sweep stops: every later run would hit
    it too. ``path`` is the directory written to, ``free_bytes`` what was free when it stopped.
    The CLI exits 1: free space and rerun the same command (with ``--resume``)."""

    def __init__(self, path: str, free_bytes: int | None, run_name: str | None = None):
        self.path, self.free_bytes, self.run_name = path, free_bytes, run_name
        free = f"{free_bytes:,} bytes free" if free_bytes is not None else "free space unknown"
        during = f" while run {run_name} was writing" if run_name else ""
        super().__init__(f"the disk holding {path!r} is full ({free}){during}; the sweep stopped. Free space (or set "
                         "another --output-dir), then rerun the same command with --resume: finished runs are "
                         "skipped and the interrupted one continues from its last complete checkpoint")
