"""Storage: imports every model module so `Base.metadata` knows all tables (migrations, tests)."""

from __future__ import annotations

from amnex.accounts import models as accounts_models
from amnex.carriers import leases as bind_leases
from amnex.carriers import models as carriers_models
from amnex.db.base import Base
from amnex.messages import models as messages_models
from amnex.privacy import audit
from amnex.privacy import content as content_keys
from amnex.privacy import keys as data_keys
from amnex.privacy import requests as subject_requests
from amnex.privacy import retention as retention_models
from amnex.receipts import models as receipts_models
from amnex.recipients import models as recipients_models
from amnex.webhooks import models as webhooks_models

__all__ = [
    "Base",
    "accounts_models",
    "audit",
    "bind_leases",
    "carriers_models",
    "content_keys",
    "data_keys",
    "messages_models",
    "receipts_models",
    "recipients_models",
    "retention_models",
    "subject_requests",
    "webhooks_models",
]
