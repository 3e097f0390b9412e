"""Log hygiene for the command-line tools: our INFO lines, not the libraries' chatter."""

from __future__ import annotations

import logging

# Libraries logging through absl.logging whose INFO records (one per checkpoint file, thread
# pool, ...) drown the progress lines. jax logs through python loggers named "jax.*" instead.
NOISY_PACKAGES = ("/orbax/", "/grain/")


class _DropLibraryInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        path = record.pathname.replace("\\", "/")
        return not any(package in path for package in NOISY_PACKAGES)


def quiet_library_info() -> None:
    """Drops INFO/DEBUG records emitted from orbax, grain and jax internals (warnings stay)."""
    logging.getLogger("jax").setLevel(logging.WARNING)
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _DropLibraryInfo) for f in logger.filters):
        logger.addFilter(_DropLibraryInfo())
