"""Errors of the ``jisr`` tools themselves, in Jisr's one exception tree.

Rules: each message names the file or process that failed (and where a process's log is),
and what to do, so that a failed command can be diagnosed from the one line it prints::

    JisrError
    ├── ChildProcessFailed        a child process failed, or did not finish in time
    │   └── ChildNotReady         it exited or stayed silent before it was ready
    └── KeyFileError              a key file named on the command line cannot be used
        (a KeyStoreError and a ConfigError)
"""

from __future__ import annotations

from certs.errors import KeyStoreError
from config.errors import ConfigError, JisrError


class ChildProcessFailed(JisrError):
    """A child process exited with an error, did not finish in time or announced too little."""


class ChildNotReady(ChildProcessFailed):
    """A child process exited, or stayed silent, before it said that it was ready."""


class KeyFileError(KeyStoreError, ConfigError):
    """A private-key file named on the command line cannot be used as it is.

    Both a key-store error (the key is missing, locked or unsuitable) and a configuration
    error (the operator named the wrong file or variable), so either handler catches it.
    """
