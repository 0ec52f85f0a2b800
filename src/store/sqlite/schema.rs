//! Numbered schema migrations, applied in order and recorded in `PRAGMA user_version`.
//!
//! A migration is never edited once released: a change is a new entry at the end. Every
//! migration runs in its own transaction, so a crash mid-migration leaves the previous version.

use rusqlite::Connection;

use crate::engine::cause::cause_class;
use crate::model::ErrorKind;

/// Marks the file as a hookops database (`PRAGMA application_id`, "HOOK").
pub(crate) const APPLICATION_ID: i64 = 0x484F_4F4B;

pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the whole first schema.
    r#"
CREATE TABLE workflows (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    team        TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- Each apply that changes something is a numbered revision; the spec is the validated
-- workflow as JSON, with expanded secrets (the file is 0600).
CREATE TABLE workflow_revisions (
    workflow_id TEXT NOT NULL REFERENCES workflows(id),
    revision    INTEGER NOT NULL,
    spec        TEXT NOT NULL,
    applied_at  INTEGER NOT NULL,
    operator    TEXT NOT NULL,
    PRIMARY KEY (workflow_id, revision)
);

-- Stages are retired, never deleted, so history and deliveries keep their references.
CREATE TABLE stages (
    seq                  INTEGER PRIMARY KEY,
    workflow_id          TEXT NOT NULL REFERENCES workflows(id),
    id                   TEXT NOT NULL,
    name                 TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    position             INTEGER NOT NULL,
    retired_at           INTEGER,
    paused               INTEGER NOT NULL DEFAULT 0,
    paused_reason        TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX stages_live ON stages(workflow_id, id) WHERE retired_at IS NULL;

CREATE TABLE items (
    seq         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    workflow_id TEXT NOT NULL REFERENCES workflows(id),
    stage_id    TEXT NOT NULL,
    state       TEXT NOT NULL,
    name        TEXT NOT NULL,
    path        TEXT NOT NULL,
    dataset_name TEXT NOT NULL,
    dataset_slug TEXT NOT NULL,
    tags        TEXT NOT NULL,
    properties  TEXT NOT NULL,
    slots       TEXT NOT NULL,
    annotations TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    version     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    entered_at  INTEGER NOT NULL
);
-- Oldest first within a stage (longest waiting on top), keyset-paged.
CREATE INDEX items_by_stage ON items(workflow_id, stage_id, entered_at, seq);
CREATE INDEX items_by_state ON items(workflow_id, state, seq);
CREATE INDEX items_by_name ON items(workflow_id, name, seq);

CREATE TABLE history (
    seq         INTEGER PRIMARY KEY,
    item_id     TEXT NOT NULL,
    workflow_id TEXT NOT NULL,
    from_stage  TEXT,
    to_stage    TEXT NOT NULL,
    cause       TEXT NOT NULL,
    operator    TEXT,
    revision    INTEGER NOT NULL,
    delivery_id TEXT,
    at          INTEGER NOT NULL
);
CREATE INDEX history_by_item ON history(item_id, seq);

CREATE TABLE deliveries (
    seq             INTEGER PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    workflow_id     TEXT NOT NULL,
    stage_id        TEXT NOT NULL,
    item_id         TEXT,
    event           TEXT NOT NULL,
    trigger         TEXT NOT NULL,
    state           TEXT NOT NULL,
    body            BLOB NOT NULL,
    item_version    INTEGER,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_number     INTEGER NOT NULL DEFAULT 1,
    next_attempt_at INTEGER,
    lease_token     TEXT,
    lease_until     INTEGER,
    lease_owner     TEXT,
    lease_number    INTEGER,
    routed_version  INTEGER,
    refire_of       TEXT,
    cancel_reason   TEXT,
    cancelled_by    TEXT,
    last_status     INTEGER,
    last_error_kind TEXT,
    last_attempt_at INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX deliveries_due ON deliveries(next_attempt_at)
    WHERE state IN ('pending', 'retry_scheduled');
CREATE INDEX deliveries_leased ON deliveries(lease_until) WHERE state = 'in_flight';
CREATE INDEX deliveries_by_item ON deliveries(item_id, seq);
CREATE INDEX deliveries_by_state ON deliveries(state, seq);
CREATE INDEX deliveries_by_stage ON deliveries(workflow_id, stage_id, state, seq);

CREATE TABLE attempts (
    seq              INTEGER PRIMARY KEY,
    delivery_id      TEXT NOT NULL,
    number           INTEGER NOT NULL,
    trigger          TEXT NOT NULL,
    counted          INTEGER NOT NULL,
    started_at       INTEGER NOT NULL,
    duration_ms      INTEGER,
    url              TEXT NOT NULL,
    request_headers  TEXT NOT NULL,
    status           INTEGER,
    response_headers TEXT,
    response_body    BLOB,
    error_kind       TEXT,
    error_message    TEXT,
    UNIQUE (delivery_id, number)
);

CREATE TABLE audit (
    seq      INTEGER PRIMARY KEY,
    at       INTEGER NOT NULL,
    operator TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT NOT NULL,
    filter   TEXT,
    count    INTEGER NOT NULL
);

CREATE TABLE dispatchers (
    id            TEXT PRIMARY KEY,
    pid           INTEGER NOT NULL,
    host          TEXT NOT NULL,
    process_start TEXT NOT NULL,
    started_at    INTEGER NOT NULL,
    last_beat     INTEGER NOT NULL,
    concurrency   INTEGER NOT NULL
);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Counters kept by triggers in the same transaction as the rows they count, so headers and
-- stage lists never run COUNT(*) over millions of rows.
CREATE TABLE item_counts (
    workflow_id TEXT NOT NULL,
    stage_id    TEXT NOT NULL,
    state       TEXT NOT NULL,
    n           INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, stage_id, state)
) WITHOUT ROWID;

CREATE TABLE delivery_counts (
    workflow_id TEXT NOT NULL,
    stage_id    TEXT NOT NULL,
    state       TEXT NOT NULL,
    n           INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, stage_id, state)
) WITHOUT ROWID;

CREATE TRIGGER items_count_insert AFTER INSERT ON items BEGIN
    INSERT INTO item_counts (workflow_id, stage_id, state, n)
    VALUES (NEW.workflow_id, NEW.stage_id, NEW.state, 1)
    ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER items_count_update AFTER UPDATE OF stage_id, state ON items
WHEN OLD.stage_id IS NOT NEW.stage_id OR OLD.state IS NOT NEW.state BEGIN
    UPDATE item_counts SET n = n - 1
    WHERE workflow_id = OLD.workflow_id AND stage_id = OLD.stage_id AND state = OLD.state;
    INSERT INTO item_counts (workflow_id, stage_id, state, n)
    VALUES (NEW.workflow_id, NEW.stage_id, NEW.state, 1)
    ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER items_count_delete AFTER DELETE ON items BEGIN
    UPDATE item_counts SET n = n - 1
    WHERE workflow_id = OLD.workflow_id AND stage_id = OLD.stage_id AND state = OLD.state;
END;

CREATE TRIGGER deliveries_count_insert AFTER INSERT ON deliveries BEGIN
    INSERT INTO delivery_counts (workflow_id, stage_id, state, n)
    VALUES (NEW.workflow_id, NEW.stage_id, NEW.state, 1)
    ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER deliveries_count_update AFTER UPDATE OF state ON deliveries
WHEN OLD.state IS NOT NEW.state BEGIN
    UPDATE delivery_counts SET n = n - 1
    WHERE workflow_id = OLD.workflow_id AND stage_id = OLD.stage_id AND state = OLD.state;
    INSERT INTO delivery_counts (workflow_id, stage_id, state, n)
    VALUES (NEW.workflow_id, NEW.stage_id, NEW.state, 1)
    ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER deliveries_count_delete AFTER DELETE ON deliveries BEGIN
    UPDATE delivery_counts SET n = n - 1
    WHERE workflow_id = OLD.workflow_id AND stage_id = OLD.stage_id AND state = OLD.state;
END;
"#,
    // 2: the counters are kept by the store's writes (store/counts.rs), not by triggers: a
    // trigger makes every write to its table keep a statement journal.
    r#"
DROP TRIGGER items_count_insert;
DROP TRIGGER items_count_update;
DROP TRIGGER items_count_delete;
DROP TRIGGER deliveries_count_insert;
DROP TRIGGER deliveries_count_update;
DROP TRIGGER deliveries_count_delete;
"#,
    // 3: a delivery's frozen body lives in a table of its own, written once when the delivery
    // is made. A delivery row is rewritten on every lease and every outcome; without the ~2 KiB
    // body it is ~250 B, so a page holds ~15 of them instead of one and a group commit writes
    // far fewer pages (issue 4's throughput).
    r#"
CREATE TABLE delivery_bodies (
    seq  INTEGER PRIMARY KEY, -- deliveries.seq
    body BLOB NOT NULL
);
INSERT INTO delivery_bodies (seq, body) SELECT seq, body FROM deliveries;
ALTER TABLE deliveries DROP COLUMN body;
"#,
    // 4: an item's content (properties, slots, annotations: ~2 KiB of JSON) lives in a table
    // of its own, written at import. Every move rewrites the item's row; without the content
    // it is ~300 B, so routing an outcome no longer writes a page per item (issue 4).
    r#"
CREATE TABLE item_content (
    seq         INTEGER PRIMARY KEY, -- items.seq
    properties  TEXT NOT NULL,
    slots       TEXT NOT NULL,
    annotations TEXT NOT NULL
);
INSERT INTO item_content (seq, properties, slots, annotations)
    SELECT seq, properties, slots, annotations FROM items;
ALTER TABLE items DROP COLUMN properties;
ALTER TABLE items DROP COLUMN slots;
ALTER TABLE items DROP COLUMN annotations;
"#,
    // 5: flow control per stage (issue 21), kept in the stage row every dispatcher shares: a
    // hold (429/503 with Retry-After), the rate limit's token bucket (with when it next holds a
    // whole token, so leasing skips an empty one in the due query itself), and the adaptive
    // concurrency limit (AIMD).
    r#"
ALTER TABLE stages ADD COLUMN held_until INTEGER;
ALTER TABLE stages ADD COLUMN held_reason TEXT;
ALTER TABLE stages ADD COLUMN bucket_tokens REAL;
ALTER TABLE stages ADD COLUMN bucket_at INTEGER;
ALTER TABLE stages ADD COLUMN next_token_at INTEGER;
ALTER TABLE stages ADD COLUMN concurrency_limit INTEGER;
ALTER TABLE stages ADD COLUMN limit_successes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE stages ADD COLUMN limit_decreased_at INTEGER NOT NULL DEFAULT 0;
"#,
    // 6: an item's history is found by the item's row number (`items.seq`) instead of its id
    // text (issue 22). Rows are added in `seq` order, so at import every new item's history
    // entry goes at the end of this index instead of at a random place of one keyed by UUIDs:
    // each imported item changes one page of a large index (`items(id)`) instead of two.
    // `item_id` stays, for reading the table by hand and for `db copy`; a history row whose
    // item is gone keeps a NULL `item_seq` (no item shows it either way).
    r#"
ALTER TABLE history ADD COLUMN item_seq INTEGER;
UPDATE history SET item_seq = (SELECT i.seq FROM items i WHERE i.id = history.item_id);
DROP INDEX history_by_item;
CREATE INDEX history_by_item ON history(item_seq, seq);
"#,
    // 7: audit rows that name what was touched (issue 18): the front end, the outcome, how
    // many the selection matched and, up to 1,000, the ids (a JSON array).
    r#"
ALTER TABLE audit ADD COLUMN via TEXT;
ALTER TABLE audit ADD COLUMN outcome TEXT;
ALTER TABLE audit ADD COLUMN matched INTEGER;
ALTER TABLE audit ADD COLUMN ids TEXT;
"#,
    // 8: failure groups keyed by cause (issue 18): the last error's message normalised
    // (`engine::cause`), kept beside the status and error kind it describes so grouping and
    // filtering by it is plain SQL. The failed deliveries already stored get theirs from
    // their last attempt ([`classify_failures`], in the same transaction).
    r#"
ALTER TABLE deliveries ADD COLUMN last_error_class TEXT;
"#,
];

