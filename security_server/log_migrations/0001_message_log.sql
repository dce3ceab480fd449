-- The node's message log: one hash-chained, append-only run of records per node, the RFC 3161
-- batch timestamps over them, and the marks the archiver leaves. docs/message-log.md describes
-- every column an auditor relies on.

CREATE TABLE timestamp_batches (
    id bigserial PRIMARY KEY,
    -- RFC 6962 root over leaf_hash(record_hash) of the batch's records, in sequence order
    root bytea NOT NULL CHECK (length(root) = 32),
    size integer NOT NULL CHECK (size >= 1),
    -- the RFC 3161 TimeStampToken (CMS ContentInfo, DER) whose imprint is SHA-256 = root
    token bytea NOT NULL,
    tsa_url text NOT NULL,
    gen_time timestamptz NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE message_log (
    -- the node's sequence number: 1, 2, 3, ... without gaps; appends race on this key
    seq bigint PRIMARY KEY CHECK (seq >= 1),
    logged_at timestamptz NOT NULL,
    -- search columns, copied from the canonical record when it is written
    direction text NOT NULL
        CHECK (direction IN ('request_out', 'response_in', 'request_in', 'response_out')),
    message_id text NOT NULL,
    client text NOT NULL,
    service text NOT NULL,
    user_id text,
    issue text,
    protocol text NOT NULL CHECK (protocol IN ('REST', 'SOAP')),
    created_at timestamptz NOT NULL,
    -- the canonical record (UTF-8 JSON) the hash covers, and the parts it covers by digest
    record bytea NOT NULL,
    signed_part bytea NOT NULL,
    body bytea,
    signature bytea NOT NULL,
    proof bytea NOT NULL,
    certificates bytea[] NOT NULL,
    ocsp bytea NOT NULL,
    prev_hash bytea NOT NULL CHECK (length(prev_hash) = 32),
    record_hash bytea NOT NULL CHECK (length(record_hash) = 32),
    -- set once, from NULL, when the record's batch is timestamped
    batch_id bigint REFERENCES timestamp_batches (id),
    batch_proof bytea,
    CHECK ((batch_id IS NULL) = (batch_proof IS NULL))
);

CREATE INDEX message_log_message_id ON message_log (message_id);
CREATE INDEX message_log_logged_at ON message_log (logged_at);
CREATE INDEX message_log_client ON message_log (client, logged_at);
CREATE INDEX message_log_service ON message_log (service, logged_at);
CREATE INDEX message_log_batch ON message_log (batch_id);
CREATE INDEX message_log_untimestamped ON message_log (seq) WHERE batch_id IS NULL;

-- One row per archive file: records first_seq..last_seq went into it. Ranges follow each
-- other without gaps.
CREATE TABLE log_archives (
    name text PRIMARY KEY,
    first_seq bigint NOT NULL CHECK (first_seq >= 1),
    last_seq bigint NOT NULL UNIQUE,
    archived_at timestamptz NOT NULL,
    CHECK (last_seq >= first_seq)
);

-- Record content never changes: an UPDATE may only set batch_id and batch_proof from NULL,
-- and only archived records other than the newest one may be deleted (the retention job).
CREATE FUNCTION message_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF OLD.batch_id IS NOT NULL OR NEW.batch_id IS NULL
           OR (NEW.seq, NEW.logged_at, NEW.direction, NEW.message_id, NEW.client, NEW.service,
               NEW.user_id, NEW.issue, NEW.protocol, NEW.created_at, NEW.record,
               NEW.signed_part, NEW.body, NEW.signature, NEW.proof, NEW.certificates, NEW.ocsp,
               NEW.prev_hash, NEW.record_hash)
              IS DISTINCT FROM
              (OLD.seq, OLD.logged_at, OLD.direction, OLD.message_id, OLD.client, OLD.service,
               OLD.user_id, OLD.issue, OLD.protocol, OLD.created_at, OLD.record,
               OLD.signed_part, OLD.body, OLD.signature, OLD.proof, OLD.certificates, OLD.ocsp,
               OLD.prev_hash, OLD.record_hash)
        THEN
            RAISE EXCEPTION 'message_log is append-only: record % cannot be changed (only its '
                'timestamp reference may be set, once)', OLD.seq
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN NEW;
    END IF;
    -- DELETE
    IF OLD.seq > (SELECT coalesce(max(last_seq), 0) FROM log_archives) THEN
        RAISE EXCEPTION 'message_log record % is not archived and cannot be deleted', OLD.seq
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF OLD.seq >= (SELECT max(seq) FROM message_log) THEN
        RAISE EXCEPTION 'message_log record % is the newest record and is kept to continue '
            'the chain', OLD.seq
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN OLD;
END
$$;

CREATE TRIGGER message_log_append_only
    BEFORE UPDATE OR DELETE ON message_log
    FOR EACH ROW EXECUTE FUNCTION message_log_append_only();

CREATE FUNCTION log_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE TRIGGER message_log_no_truncate
    BEFORE TRUNCATE ON message_log
    FOR EACH STATEMENT EXECUTE FUNCTION log_refuse_change();

-- Batches are never changed; one may be deleted only once no record refers to it (the
-- foreign key sees to that).
CREATE TRIGGER timestamp_batches_append_only
    BEFORE UPDATE ON timestamp_batches
    FOR EACH ROW EXECUTE FUNCTION log_refuse_change();

CREATE TRIGGER timestamp_batches_no_truncate
    BEFORE TRUNCATE ON timestamp_batches
    FOR EACH STATEMENT EXECUTE FUNCTION log_refuse_change();

CREATE TRIGGER log_archives_append_only
    BEFORE UPDATE OR DELETE ON log_archives
    FOR EACH ROW EXECUTE FUNCTION log_refuse_change();

CREATE TRIGGER log_archives_no_truncate
    BEFORE TRUNCATE ON log_archives
    FOR EACH STATEMENT EXECUTE FUNCTION log_refuse_change();
