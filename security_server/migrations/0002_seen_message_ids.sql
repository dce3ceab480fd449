-- Replay protection shared by every process of a node (transport v1 section 8): a request's
-- (client, message id) pair is accepted once while its row has not expired. Rows are written
-- by the server proxy and deleted by its periodic purge once expired.

CREATE TABLE seen_message_ids (
    client_id text NOT NULL,
    message_id text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (client_id, message_id)
);

CREATE INDEX seen_message_ids_expires_at ON seen_message_ids (expires_at);