/// The migration whose rows [`classify_failures`] fills in.
const CLASSIFY_FAILURES_AT: i64 = 8;

/// Gives every failed delivery the cause of its last scheduled attempt: the data step of
/// migration 8, which SQL alone cannot compute.
fn classify_failures(conn: &Connection) -> rusqlite::Result<()> {
    let mut read = conn.prepare(
        "SELECT d.seq, d.last_error_kind, a.error_message, substr(a.response_body, 1, 16385)
         FROM deliveries d JOIN attempts a ON a.delivery_id = d.id
         WHERE d.state = 'failed' AND d.last_error_kind IS NOT NULL
           AND a.number = (SELECT MAX(x.number) FROM attempts x
                           WHERE x.delivery_id = d.id AND x.trigger = 'scheduled')",
    )?;
    let mut write = conn.prepare("UPDATE deliveries SET last_error_class = ?2 WHERE seq = ?1")?;
    let mut rows = read.query([])?;
    while let Some(r) = rows.next()? {
        let kind = r.get::<_, String>(1)?.parse::<ErrorKind>().ok();
        let message: Option<String> = r.get(2)?;
        let body: Option<Vec<u8>> = r.get(3)?;
        let class = cause_class(kind, message.as_deref(), body.as_deref());
        write.execute(rusqlite::params![r.get::<_, i64>(0)?, class])?;
    }
    Ok(())
}

