"""Errors of the offline auditor, under the project's one exception tree.

A failed *check* is not an exception: it is a verdict in the report (:mod:`audit.report`). These
errors are for input the auditor cannot work with at all::

    ValidationError (config.errors)
    └── AuditError                     Client.BadRequest   no such path, unreadable file, bad option
        └── ArchiveFormatError         Client.BadRequest   not a Jisr archive or evidence container
"""

from __future__ import annotations

from config.errors import ValidationError


class AuditError(ValidationError):
    """The auditor was given something it cannot read: say what, and what to give instead."""


class ArchiveFormatError(AuditError):
    """A file is not an archive or evidence container of the format in docs/archives-and-audit."""
