-- Session envelopes and the sequenced, stored events of each session.
-- depends:

CREATE TABLE session_envelopes (
    session_id  text PRIMARY KEY,
    persona_id  text,
    tenant      text,
    subject     text,
    issuer      text,
    scope       text,
    metadata    jsonb NOT NULL DEFAULT '{}'::jsonb,
    analysis    jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- the highest seq stored for the session: the next event gets last_seq + 1, in the same transaction
    last_seq    bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- listing recent sessions, per tenant or overall
CREATE INDEX session_envelopes_tenant_updated ON session_envelopes (tenant, updated_at DESC);
CREATE INDEX session_envelopes_updated ON session_envelopes (updated_at DESC);

CREATE TABLE session_events (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         uuid NOT NULL UNIQUE,
    session_id       text NOT NULL REFERENCES session_envelopes (session_id) ON DELETE CASCADE,
    seq              bigint NOT NULL CHECK (seq >= 1),
    type             text NOT NULL,
    role             text NOT NULL,
    payload          jsonb NOT NULL,
    occurred_at      timestamptz NOT NULL,
    stored_at        timestamptz NOT NULL DEFAULT now(),
    source_topic     text,
    source_partition integer,
    source_offset    bigint,
    -- history and resume read "WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3" from this index
    CONSTRAINT session_events_session_seq UNIQUE (session_id, seq)
);

-- retention and time-window queries
CREATE INDEX session_events_occurred_at ON session_events (occurred_at);
