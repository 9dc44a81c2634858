"""Storage: imports every model module so `Base.metadata` knows all tables (migrations, tests)."""

from __future__ import annotations

from amnex.accounts import models as accounts_models
from amnex.db.base import Base
from amnex.messages import models as messages_models
from amnex.privacy import audit

__all__ = ["Base", "accounts_models", "audit", "messages_models"]
