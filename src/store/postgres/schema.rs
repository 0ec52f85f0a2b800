//! PostgreSQL's schema and its migrations, numbered like SQLite's and applied one per
//! transaction; a database newer than the binary is refused.
//!
//! The tables are SQLite's in PostgreSQL's types (migration 1 here is SQLite's first four, and
//! each later one is SQLite's three numbers on): every integer and
//! every time (ms since the Unix epoch, as the store's `Tx::now` gives them) is `BIGINT`, flags
//! stored as 0/1 stay `BIGINT` so both backends read them alike, bodies are `BYTEA`, and the
//! sequence columns are identities. Attempts carry the id of the transaction that wrote them
//! (`xid8`), so the log pane reads them in an order that never skips a row committed late
//! (design §7, "Commit order is not sequence order").

use super::Conn;
use crate::engine::cause::cause_class;
use crate::model::ErrorKind;
use crate::store::Result;

/// The version each migration leaves, in order; the schema's version is the number applied.
pub(crate) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE workflows (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    team        TEXT NOT NULL,
    revision    BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE workflow_revisions (
    workflow_id TEXT NOT NULL REFERENCES workflows(id),
    revision    BIGINT NOT NULL,
    spec        TEXT NOT NULL,
    applied_at  BIGINT NOT NULL,
    operator    TEXT NOT NULL,
    PRIMARY KEY (workflow_id, revision)
);

CREATE TABLE stages (
    seq                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id          TEXT NOT NULL REFERENCES workflows(id),
    id                   TEXT NOT NULL,
    name                 TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    position             BIGINT NOT NULL,
    retired_at           BIGINT,
    paused               BIGINT NOT NULL DEFAULT 0,
    paused_reason        TEXT,
    consecutive_failures BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX stages_live ON stages(workflow_id, id) WHERE retired_at IS NULL;

CREATE TABLE items (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    workflow_id  TEXT NOT NULL REFERENCES workflows(id),
    stage_id     TEXT NOT NULL,
    state        TEXT NOT NULL,
    name         TEXT NOT NULL,
    path         TEXT NOT NULL,
    dataset_name TEXT NOT NULL,
    dataset_slug TEXT NOT NULL,
    tags         TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    version      BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    entered_at   BIGINT NOT NULL
);
CREATE INDEX items_by_stage ON items(workflow_id, stage_id, entered_at, seq);
CREATE INDEX items_by_state ON items(workflow_id, state, seq);
CREATE INDEX items_by_name ON items(workflow_id, name, seq);

CREATE TABLE item_content (
    seq         BIGINT PRIMARY KEY, -- items.seq
    properties  TEXT NOT NULL,
    slots       TEXT NOT NULL,
    annotations TEXT NOT NULL
);

CREATE TABLE history (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    item_id     TEXT NOT NULL,
    workflow_id TEXT NOT NULL,
    from_stage  TEXT,
    to_stage    TEXT NOT NULL,
    cause       TEXT NOT NULL,
    operator    TEXT,
    revision    BIGINT NOT NULL,
    delivery_id TEXT,
    at          BIGINT NOT NULL
);
CREATE INDEX history_by_item ON history(item_id, seq);

CREATE TABLE deliveries (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    workflow_id     TEXT NOT NULL,
    stage_id        TEXT NOT NULL,
    item_id         TEXT,
    event           TEXT NOT NULL,
    trigger         TEXT NOT NULL,
    state           TEXT NOT NULL,
    item_version    BIGINT,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_number     BIGINT NOT NULL DEFAULT 1,
    next_attempt_at BIGINT,
    lease_token     TEXT,
    lease_until     BIGINT,
    lease_owner     TEXT,
    lease_number    BIGINT,
    routed_version  BIGINT,
    refire_of       TEXT,
    cancel_reason   TEXT,
    cancelled_by    TEXT,
    last_status     BIGINT,
    last_error_kind TEXT,
    last_attempt_at BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX deliveries_due ON deliveries(next_attempt_at)
    WHERE state IN ('pending', 'retry_scheduled');
CREATE INDEX deliveries_leased ON deliveries(lease_until) WHERE state = 'in_flight';
CREATE INDEX deliveries_by_item ON deliveries(item_id, seq);
CREATE INDEX deliveries_by_state ON deliveries(state, seq);
CREATE INDEX deliveries_by_stage ON deliveries(workflow_id, stage_id, state, seq);

CREATE TABLE delivery_bodies (
    seq  BIGINT PRIMARY KEY, -- deliveries.seq
    body BYTEA NOT NULL
);

CREATE TABLE attempts (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The writing transaction: readers of the log take only rows whose transaction is older
    -- than their snapshot's xmin, in (xid, seq) order.
    xid              xid8 NOT NULL DEFAULT pg_current_xact_id(),
    delivery_id      TEXT NOT NULL,
    number           BIGINT NOT NULL,
    trigger          TEXT NOT NULL,
    counted          BIGINT NOT NULL,
    started_at       BIGINT NOT NULL,
    duration_ms      BIGINT,
    url              TEXT NOT NULL,
    request_headers  TEXT NOT NULL,
    status           BIGINT,
    response_headers TEXT,
    response_body    BYTEA,
    error_kind       TEXT,
    error_message    TEXT,
    UNIQUE (delivery_id, number)
);
CREATE INDEX attempts_by_xid ON attempts(xid, seq);

CREATE TABLE audit (
    seq      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       BIGINT NOT NULL,
    operator TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT NOT NULL,
    filter   TEXT,
    count    BIGINT NOT NULL
);

CREATE TABLE dispatchers (
    id            TEXT PRIMARY KEY,
    pid           BIGINT NOT NULL,
    host          TEXT NOT NULL,
    process_start TEXT NOT NULL,
    started_at    BIGINT NOT NULL,
    last_beat     BIGINT NOT NULL,
    concurrency   BIGINT NOT NULL
);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE item_counts (
    workflow_id TEXT NOT NULL,
    stage_id    TEXT NOT NULL,
    state       TEXT NOT NULL,
    n           BIGINT NOT NULL,
    PRIMARY KEY (workflow_id, stage_id, state)
);

CREATE TABLE delivery_counts (
    workflow_id TEXT NOT NULL,
    stage_id    TEXT NOT NULL,
    state       TEXT NOT NULL,
    n           BIGINT NOT NULL,
    PRIMARY KEY (workflow_id, stage_id, state)
);
"#,
    // 2: flow control per stage (issue 21; SQLite's migration 5).
    r#"
ALTER TABLE stages ADD COLUMN held_until BIGINT;
ALTER TABLE stages ADD COLUMN held_reason TEXT;
ALTER TABLE stages ADD COLUMN bucket_tokens DOUBLE PRECISION;
ALTER TABLE stages ADD COLUMN bucket_at BIGINT;
ALTER TABLE stages ADD COLUMN next_token_at BIGINT;
ALTER TABLE stages ADD COLUMN concurrency_limit BIGINT;
ALTER TABLE stages ADD COLUMN limit_successes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE stages ADD COLUMN limit_decreased_at BIGINT NOT NULL DEFAULT 0;
"#,
    // 3: history found by the item's row number, not its id text (issue 22; SQLite's
    // migration 6, which says why).
    r#"
ALTER TABLE history ADD COLUMN item_seq BIGINT;
UPDATE history h SET item_seq = i.seq FROM items i WHERE i.id = h.item_id;
DROP INDEX history_by_item;
CREATE INDEX history_by_item ON history(item_seq, seq);
"#,
    // 4: audit rows that name what was touched (issue 18; SQLite's migration 7).
    r#"
ALTER TABLE audit ADD COLUMN via TEXT;
ALTER TABLE audit ADD COLUMN outcome TEXT;
ALTER TABLE audit ADD COLUMN matched BIGINT;
ALTER TABLE audit ADD COLUMN ids TEXT;
"#,
    // 5: failure groups keyed by cause (issue 18; SQLite's migration 8, which says why), with
    // the failed deliveries' causes filled in by [`classify_failures`].
    r#"
ALTER TABLE deliveries ADD COLUMN last_error_class TEXT;
"#,
];

/// The migration whose rows [`classify_failures`] fills in.
const CLASSIFY_FAILURES_AT: i64 = 5;

/// Gives every failed delivery the cause of its last scheduled attempt (SQLite's
/// `classify_failures`), a page at a time; only a body's first 16 KiB and a byte are read,
/// all that `engine::cause` looks at.
fn classify_failures(conn: &Conn) -> Result<()> {
    let mut after = 0i64;
    loop {
        let rows = conn.query(
            "SELECT d.seq, d.last_error_kind, a.error_message, substring(a.response_body from 1 for 16385)
             FROM deliveries d JOIN attempts a ON a.delivery_id = d.id
             WHERE d.state = 'failed' AND d.last_error_kind IS NOT NULL AND d.seq > $1
               AND a.number = (SELECT MAX(x.number) FROM attempts x
                               WHERE x.delivery_id = d.id AND x.trigger = 'scheduled')
             ORDER BY d.seq LIMIT 1000",
            &[&after],
        )?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        after = last.get(0);
        for r in &rows {
            let kind = r.get::<_, String>(1).parse::<ErrorKind>().ok();
            let message: Option<String> = r.get(2);
            let body: Option<Vec<u8>> = r.get(3);
            let class = cause_class(kind, message.as_deref(), body.as_deref());
            conn.execute(
                "UPDATE deliveries SET last_error_class = $2 WHERE seq = $1",
                &[&r.get::<_, i64>(0), &class],
            )?;
        }
    }
}

/// The schema version stored in the database (0: no hookops schema yet).
pub(crate) fn version(conn: &Conn) -> Result<i64> {
    let found = conn.query_opt(
        "SELECT value FROM hookops_meta WHERE key = 'schema_version'",
        &[],
    );
    match found {
        Ok(row) => Ok(row
            .and_then(|r| r.get::<_, String>(0).parse().ok())
            .unwrap_or(0)),
        // No meta table: an empty database.
        Err(_) => Ok(0),
    }
}

/// Applies the migrations the database lacks, each in one transaction, under an advisory lock
/// so two processes starting at once do not both migrate.
pub(crate) fn migrate(conn: &Conn) -> std::result::Result<(), String> {
    let latest = MIGRATIONS.len() as i64;
    conn.batch(
        "CREATE TABLE IF NOT EXISTS hookops_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    )
    .map_err(|e| e.to_string())?;
    for _ in 0..=MIGRATIONS.len() {
        conn.batch("BEGIN; SELECT pg_advisory_xact_lock(4848794843)")
            .map_err(|e| e.to_string())?;
        let current = version(conn).map_err(|e| e.to_string())?;
        if current > latest {
            let _ = conn.batch("ROLLBACK");
            return Err(format!(
                "schema version {current} is newer than this binary understands ({latest}); upgrade hookops"
            ));
        }
        if current == latest {
            conn.batch("COMMIT").map_err(|e| e.to_string())?;
            return Ok(());
        }
        let sql = MIGRATIONS[current as usize];
        let next = current + 1;
        let step = conn
            .batch(sql)
            .and_then(|()| match next {
                CLASSIFY_FAILURES_AT => classify_failures(conn),
                _ => Ok(()),
            })
            .and_then(|()| {
                conn.execute(
                    "INSERT INTO hookops_meta (key, value) VALUES ('schema_version', $1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    &[&next.to_string()],
                )
                .map(drop)
            });
        if let Err(e) = step.and_then(|()| conn.batch("COMMIT")) {
            let _ = conn.batch("ROLLBACK");
            return Err(format!("migration {next} failed: {e}"));
        }
    }
    Ok(())
}
