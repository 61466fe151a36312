"""The audit key: a random secret that Cairn's components send with every `audit_log` write
(header X-Cairn-Audit-Key) and PocketBase checks (pb_hooks/audit.pb.js, as
CAIRN_AUDIT_KEY), so that no row of the audit log can be made by hand, through the REST
API or the Admin UI, even by a superuser. Kept in secrets/audit.key (0600), made on first
use by whoever starts PocketBase.
"""

from __future__ import annotations

import secrets

from cairn_common.filemodes import write_private
from cairn_common.layout import DataLayout

HEADER = "X-Cairn-Audit-Key"
ENV = "CAIRN_AUDIT_KEY"


def ensure(layout: DataLayout) -> str:
    """The key, made (and written 0600) if there is none yet."""
    current = read(layout)
    if current:
        return current
    key = secrets.token_urlsafe(32)
    write_private(layout.audit_key, key + "\n")
    return key


def read(layout: DataLayout) -> str | None:
    try:
        return layout.audit_key.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None
