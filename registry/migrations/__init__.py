"""The registry's database schema, as ordered SQL migrations (append-only; add, never edit)."""