pub(crate) fn user_version(conn: &Connection) -> crate::store::Result<i64> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// Brings the file up to [`MIGRATIONS`]`.len()`; refuses a file newer than this binary.
pub(crate) fn migrate(conn: &Connection) -> Result<(), String> {
    let current = user_version(conn).map_err(|e| e.to_string())?;
    let latest = MIGRATIONS.len() as i64;
    if current > latest {
        return Err(format!(
            "schema version {current} is newer than this binary understands ({latest}); upgrade hookops"
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i64 + 1;
        let step = conn
            .execute_batch(&format!("BEGIN IMMEDIATE;\n{sql}"))
            .and_then(|()| match version {
                CLASSIFY_FAILURES_AT => classify_failures(conn),
                _ => Ok(()),
            })
            .and_then(|()| {
                conn.execute_batch(&format!(
                    "PRAGMA application_id = {APPLICATION_ID};\nPRAGMA user_version = {version};\nCOMMIT;"
                ))
            });
        if let Err(e) = step {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(format!("migration {version} failed: {e}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_from_every_earlier_version() {
        for start in 0..MIGRATIONS.len() {
            let conn = Connection::open_in_memory().unwrap();
            for sql in &MIGRATIONS[..start] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", start as i64)
                .unwrap();
            migrate(&conn).unwrap();
            assert_eq!(user_version(&conn).unwrap(), MIGRATIONS.len() as i64);
            // Idempotent: a second run changes nothing.
            migrate(&conn).unwrap();
        }
    }

    #[test]
    fn migration_3_moves_every_body_beside_its_delivery() {
        let conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..2] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 2).unwrap();
        for (id, body) in [("msg_a", "{\"a\":1}"), ("msg_b", "{\"b\":2}")] {
            conn.execute(
                "INSERT INTO deliveries (id, workflow_id, stage_id, event, trigger, state, body,
                     created_at, updated_at)
                 VALUES (?1, 'wf', 'hook', 'stage.webhook', 'route', 'pending', ?2, 0, 0)",
                rusqlite::params![id, body.as_bytes()],
            )
            .unwrap();
        }
        migrate(&conn).unwrap();
        let moved: Vec<(String, Vec<u8>)> = conn
            .prepare(
                "SELECT d.id, b.body FROM deliveries d JOIN delivery_bodies b ON b.seq = d.seq
                 ORDER BY d.seq",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            moved,
            [
                ("msg_a".to_string(), b"{\"a\":1}".to_vec()),
                ("msg_b".to_string(), b"{\"b\":2}".to_vec())
            ]
        );
        let has_body: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('deliveries') WHERE name = 'body'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(has_body, 0, "the delivery rows no longer carry the body");
    }

    #[test]
    fn migration_4_moves_every_item_content_beside_its_item() {
        let conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        conn.execute(
            "INSERT INTO workflows (id, name, team, revision, created_at, updated_at)
             VALUES ('wf', 'wf', 't', 1, 0, 0)",
            [],
        )
        .unwrap();
        for (id, annotations) in [("a", "[{\"name\":\"crack\"}]"), ("b", "[]")] {
            conn.execute(
                "INSERT INTO items (id, workflow_id, stage_id, state, name, path, dataset_name,
                     dataset_slug, tags, properties, slots, annotations, fingerprint, version,
                     created_at, updated_at, entered_at)
                 VALUES (?1, 'wf', 'dataset', 'waiting', ?1, '/', 'd', 'd', '[\"t\"]',
                     '{\"line\":3}', '[]', ?2, 'f', 1, 0, 0, 0)",
                [id, annotations],
            )
            .unwrap();
        }
        migrate(&conn).unwrap();
        let moved: Vec<(String, String, String, String)> = conn
            .prepare(
                "SELECT i.id, i.tags, c.properties, c.annotations
                 FROM items i JOIN item_content c ON c.seq = i.seq ORDER BY i.seq",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let row = |id: &str, a: &str| {
            (
                id.to_string(),
                "[\"t\"]".to_string(),
                "{\"line\":3}".to_string(),
                a.to_string(),
            )
        };
        assert_eq!(moved, [row("a", "[{\"name\":\"crack\"}]"), row("b", "[]")]);
    }

    #[test]
    fn migration_8_gives_every_failed_delivery_the_cause_of_its_last_scheduled_attempt() {
        let conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..7] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 7).unwrap();
        for (id, state, kind) in [
            ("msg_a", "failed", Some("http_status")),
            ("msg_b", "failed", Some("timeout")),
            ("msg_c", "succeeded", None),
        ] {
            conn.execute(
                "INSERT INTO deliveries (id, workflow_id, stage_id, event, trigger, state,
                     last_error_kind, created_at, updated_at)
                 VALUES (?1, 'wf', 'hook', 'stage.webhook', 'route', ?2, ?3, 0, 0)",
                rusqlite::params![id, state, kind],
            )
            .unwrap();
        }
        // msg_a's manual replay after its last scheduled attempt does not decide its cause.
        for (delivery, number, trigger, message, body) in [
            (
                "msg_a",
                1,
                "scheduled",
                "400 Bad Request",
                &br#"{"error":"bad id 12"}"#[..],
            ),
            ("msg_a", 2, "manual", "503 Service Unavailable", b""),
            ("msg_b", 1, "scheduled", "timed out after 30012 ms", b""),
            ("msg_c", 1, "scheduled", "500 Internal Server Error", b""),
        ] {
            conn.execute(
                "INSERT INTO attempts (delivery_id, number, trigger, counted, started_at, url,
                     request_headers, error_message, response_body)
                 VALUES (?1, ?2, ?3, 1, 0, 'u', '[]', ?4, ?5)",
                rusqlite::params![delivery, number, trigger, message, body],
            )
            .unwrap();
        }
        migrate(&conn).unwrap();
        let classes: Vec<Option<String>> = conn
            .prepare("SELECT last_error_class FROM deliveries ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            classes,
            [
                Some("400 Bad Request: bad id #".to_string()),
                Some("timed out after # ms".to_string()),
                None,
            ]
        );
    }

    #[test]
    fn migration_6_keys_every_history_row_by_its_items_row_number() {
        let conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..5] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 5).unwrap();
        conn.execute(
            "INSERT INTO workflows (id, name, team, revision, created_at, updated_at)
             VALUES ('wf', 'wf', 't', 1, 0, 0)",
            [],
        )
        .unwrap();
        for id in ["a", "b", "c"] {
            conn.execute(
                "INSERT INTO items (id, workflow_id, stage_id, state, name, path, dataset_name,
                     dataset_slug, tags, fingerprint, version, created_at, updated_at, entered_at)
                 VALUES (?1, 'wf', 'dataset', 'waiting', ?1, '/', 'd', 'd', '[]', 'f', 1, 0, 0, 0)",
                [id],
            )
            .unwrap();
        }
        // Interleaved, as moves write them; `gone` has no item row (none is ever deleted, but
        // an old file's history is not trusted to be complete).
        for (item, to) in [
            ("b", "dataset"),
            ("a", "dataset"),
            ("b", "review"),
            ("gone", "dataset"),
            ("b", "done"),
            ("c", "dataset"),
        ] {
            conn.execute(
                "INSERT INTO history (item_id, workflow_id, to_stage, cause, revision, at)
                 VALUES (?1, 'wf', ?2, 'import', 1, 0)",
                [item, to],
            )
            .unwrap();
        }
        migrate(&conn).unwrap();
        let rows: Vec<(String, Option<i64>, String)> = conn
            .prepare("SELECT item_id, item_seq, to_stage FROM history ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let row = |id: &str, seq: Option<i64>, to: &str| (id.to_string(), seq, to.to_string());
        assert_eq!(
            rows,
            [
                row("b", Some(2), "dataset"),
                row("a", Some(1), "dataset"),
                row("b", Some(2), "review"),
                row("gone", None, "dataset"),
                row("b", Some(2), "done"),
                row("c", Some(3), "dataset"),
            ]
        );
        // An item's history is read through the new index, in order.
        let plan: Vec<String> = conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT to_stage FROM history
                 WHERE item_seq = (SELECT seq FROM items WHERE id = 'b') ORDER BY seq",
            )
            .unwrap()
            .query_map([], |r| r.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|p| p.contains("USING INDEX history_by_item (item_seq=?)")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{plan:?}");
    }

    #[test]
    fn refuses_a_newer_schema() {
        let conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
        let err = migrate(&conn).unwrap_err();
        assert!(err.contains("newer"), "{err}");
    }
}
