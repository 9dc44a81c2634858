"""Storage: which database errors mean "the server is away or full, retry" (503
`database_unavailable`, the accept path's retries) and which are bugs (500)."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DBAPIError

from amnex.db.engine import is_transient_db_error, is_transient_sqlstate


class DriverError(Exception):
    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "message", "transient"),
    [
        ("53300", "sorry, too many clients already", True),
        ("53100", "could not extend file: No space left on device", True),
        ("57P01", "terminating connection due to administrator command", True),
        ("57P03", "the database system is starting up", True),
        ("08006", "connection failure", True),
        ("42601", "syntax error at or near", False),
        ("23505", "duplicate key value violates unique constraint", False),
        (None, "database is locked", True),
        (None, "no such table: messages", False),
    ],
)
def test_a_server_away_or_full_is_transient_and_a_bad_statement_is_not(
    sqlstate: str | None, message: str, transient: bool
) -> None:
    error = DBAPIError("SELECT 1", {}, DriverError(message, sqlstate))
    assert is_transient_db_error(error) is transient
    if sqlstate is not None:
        assert is_transient_sqlstate(sqlstate) is transient
