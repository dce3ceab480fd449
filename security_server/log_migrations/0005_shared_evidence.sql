-- The signer's certificates and the stapled OCSP response are stored once, by digest.
--
-- Until now every record carried its certificate chain and OCSP response inline (about 1.8 of
-- a record's 5.7 KB), although they are the same for thousands of records in a row: they
-- change only when a signing key or an OCSP response is renewed. From now on each value is
-- stored once in log_evidence, keyed by its SHA-256 (the digest the canonical record already
-- names in certificates_sha256 and ocsp_sha256), and a record keeps only the digests:
-- certificate_digests (one per certificate, in chain order) and ocsp_digest.
--
-- Records written before this migration keep their inline certificates and ocsp and are read
-- as they are; those two columns are NULL for records written from now on. Every row has
-- either both inline values or both digests, never a mix (message_log_evidence_form; added
-- NOT VALID, because every older row satisfies it by construction — both inline columns were
-- NOT NULL and the digest columns did not exist — and checking it would read the whole table
-- while the node starts).
--
-- Writing: the writer inserts a value (INSERT ... ON CONFLICT) and only then, after that
-- statement has answered, copies the records that name it; it remembers the digests it has
-- stored, so a batch of records whose values are already stored costs no extra statement.
-- Reading: a reader fetches the values a page of rows names in one statement and checks that
-- each value's SHA-256 equals its digest; a missing or changed value is reported like any
-- other integrity failure of the log.
--
-- Pruning: each value keeps last_seq, a sequence number at or after every record that names
-- it. When the writer stores a value, or first names an already-stored value again, it sets
-- last_seq to the batch's last seq plus a margin (the writer's EVIDENCE_MARGIN records), never
-- lowering it; it names the value again without a statement until its records pass that
-- margin. A value whose last_seq is below the oldest record left in message_log is named by
-- no record: the retention job deletes those values right after deleting expired records, a
-- statement over log_evidence alone (one row per distinct value, a few per key or OCSP
-- renewal) that never scans message_log. A value outlives its last record by at most the
-- margin's worth of records.
--
-- Protections, as for message_log: digest and value never change (the digest is checked
-- against the value on insert); last_seq may only grow; a value may be deleted only once its
-- last_seq is below the oldest record left (and never while message_log is empty, since a
-- record naming it may be about to be written); TRUNCATE is refused.

CREATE TABLE log_evidence (
    -- SHA-256 of value
    digest bytea PRIMARY KEY CHECK (length(digest) = 32),
    -- a certificate (DER) or an OCSP response (DER)
    value bytea NOT NULL,
    -- no record after this one names the value (see above)
    last_seq bigint NOT NULL CHECK (last_seq >= 1),
    CHECK (digest = sha256(value))
);

-- DER does not compress.
ALTER TABLE log_evidence ALTER COLUMN value SET STORAGE EXTERNAL;

ALTER TABLE message_log
    ALTER COLUMN certificates DROP NOT NULL,
    ALTER COLUMN ocsp DROP NOT NULL,
    ADD COLUMN certificate_digests bytea[],
    ADD COLUMN ocsp_digest bytea;

ALTER TABLE message_log ADD CONSTRAINT message_log_evidence_form CHECK (
    CASE WHEN certificates IS NOT NULL
    THEN ocsp IS NOT NULL AND certificate_digests IS NULL AND ocsp_digest IS NULL
    ELSE ocsp IS NULL AND certificate_digests IS NOT NULL AND ocsp_digest IS NOT NULL
         AND length(ocsp_digest) = 32
    END
) NOT VALID;

CREATE FUNCTION log_evidence_delete_unused() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.last_seq >= coalesce((SELECT min(seq) FROM message_log), 0) THEN
        RAISE EXCEPTION 'log_evidence value % may still be named by a message_log record '
            '(up to record %) and cannot be deleted', encode(OLD.digest, 'hex'), OLD.last_seq
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN OLD;
END
$$;

CREATE FUNCTION log_evidence_refuse_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'log_evidence is append-only: value % cannot be changed (only its last '
        'record may move forward)', encode(OLD.digest, 'hex')
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE TRIGGER log_evidence_append_only
    BEFORE DELETE ON log_evidence
    FOR EACH ROW EXECUTE FUNCTION log_evidence_delete_unused();

CREATE TRIGGER log_evidence_content_fixed
    BEFORE UPDATE OF digest, value ON log_evidence
    FOR EACH ROW EXECUTE FUNCTION log_evidence_refuse_update();

CREATE TRIGGER log_evidence_last_seq_forward
    BEFORE UPDATE OF last_seq ON log_evidence
    FOR EACH ROW
    WHEN (NEW.last_seq < OLD.last_seq)
    EXECUTE FUNCTION log_evidence_refuse_update();

CREATE TRIGGER log_evidence_no_truncate
    BEFORE TRUNCATE ON log_evidence
    FOR EACH STATEMENT EXECUTE FUNCTION log_refuse_change();
