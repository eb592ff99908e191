"""What the node's and the coordinator's SQLite databases share: the schema migration runner.

``rqdb.migrate`` applies numbered migrations (SQL scripts or async steps) in one transaction and
refuses a database written by a newer version. Neither service imports the other; both import
this (and ``verifier``).
"""

from rqdb.migrate import Migration, SchemaError, migrate, split_sql

__all__ = ["Migration", "SchemaError", "migrate", "split_sql"]
