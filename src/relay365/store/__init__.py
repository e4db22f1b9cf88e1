"""The store: relay365's one durable store (SQLite by default, PostgreSQL for several nodes).

It owns the schema and its migrations, the encrypted MSAL token caches, each connection's
sign-in state, the log of direct sends and small settings.  Only this package runs SQL;
every database failure leaves it as ``relay365.errors.StoreError``.

    store = await Store.open("sqlite:////var/lib/relay365/relay365.db", box)
    await store.save_token_cache("contoso", cache.serialize())
    await store.close()

PostgreSQL: ``postgresql://USER@HOST/DB`` (driver psycopg 3).  To use a schema other
than ``public``: ``postgresql://USER@HOST/DB?options=-csearch_path%3Dmyschema``.
"""

from ._rows import SEND_STATUSES, ConnectionState, SendRecord, SendStatus
from ._store import Cipher, Store

__all__ = ["SEND_STATUSES", "Cipher", "ConnectionState", "SendRecord", "SendStatus", "Store"]
