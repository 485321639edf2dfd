-- The product's own data: an orders table, as your application or an ETL job would write it
-- into the database audience-sync uses. audience-sync only ever reads it (read-only, in
-- `audience-sync compute`).
--
--   sqlite3 examples/sql-audience/example.db < examples/sql-audience/orders.sql
--
-- completed_at is unix seconds (what `:now` is compared with).

CREATE TABLE IF NOT EXISTS orders (
    order_id     INTEGER PRIMARY KEY,
    user_id      TEXT NOT NULL,
    email        TEXT,
    total        REAL NOT NULL,
    completed_at INTEGER NOT NULL
);

INSERT INTO orders (user_id, email, total, completed_at) VALUES
    -- alice: an order on January 10: in the audience on January 15, out by February 20.
    ('alice', 'alice@example.com', 129.00, CAST(strftime('%s', '2026-01-10 14:30:00') AS INTEGER)),
    -- bob: orders on January 2 and February 12: in on both dates.
    ('bob',   'bob@example.com',    42.50, CAST(strftime('%s', '2026-01-02 09:15:00') AS INTEGER)),
    ('bob',   'bob@example.com',    18.90, CAST(strftime('%s', '2026-02-12 17:45:00') AS INTEGER)),
    -- carol: an order on December 1 (too old on January 15), then one on February 5: enters.
    ('carol', 'carol@example.com', 310.00, CAST(strftime('%s', '2025-12-01 11:00:00') AS INTEGER)),
    ('carol', 'carol@example.com',  75.25, CAST(strftime('%s', '2026-02-05 08:20:00') AS INTEGER)),
    -- dave: one order on October 1, 2025: never in the audience.
    ('dave',  'dave@example.com',   64.00, CAST(strftime('%s', '2025-10-01 12:00:00') AS INTEGER));
