-- Storage of the message log's evidence columns. They hold DER structures, digests and
-- canonical JSON full of hex digests, which hardly compress: PostgreSQL's default (try to
-- compress, then move out of line) spent more CPU on every insert than it saved in space.
-- EXTERNAL keeps them uncompressed, out of line when the row is large. Bodies keep the default:
-- message bodies usually compress well. Only rows written from now on are affected.
ALTER TABLE message_log
    ALTER COLUMN record SET STORAGE EXTERNAL,
    ALTER COLUMN signed_part SET STORAGE EXTERNAL,
    ALTER COLUMN signature SET STORAGE EXTERNAL,
    ALTER COLUMN proof SET STORAGE EXTERNAL,
    ALTER COLUMN certificates SET STORAGE EXTERNAL,
    ALTER COLUMN ocsp SET STORAGE EXTERNAL;
