//! Domain vocabulary shared by every layer: ids, states, kinds and causes.
//!
//! Every enum that is stored or printed has its string form defined here once (`as_str` /
//! `FromStr` / serde), so no other module spells a state by hand.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
            schemars::JsonSchema,
        )]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Self {
                Self(s.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_string())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
    };
}

id_type!(
    /// A workflow's slug, unique in the database.
    WorkflowId
);
id_type!(
    /// A stage's slug, unique within its workflow.
    StageId
);
id_type!(
    /// An item id: 1–128 characters from `[A-Za-z0-9._:-]`, unique in the database.
    ItemId
);
id_type!(
    /// `msg_` + a UUIDv7: the `webhook-id` header, `hookops.delivery_id` and the envelope `uid`.
    DeliveryId
);

impl DeliveryId {
    /// A fresh, time-ordered delivery id.
    pub fn generate() -> Self {
        Self(format!("msg_{}", uuid::Uuid::now_v7().simple()))
    }
}

/// Whether `s` is a valid item id (design §6 Identity).
pub fn is_valid_item_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Whether `s` is a valid workflow or stage slug: `[a-z0-9][a-z0-9_-]*`, at most 64.
pub fn is_valid_slug(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// Error for a string that names no variant of a string enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{value}` (expected one of: {expected})")]
pub struct ParseEnumError {
    pub what: &'static str,
    pub value: String,
    pub expected: String,
}

macro_rules! str_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }

        impl FromStr for $name {
            type Err = ParseEnumError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok($name::$variant),)+
                    _ => Err(ParseEnumError {
                        what: $what,
                        value: s.to_string(),
                        expected: [$($s),+].join(", "),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        // The API's OpenAPI document is generated from these (see `api::openapi`).
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "enum": [$($s),+] })
            }
        }
    };
}

str_enum!(
    /// Why the store refused an action on one object, so that front ends choose an exit
    /// code or an HTTP status without reading the words (`not_found` 404, `stale` 409,
    /// `invalid_transition` 422).
    RefusalKind, "refusal kind" {
        NotFound => "not_found",
        Stale => "stale",
        InvalidTransition => "invalid_transition",
    }
);

str_enum!(
    /// What a stage does with the items that enter it (design §1).
    StageKind, "stage kind" {
        Dataset => "dataset",
        Annotate => "annotate",
        Review => "review",
        Webhook => "webhook",
        Logic => "logic",
        Sampling => "sampling",
        Complete => "complete",
        Discard => "discard",
    }
);

impl StageKind {
    /// Automated stages move items out by themselves the moment they enter.
    pub fn is_automated(self) -> bool {
        matches!(
            self,
            StageKind::Webhook | StageKind::Logic | StageKind::Sampling
        )
    }
    pub fn is_terminal(self) -> bool {
        matches!(self, StageKind::Complete | StageKind::Discard)
    }
}

str_enum!(
    /// Where an item is in its life (design §1).
    ItemState, "item state" {
        Waiting => "waiting",
        Active => "active",
        InDelivery => "in_delivery",
        Failed => "failed",
        Done => "done",
    }
);

str_enum!(
    /// A delivery's state (design §1).
    DeliveryState, "delivery state" {
        Pending => "pending",
        InFlight => "in_flight",
        RetryScheduled => "retry_scheduled",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

impl DeliveryState {
    /// Open deliveries may still be sent.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            DeliveryState::Pending | DeliveryState::InFlight | DeliveryState::RetryScheduled
        )
    }
}

str_enum!(
    /// Why a delivery was created.
    DeliveryTrigger, "delivery trigger" {
        Route => "route",
        Assign => "assign",
        Refire => "refire",
        Test => "test",
    }
);

str_enum!(
    /// Whether an attempt was made by the schedule or by an operator (replay, test).
    AttemptTrigger, "attempt trigger" {
        Scheduled => "scheduled",
        Manual => "manual",
    }
);

str_enum!(
    /// Why an attempt did not get a 2xx (design §1, §6).
    ErrorKind, "error kind" {
        Connect => "connect",
        Timeout => "timeout",
        Tls => "tls",
        Redirect => "redirect",
        HttpStatus => "http_status",
        Body => "body",
        Policy => "policy",
        Interrupted => "interrupted",
        Protocol => "protocol",
    }
);

str_enum!(
    /// The cause recorded on every row of an item's history.
    HistoryCause, "history cause" {
        Import => "import",
        Assign => "assign",
        Advance => "advance",
        Approve => "approve",
        Reject => "reject",
        Route => "route",
        WebhookSuccess => "webhook_success",
        WebhookFailure => "webhook_failure",
        Refire => "refire",
        Cancelled => "cancelled",
    }
);

