"""Scoped API keys and the audit log: `keys` (who may call the service, with which role,
on which collections) and `audit` (what they did). Both live under `<index_dir>/access/`
and touch nothing else, so `rag keys` and `rag audit` work while a server runs.

Left out: enforcing the roles (the HTTP service checks a key's role and collections) and
rate limiting itself (a key only carries its rate).
"""

from rag.access.audit import AuditLog
from rag.access.keys import ROLES, Key, KeyStore, Role

__all__ = ["ROLES", "AuditLog", "Key", "KeyStore", "Role"]
