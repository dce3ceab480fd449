"""SQL migrations of the node's message log, applied with
``storage.migrations.apply_migrations(conn, "security_server.log_migrations")``."""
