-- Undo 0001_session_tables.
DROP TABLE IF EXISTS session_events;
DROP TABLE IF EXISTS session_envelopes;
