"""The CLIs drop the libraries' INFO chatter but keep their warnings and our own INFO lines."""

import logging

from zsad_jax.cli_logging import _DropLibraryInfo


def _record(path, level):
    return logging.LogRecord("absl", level, path, 1, "msg", None, None)


def test_library_info_dropped_warnings_and_own_lines_kept():
    keep = _DropLibraryInfo().filter
    assert not keep(_record("/venv/site-packages/orbax/checkpoint/_src/x.py", logging.INFO))
    assert not keep(_record("/venv/site-packages/grain/_src/python/y.py", logging.DEBUG))
    assert keep(_record("/venv/site-packages/orbax/checkpoint/_src/x.py", logging.WARNING))
    assert keep(_record("/work/zsad_jax/training/loop.py", logging.INFO))
