//! Snapshot loading: streaming NDJSON / CSV rows into typed rows, refused with file, line, field and reason.
