"""mmgdino's exceptions: one base type, so that a caller catches every user-facing failure with one clause, and
the CLI turns each into one line and its exit code."""


class MmgdinoError(Exception):
    """Base of every error mmgdino raises for a user's input or setup; the message is one clear line."""


class UsageError(MmgdinoError, ValueError):
    """An argument is out of range or inconsistent (thresholds, labels, batch size, device, dtype, paths)."""


class ImageReadError(MmgdinoError, ValueError):
    """One image could not be read or used (unreadable, degenerate, too large); the message names it."""


# What each exit code of the commands means (their --help shows it).
EXIT_CODES = """exit codes:
  0    done
  1    some images failed (each is named on its own line); the others were written
  2    usage or setup error (bad option, missing file, model not found), reported before any work
  130  interrupted (Ctrl-C); what was written is consistent: rerun the same command to finish

Set MMGDINO_DEBUG=1 (or pass --debug) to see the traceback behind an error."""