str_enum!(
    /// Why a delivery was cancelled.
    CancelReason, "cancel reason" {
        ItemMoved => "item_moved",
        Operator => "operator",
    }
);

str_enum!(
    /// The event a delivery carries.
    EventType, "event type" {
        StageWebhook => "stage.webhook",
        WebhookTest => "webhook.test",
        // Event notifications (`[[notify]]`, issue 7): never route, never pause, never notify.
        ItemCreated => "item.created",
        ItemStageChanged => "item.stage_changed",
        ItemCompleted => "item.completed",
        ItemDiscarded => "item.discarded",
        DeliveryFailed => "delivery.failed",
        StagePaused => "stage.paused",
    }
);

impl EventType {
    /// Whether this is an event notification of a `[[notify]]` entry.
    pub fn is_notification(self) -> bool {
        !matches!(self, EventType::StageWebhook | EventType::WebhookTest)
    }
}

str_enum!(
    /// How a webhook stage shapes its body (design §6).
    PayloadFormat, "payload format" {
        Darwin => "darwin",
        Envelope => "envelope",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_through_strings() {
        for k in StageKind::ALL {
            assert_eq!(k.as_str().parse::<StageKind>().unwrap(), *k);
        }
        for s in DeliveryState::ALL {
            assert_eq!(s.as_str().parse::<DeliveryState>().unwrap(), *s);
        }
        let err = "nope".parse::<ItemState>().unwrap_err();
        assert!(err.to_string().contains("in_delivery"), "{err}");
    }

    #[test]
    fn ids_and_slugs_are_checked() {
        assert!(is_valid_item_id("a.b_c:d-1"));
        assert!(!is_valid_item_id(""));
        assert!(!is_valid_item_id("a b"));
        assert!(!is_valid_item_id(&"x".repeat(129)));
        assert!(is_valid_slug("webhook-failed_2"));
        assert!(!is_valid_slug("Webhook"));
        assert!(!is_valid_slug("-a"));
        let d = DeliveryId::generate();
        assert!(
            d.as_str().starts_with("msg_") && d.as_str().len() == 36,
            "{d}"
        );
    }
}

/// A dataset reference as Darwin JSON writes it (`{name, slug}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DatasetRef {
    pub name: String,
    pub slug: String,
}

/// An item as the store holds it: what routing reads and payloads are built from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Item {
    pub id: ItemId,
    pub workflow: WorkflowId,
    pub stage: StageId,
    pub state: ItemState,
    pub name: String,
    /// Darwin `item.path`; `/` when the import gave none.
    pub path: String,
    pub dataset: DatasetRef,
    pub tags: Vec<String>,
    /// Item-level properties that logic rules read (string keys, JSON values).
    pub properties: serde_json::Map<String, serde_json::Value>,
    /// Darwin `item.slots`, passed through unchanged.
    pub slots: Vec<serde_json::Value>,
    /// Darwin JSON 2.0 annotation objects, each with a 36-character UUID `id`.
    pub annotations: Vec<serde_json::Value>,
    /// Bumped by every move; operator actions compare-and-set on it.
    pub version: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl Item {
    /// Tags as logic rules see them: the item's `tags` plus the names of its Darwin tag
    /// annotations (annotations that carry a `tag` object).
    pub fn rule_tags(&self) -> Vec<&str> {
        let mut tags: Vec<&str> = self.tags.iter().map(String::as_str).collect();
        for a in &self.annotations {
            if a.get("tag").is_some()
                && let Some(name) = a.get("name").and_then(|n| n.as_str())
            {
                tags.push(name);
            }
        }
        tags
    }
}

/// An item parsed from an import line, before it is stored (see `import`).
#[derive(Clone, Debug, PartialEq)]
pub struct NewItem {
    pub id: ItemId,
    pub name: String,
    /// `/` when the line gave none.
    pub path: String,
    /// From the line (Darwin `source_info.dataset`); `None` means "use the import's default".
    pub dataset: Option<DatasetRef>,
    pub tags: Vec<String>,
    pub properties: serde_json::Map<String, serde_json::Value>,
    pub slots: Vec<serde_json::Value>,
    /// Annotation objects, every one with a 36-character UUID `id`.
    pub annotations: Vec<serde_json::Value>,
    /// Hex SHA-256 of the canonical JSON of the content above, to tell "already present with
    /// the same content" from "already present but different".
    pub fingerprint: String,
    /// 1-based line number in the import file.
    pub line: usize,
    /// The content as the JSON text the store keeps, when the reading side already made it
    /// ([`NewItem::into_json`]); `tags`, `properties`, `slots` and `annotations` are then
    /// empty.
    pub json: Option<Box<ContentJson>>,
}

