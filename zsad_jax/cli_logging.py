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


class _Plain(logging.Formatter):
    """"HH:MM:SS message" (warnings and errors say so) instead of absl's long prefix."""

    def __init__(self):
        super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            time, _, message = text.partition(" ")
            text = f"{time} {record.levelname.lower()}: {message}"
        return text


def plain_logs(level: int = logging.INFO) -> None:
    """Our INFO lines, plain and short, on stderr (call inside an absl `main`)."""
    from absl import logging as absl_logging

    logging.getLogger().setLevel(level)
    absl_logging.get_absl_handler().setFormatter(_Plain())
    quiet_library_info()
