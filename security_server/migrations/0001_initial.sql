-- A node's local state: its clients, service descriptions, services, endpoints, access rights
-- and admin API keys. The message log has its own migrations.

CREATE TABLE local_clients (
    client_id text PRIMARY KEY,
    -- 'http', 'https' or 'https_cert' (HTTPS with a registered client TLS certificate)
    connection_type text NOT NULL DEFAULT 'http'
        CHECK (connection_type IN ('http', 'https', 'https_cert')),
    -- SHA-256 ("sha256:<hex>") of the client TLS certificates allowed for 'https_cert'
    tls_cert_hashes text[] NOT NULL DEFAULT '{}',
    -- the certificates themselves (DER), trusted by the client-side HTTPS listener
    tls_certs bytea[] NOT NULL DEFAULT '{}',
    body_logging boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE service_descriptions (
    id serial PRIMARY KEY,
    provider text NOT NULL REFERENCES local_clients (client_id) ON DELETE CASCADE,
    kind text NOT NULL CHECK (kind IN ('wsdl', 'openapi', 'rest')),
    url text NOT NULL,
    document bytea,
    enabled boolean NOT NULL DEFAULT true,
    disabled_notice text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider, url)
);

CREATE TABLE services (
    provider text NOT NULL,
    service_code text NOT NULL,
    service_version text,
    description_id integer NOT NULL REFERENCES service_descriptions (id) ON DELETE CASCADE,
    address text NOT NULL,
    timeout_s integer NOT NULL DEFAULT 30 CHECK (timeout_s > 0),
    tls_verify boolean NOT NULL DEFAULT true,
    PRIMARY KEY (provider, service_code)
);

CREATE TABLE endpoints (
    provider text NOT NULL,
    service_code text NOT NULL,
    method text NOT NULL,
    path text NOT NULL,
    PRIMARY KEY (provider, service_code, method, path),
    FOREIGN KEY (provider, service_code) REFERENCES services ON DELETE CASCADE
);

CREATE TABLE access_rights (
    id serial PRIMARY KEY,
    provider text NOT NULL,
    service_code text NOT NULL,
    subject text NOT NULL,
    method text,
    path_pattern text,
    created_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (provider, service_code) REFERENCES services ON DELETE CASCADE
);
CREATE UNIQUE INDEX access_rights_unique
    ON access_rights (provider, service_code, subject, coalesce(method, ''), coalesce(path_pattern, ''));

CREATE TABLE api_keys (
    key_hash text PRIMARY KEY,
    name text NOT NULL,
    role text NOT NULL CHECK (role IN ('operator', 'auditor')),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,
    action text NOT NULL,
    details jsonb NOT NULL DEFAULT '{}'
);
