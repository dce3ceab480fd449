-- The central registry's schema.
-- Rules: identifiers are stored in parts and checked again by the application; every table
-- that the global configuration is built from bumps instance.change_serial in the same
-- transaction as its change (done by registry.store), so the publisher knows to regenerate.
-- Private keys are never stored here: conf_signing_keys.key_ref names an encrypted file in the
-- registry's data directory. API keys are stored as SHA-256 digests only.

CREATE TABLE instance (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    instance_id text NOT NULL,
    ocsp_freshness_s integer NOT NULL DEFAULT 3600 CHECK (ocsp_freshness_s > 0),
    timestamping_interval_s integer NOT NULL DEFAULT 60 CHECK (timestamping_interval_s > 0),
    conf_expiry_s integer NOT NULL DEFAULT 600 CHECK (conf_expiry_s > 0),
    conf_refresh_s integer NOT NULL DEFAULT 60 CHECK (conf_refresh_s > 0),
    auto_approve boolean NOT NULL DEFAULT false,
    change_serial bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE member_classes (
    code text PRIMARY KEY,
    description text NOT NULL DEFAULT ''
);

CREATE TABLE members (
    id bigserial PRIMARY KEY,
    member_class text NOT NULL REFERENCES member_classes (code),
    member_code text NOT NULL,
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT members_class_code_key UNIQUE (member_class, member_code)
);

CREATE TABLE subsystems (
    id bigserial PRIMARY KEY,
    member_id bigint NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    subsystem_code text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT subsystems_member_code_key UNIQUE (member_id, subsystem_code)
);

CREATE TABLE security_servers (
    id bigserial PRIMARY KEY,
    owner_id bigint NOT NULL REFERENCES members (id),
    server_code text NOT NULL,
    address text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT security_servers_owner_code_key UNIQUE (owner_id, server_code)
);

CREATE TABLE auth_certs (
    id bigserial PRIMARY KEY,
    server_id bigint NOT NULL REFERENCES security_servers (id) ON DELETE CASCADE,
    certificate bytea NOT NULL,
    sha256 text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT auth_certs_sha256_key UNIQUE (sha256)
);

-- The clients (members or subsystems) a security server serves.
CREATE TABLE server_clients (
    id bigserial PRIMARY KEY,
    server_id bigint NOT NULL REFERENCES security_servers (id) ON DELETE CASCADE,
    member_id bigint NOT NULL REFERENCES members (id),
    subsystem_id bigint REFERENCES subsystems (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT server_clients_key UNIQUE NULLS NOT DISTINCT (server_id, member_id, subsystem_id)
);

CREATE TABLE approved_cas (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    certificate bytea NOT NULL,
    intermediates bytea[] NOT NULL DEFAULT '{}',
    profile text NOT NULL DEFAULT 'jisr/1',
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT approved_cas_name_key UNIQUE (name)
);

CREATE TABLE ca_ocsp_responders (
    id bigserial PRIMARY KEY,
    ca_id bigint NOT NULL REFERENCES approved_cas (id) ON DELETE CASCADE,
    url text NOT NULL,
    certificate bytea,
    CONSTRAINT ca_ocsp_responders_key UNIQUE (ca_id, url)
);

CREATE TABLE approved_tsas (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    url text NOT NULL,
    certificate bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT approved_tsas_name_key UNIQUE (name)
);

CREATE TABLE global_groups (
    id bigserial PRIMARY KEY,
    code text NOT NULL,
    description text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT global_groups_code_key UNIQUE (code)
);

CREATE TABLE global_group_members (
    id bigserial PRIMARY KEY,
    group_id bigint NOT NULL REFERENCES global_groups (id) ON DELETE CASCADE,
    member_id bigint NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    subsystem_id bigint REFERENCES subsystems (id) ON DELETE CASCADE,
    CONSTRAINT global_group_members_key UNIQUE NULLS NOT DISTINCT (group_id, member_id, subsystem_id)
);

CREATE TABLE management_requests (
    id bigserial PRIMARY KEY,
    type text NOT NULL CHECK (type IN ('register_server', 'register_client', 'delete_client', 'delete_server')),
    server text NOT NULL,
    client text,
    payload jsonb NOT NULL,
    raw bytea NOT NULL,
    signatures jsonb NOT NULL,
    nonce text NOT NULL,
    state text NOT NULL DEFAULT 'submitted' CHECK (state IN ('submitted', 'approved', 'declined', 'executed')),
    reason text,
    decided_by text,
    submitted_at timestamptz NOT NULL DEFAULT now(),
    decided_at timestamptz,
    executed_at timestamptz,
    CONSTRAINT management_requests_nonce_key UNIQUE (nonce)
);

CREATE INDEX management_requests_state_idx ON management_requests (state, id);

CREATE TABLE conf_signing_keys (
    key_id text PRIMARY KEY,
    certificate bytea NOT NULL,
    key_ref text NOT NULL,
    state text NOT NULL CHECK (state IN ('announced', 'active', 'retired')),
    created_at timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz,
    retired_at timestamptz,
    -- First configuration version that listed this key; activation needs one.
    first_published_version integer
);

-- At most one key signs at a time.
CREATE UNIQUE INDEX conf_signing_keys_one_active ON conf_signing_keys (state) WHERE state = 'active';

CREATE TABLE globalconf_versions (
    version integer PRIMARY KEY CHECK (version > 0),
    document bytea NOT NULL,
    signature bytea NOT NULL,
    digest text NOT NULL,
    previous_digest text,
    signing_key_id text NOT NULL REFERENCES conf_signing_keys (key_id),
    change_serial bigint NOT NULL,
    generated_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);

CREATE TABLE api_keys (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    key_hash text NOT NULL,
    role text NOT NULL CHECK (role IN ('operator', 'auditor')),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    CONSTRAINT api_keys_name_key UNIQUE (name),
    CONSTRAINT api_keys_hash_key UNIQUE (key_hash)
);

CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,
    action text NOT NULL,
    details jsonb NOT NULL DEFAULT '{}'
);
