-- Timestamp batches cover runs of records; records are never updated.
--
-- Until now the timestamper wrote each record's batch id and inclusion proof into the record
-- (an UPDATE per record: a new row version, every index entry again, twice the table's size
-- until vacuumed). From now on a batch covers the consecutive records first_seq ..
-- first_seq + size - 1 and keeps their record hashes (leaves: 32 bytes each, in sequence
-- order), from which any record's inclusion proof is computed when it is read. The timestamper
-- inserts one row per batch and message_log takes no UPDATE at all.
--
-- Records stamped before this migration keep batch_id and batch_proof and are read as they
-- are. A record is timestamped when its seq is at most message_log_timestamped_through():
-- records are committed in sequence order and stamped oldest first, so the stamped ones are
-- always the start of the log.

ALTER TABLE timestamp_batches
    ADD COLUMN first_seq bigint,
    ADD COLUMN leaves bytea,
    ADD CONSTRAINT timestamp_batches_range CHECK (
        (first_seq IS NULL) = (leaves IS NULL)
        AND (first_seq IS NULL OR (first_seq >= 1 AND length(leaves) = 32 * size)));

-- Hashes do not compress.
ALTER TABLE timestamp_batches ALTER COLUMN leaves SET STORAGE EXTERNAL;

CREATE UNIQUE INDEX timestamp_batches_first_seq ON timestamp_batches (first_seq)
    WHERE first_seq IS NOT NULL;

-- The indexes the per-record update needed: every new record would only add a NULL to them.
DROP INDEX message_log_untimestamped;
DROP INDEX message_log_batch;
CREATE INDEX message_log_batch ON message_log (batch_id) WHERE batch_id IS NOT NULL;

CREATE FUNCTION message_log_timestamped_through() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT greatest(
        (SELECT first_seq + size - 1 FROM timestamp_batches
         WHERE first_seq IS NOT NULL ORDER BY first_seq DESC LIMIT 1),
        (SELECT max(seq) FROM message_log
         WHERE batch_id = (SELECT max(batch_id) FROM message_log WHERE batch_id IS NOT NULL)),
        0)
$$;

CREATE FUNCTION message_log_no_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'message_log is append-only: record % cannot be changed', OLD.seq
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

DROP TRIGGER message_log_content_fixed ON message_log;
DROP TRIGGER message_log_timestamped_once ON message_log;
DROP FUNCTION message_log_refuse_update();

CREATE TRIGGER message_log_no_update
    BEFORE UPDATE ON message_log
    FOR EACH ROW EXECUTE FUNCTION message_log_no_update();
