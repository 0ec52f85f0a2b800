//! `hookops db copy`: a whole store into an empty other, either backend on either side (design
//! §7, "Moving"). Every table is read in one snapshot of the source, so the copy is consistent
//! while the source keeps running, and written in short chunks of the target's writer. Ids,
//! delivery ids, row numbers and times are kept, so a receiver that deduplicates on
//! `webhook-id` sees no new ids after a move. Dispatcher heartbeats are not copied: they belong
//! to the processes of the source.

use std::collections::BTreeMap;

use serde::Serialize;

use super::seam::{Cell, Kind};
use super::{Result, Store, StoreError};

/// A table of the store as a copy sees it: its name, its columns and their kinds, and whether
/// it is paged by a `seq` column (the first one) or small enough to read whole.
pub(crate) struct Table {
    pub name: &'static str,
    pub columns: &'static [(&'static str, Kind)],
    pub paged: bool,
}

use Kind::{Bytes as B, Int as I, Real as R, Text as T};

/// Every table a copy takes, in an order that satisfies the foreign keys.
pub(crate) const TABLES: &[Table] = &[
    Table {
        name: "workflows",
        columns: &[
            ("id", T),
            ("name", T),
            ("team", T),
            ("revision", I),
            ("created_at", I),
            ("updated_at", I),
        ],
        paged: false,
    },
    Table {
        name: "workflow_revisions",
        columns: &[
            ("workflow_id", T),
            ("revision", I),
            ("spec", T),
            ("applied_at", I),
            ("operator", T),
        ],
        paged: false,
    },
    Table {
        name: "stages",
        columns: &[
            ("seq", I),
            ("workflow_id", T),
            ("id", T),
            ("name", T),
            ("kind", T),
            ("position", I),
            ("retired_at", I),
            ("paused", I),
            ("paused_reason", T),
            ("consecutive_failures", I),
            ("held_until", I),
            ("held_reason", T),
            ("bucket_tokens", R),
            ("bucket_at", I),
            ("next_token_at", I),
            ("concurrency_limit", I),
            ("limit_successes", I),
            ("limit_decreased_at", I),
        ],
        paged: true,
    },
    Table {
        name: "items",
        columns: &[
            ("seq", I),
            ("id", T),
            ("workflow_id", T),
            ("stage_id", T),
            ("state", T),
            ("name", T),
            ("path", T),
            ("dataset_name", T),
            ("dataset_slug", T),
            ("tags", T),
            ("fingerprint", T),
            ("version", I),
            ("created_at", I),
            ("updated_at", I),
            ("entered_at", I),
        ],
        paged: true,
    },
    Table {
        name: "item_content",
        columns: &[
            ("seq", I),
            ("properties", T),
            ("slots", T),
            ("annotations", T),
        ],
        paged: true,
    },
    Table {
        name: "history",
        columns: &[
            ("seq", I),
            ("item_seq", I),
            ("item_id", T),
            ("workflow_id", T),
            ("from_stage", T),
            ("to_stage", T),
            ("cause", T),
            ("operator", T),
            ("revision", I),
            ("delivery_id", T),
            ("at", I),
        ],
        paged: true,
    },
    Table {
        name: "deliveries",
        columns: &[
            ("seq", I),
            ("id", T),
            ("workflow_id", T),
            ("stage_id", T),
            ("item_id", T),
            ("event", T),
            ("trigger", T),
            ("state", T),
            ("item_version", I),
            ("attempts", I),
            ("next_number", I),
            ("next_attempt_at", I),
            ("lease_token", T),
            ("lease_until", I),
            ("lease_owner", T),
            ("lease_number", I),
            ("routed_version", I),
            ("refire_of", T),
            ("cancel_reason", T),
            ("cancelled_by", T),
            ("last_status", I),
            ("last_error_kind", T),
            ("last_error_class", T),
            ("last_attempt_at", I),
            ("created_at", I),
            ("updated_at", I),
        ],
        paged: true,
    },
    Table {
        name: "delivery_bodies",
        columns: &[("seq", I), ("body", B)],
        paged: true,
    },
    Table {
        name: "attempts",
        columns: &[
            ("seq", I),
            ("delivery_id", T),
            ("number", I),
            ("trigger", T),
            ("counted", I),
            ("started_at", I),
            ("duration_ms", I),
            ("url", T),
            ("request_headers", T),
            ("status", I),
            ("response_headers", T),
            ("response_body", B),
            ("error_kind", T),
            ("error_message", T),
        ],
        paged: true,
    },
    Table {
        name: "audit",
        columns: &[
            ("seq", I),
            ("at", I),
            ("operator", T),
            ("action", T),
            ("target", T),
            ("filter", T),
            ("count", I),
            ("via", T),
            ("outcome", T),
            ("matched", I),
            ("ids", T),
        ],
        paged: true,
    },
    Table {
        name: "settings",
        columns: &[("key", T), ("value", T)],
        paged: false,
    },
    Table {
        name: "item_counts",
        columns: &[("workflow_id", T), ("stage_id", T), ("state", T), ("n", I)],
        paged: false,
    },
    Table {
        name: "delivery_counts",
        columns: &[("workflow_id", T), ("stage_id", T), ("state", T), ("n", I)],
        paged: false,
    },
];

/// Rows per read page and per write chunk.
const PAGE: usize = 2000;

/// What a copy did: rows per table, as read from the source and as counted in the target
/// after the copy.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CopyReport {
    pub source: BTreeMap<String, i64>,
    pub target: BTreeMap<String, i64>,
}

impl Store {
    /// Copies this whole store into `target`, which must hold no workflow yet. `progress` hears
    /// (table, rows copied of it so far) after each chunk.
    pub fn copy_into(
        &self,
        target: &Store,
        progress: &mut dyn FnMut(&str, u64),
    ) -> Result<CopyReport> {
        target.ensure_writable("db copy")?;
        if target.read(|r| r.row_count("workflows"))? > 0 {
            return Err(StoreError::Refused(format!(
                "{} already holds a store: db copy writes only into an empty one",
                target.location()
            )));
        }
        let mut report = CopyReport::default();
        // One snapshot of the source for every table.
        self.read(|r| {
            for (i, table) in TABLES.iter().enumerate() {
                let mut after = i64::MIN;
                let mut copied = 0u64;
                loop {
                    let rows = r.table_rows(table, after, PAGE)?;
                    let done = !table.paged || rows.len() < PAGE;
                    if let Some(Cell::Int(last)) = rows.last().and_then(|row| row.first()) {
                        after = *last;
                    }
                    copied += rows.len() as u64;
                    if !rows.is_empty() {
                        target.write("db copy", move |tx| {
                            tx.rows().insert_rows(&TABLES[i], &rows)
                        })?;
                    }
                    progress(table.name, copied);
                    if done {
                        break;
                    }
                }
                report.source.insert(table.name.to_string(), copied as i64);
            }
            Ok(())
        })?;
        target.write("db copy", |tx| tx.rows().follow_copied_rows())?;
        for table in TABLES {
            let n = target.read(|r| r.row_count(table.name))?;
            report.target.insert(table.name.to_string(), n);
        }
        Ok(report)
    }
}
