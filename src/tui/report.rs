//! How the console words what an action did: per id, so an operator sees which rows moved and
//! which were refused (and why), never only a count that may hide a surprise.
//!
//! The flash line names up to [`NAMED`] ids that the action did, counting the rest, and the
//! first refusal; [`Msg::ActionDone`] carries every refusal, one line per id, for the popup.

use super::state::{Level, Msg};
use crate::store::{Refusal, StoreError};

/// Ids named in the flash line at most.
pub const NAMED: usize = 5;

/// `ids` joined, at most [`NAMED`] of them, then how many more.
pub fn some_of(ids: &[String]) -> String {
    let mut s = ids
        .iter()
        .take(NAMED)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > NAMED {
        s.push_str(&format!(" and {} more", ids.len() - NAMED));
    }
    s
}

/// A store's item refusals as (id, reason).
pub fn refusals(r: &[Refusal]) -> Vec<(String, String)> {
    r.iter()
        .map(|r| (r.item_id.to_string(), r.reason.clone()))
        .collect()
}

/// The ids an action named that it did not refuse.
pub fn not_refused(ids: &[String], refused: &[(String, String)]) -> Vec<String> {
    ids.iter()
        .filter(|id| !refused.iter().any(|(r, _)| r == *id))
        .cloned()
        .collect()
}

/// The answer to an action: `verb` with the ids it was done to (`done`: `None` when the verb
/// already says how many), `extra` (what followed, e.g. deliveries queued), and each refusal.
pub fn per_id(
    verb: &str,
    done: Option<&[String]>,
    refused: Vec<(String, String)>,
    extra: &str,
) -> Msg {
    let mut text = verb.to_string();
    match done {
        Some([]) => text.push_str(": none"),
        Some(done) => {
            text.push_str(": ");
            text.push_str(&some_of(done));
        }
        None => {}
    }
    text.push_str(extra);
    if let Some((id, why)) = refused.first() {
        let ids: Vec<String> = refused.iter().map(|(id, _)| id.clone()).collect();
        if refused.len() == 1 {
            text.push_str(&format!(" · refused {id}: {why}"));
        } else {
            text.push_str(&format!(" · refused {}: {}", refused.len(), some_of(&ids)));
        }
    }
    Msg::ActionDone {
        level: if refused.is_empty() {
            Level::Info
        } else {
            Level::Warn
        },
        text,
        refused: refused
            .into_iter()
            .map(|(id, why)| format!("{id}: {why}"))
            .collect(),
    }
}

/// The answer to an action the store refused as a whole.
pub fn failed(e: StoreError) -> Msg {
    Msg::ActionDone {
        text: e.to_string(),
        level: Level::Error,
        refused: vec![],
    }
}
