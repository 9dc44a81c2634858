"""Privacy: describing a failure in a log line without the data it was handling.

Exception messages can quote the values that failed — a driver error repeats part of a
message body, an SMTP reply repeats the recipient. Where an error may carry such values, log
this summary (the exception's type and where it was raised) instead of the exception itself.
"""

from __future__ import annotations

import traceback


def failure_summary(exc: BaseException) -> str:
    """`TypeName at module.py:123 in function`, from the innermost frame; never the message."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if frames:
        last = frames[-1]
        where = f" at {last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name}"
    cause = exc.__cause__ or exc.__context__
    because = f" (from {type(cause).__name__})" if cause is not None else ""
    return f"{type(exc).__name__}{where}{because}"
