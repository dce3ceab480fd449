-- The append-only rule for message_log, checked per column instead of per value.
--
-- 0001's trigger compared every column of the old and new row on each UPDATE. The only UPDATE
-- the node makes is the timestamper's, setting batch_id and batch_proof once per record, and
-- the comparison read every evidence column of both rows again to do it (tens of microseconds
-- of server time per record). Now:
--  - an UPDATE that names any content column is refused, whatever the value (even the same);
--  - an UPDATE of batch_id or batch_proof is refused unless batch_id goes from NULL to a value
--    (decided by the trigger's WHEN clause, without running a function for the allowed case);
--  - DELETE keeps 0001's rules (only archived records, never the newest).
-- The refusals raise the same error as before.

CREATE FUNCTION message_log_refuse_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'message_log is append-only: record % cannot be changed (only its '
        'timestamp reference may be set, once)', OLD.seq
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

DROP TRIGGER message_log_append_only ON message_log;

CREATE TRIGGER message_log_append_only
    BEFORE DELETE ON message_log
    FOR EACH ROW EXECUTE FUNCTION message_log_append_only();

CREATE TRIGGER message_log_content_fixed
    BEFORE UPDATE OF seq, logged_at, direction, message_id, client, service, user_id, issue,
        protocol, created_at, record, signed_part, body, signature, proof, certificates, ocsp,
        prev_hash, record_hash
    ON message_log
    FOR EACH ROW EXECUTE FUNCTION message_log_refuse_update();

CREATE TRIGGER message_log_timestamped_once
    BEFORE UPDATE OF batch_id, batch_proof ON message_log
    FOR EACH ROW
    WHEN (OLD.batch_id IS NOT NULL OR NEW.batch_id IS NULL)
    EXECUTE FUNCTION message_log_refuse_update();