/// An item's content as the JSON text the store keeps.
#[derive(Clone, Debug, PartialEq)]
pub struct ContentJson {
    pub tags: String,
    pub properties: String,
    pub slots: String,
    pub annotations: String,
}

impl ContentJson {
    /// The content back as values (for what reads it, e.g. routing).
    pub fn values(&self) -> serde_json::Result<ItemContent> {
        Ok(ItemContent {
            tags: serde_json::from_str(&self.tags)?,
            properties: serde_json::from_str(&self.properties)?,
            slots: serde_json::from_str(&self.slots)?,
            annotations: serde_json::from_str(&self.annotations)?,
        })
    }
}

/// An item's content as values (see [`ContentJson::values`]).
pub struct ItemContent {
    pub tags: Vec<String>,
    pub properties: serde_json::Map<String, serde_json::Value>,
    pub slots: Vec<serde_json::Value>,
    pub annotations: Vec<serde_json::Value>,
}

impl NewItem {
    /// The item with its content turned into the JSON text the store keeps: a streaming
    /// import does this on its reading thread, so the store's writer, which holds the write
    /// lock, only binds text.
    pub fn into_json(mut self) -> NewItem {
        // Plain JSON values always serialise (their keys are strings): no error to lose.
        fn text<T: Serialize>(v: &T) -> String {
            serde_json::to_string(v).unwrap_or_default()
        }
        if self.json.is_none() {
            self.json = Some(Box::new(ContentJson {
                tags: text(&std::mem::take(&mut self.tags)),
                properties: text(&std::mem::take(&mut self.properties)),
                slots: text(&std::mem::take(&mut self.slots)),
                annotations: text(&std::mem::take(&mut self.annotations)),
            }));
        }
        self
    }
}

/// One finished attempt, as the console's log pane and `serve` print it.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct AttemptEvent {
    pub at: DateTime<Utc>,
    pub delivery_id: DeliveryId,
    pub event: EventType,
    pub workflow: WorkflowId,
    pub stage: StageId,
    pub item_id: Option<ItemId>,
    pub item_name: Option<String>,
    pub number: i64,
    pub trigger: AttemptTrigger,
    /// Counted attempts so far and the stage's maximum.
    pub attempts: i64,
    pub max_attempts: u32,
    pub status: Option<u16>,
    pub error_kind: Option<ErrorKind>,
    pub error_message: Option<String>,
    pub duration_ms: i64,
    /// The URL as sent, secrets redacted.
    #[serde(default)]
    pub url: String,
    /// The start of the response body (at most 200 bytes, as text).
    #[serde(default)]
    pub response_excerpt: Option<String>,
    /// The delivery's state after this attempt.
    pub state: DeliveryState,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub routed_to: Option<StageId>,
    pub paused_stage: bool,
    pub lease_lost: bool,
}

/// The start of a response body for a log line: at most [`EXCERPT_BYTES`] bytes, as text (a
/// character cut in two at the end is dropped).
pub fn excerpt(body: &[u8]) -> String {
    let head = &body[..body.len().min(EXCERPT_BYTES)];
    match std::str::from_utf8(head) {
        Ok(s) => s.to_string(),
        Err(e) if e.error_len().is_none() => {
            String::from_utf8_lossy(&head[..e.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(head).into_owned(),
    }
}

/// How much of a response body a log line keeps.
pub const EXCERPT_BYTES: usize = 200;

/// What happened on the wire, to be recorded.
#[derive(Clone, Debug, Default)]
pub struct AttemptOutcome {
    pub started_at: i64,
    pub duration_ms: i64,
    /// The URL as sent, secrets redacted.
    pub url: String,
    /// Request headers as sent, secrets redacted.
    pub request_headers: Vec<(String, String)>,
    pub status: Option<u16>,
    pub response_headers: Vec<(String, String)>,
    /// At most the first 64 KiB.
    pub response_body: Option<Vec<u8>>,
    pub error_kind: Option<ErrorKind>,
    pub error_message: Option<String>,
    pub retry_after: Option<String>,
}

/// "5 (2 bounding_box, 2 polygon, 1 tag)": counts per annotation type.
pub fn annotation_summary(annotations: &[serde_json::Value]) -> String {
    const TYPES: &[&str] = &[
        "bounding_box",
        "polygon",
        "complex_polygon",
        "ellipse",
        "keypoint",
        "line",
        "skeleton",
        "tag",
        "mask",
        "raster_layer",
        "cuboid",
        "text",
        "attributes",
    ];
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for a in annotations {
        let kind = TYPES
            .iter()
            .find(|t| a.get(**t).is_some())
            .copied()
            .unwrap_or("other");
        *counts.entry(kind).or_default() += 1;
    }
    if counts.is_empty() {
        return "0".into();
    }
    format!(
        "{} ({})",
        annotations.len(),
        counts
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}
