"""mmgdino's exceptions: one base type, so that a caller catches every user-facing failure with one clause, and
the CLI turns each into one line and its exit code."""


class MmgdinoError(Exception):
    """Base of every error mmgdino raises for a user's input or setup; the message is one clear line."""


class UsageError(MmgdinoError, ValueError):
    """An argument is out of range or inconsistent (thresholds, labels, batch size, device, dtype, paths)."""


class ImageReadError(MmgdinoError, ValueError):
    """One image could not be read or used (unreadable, degenerate, too large); the message names it."""
