//! Request bodies: the Darwin JSON 2.0 document of an item, or the Encord-style envelope.
//!
//! A body is built once, when its delivery is created, and frozen: every attempt, replay and
//! signature uses the same bytes, so nothing that varies per attempt (timestamps of the try,
//! attempt numbers) goes in it. Builders are pure: the caller passes the delivery's metadata,
//! including its creation time. Bodies are compact JSON; `serde_json` here sorts object keys,
//! which keeps the output byte-stable for the same input.
//!
//! Receivers written against V7's or Encord's documented shapes parse these unchanged: the
//! Darwin document has the fields of a V7 export (design §6), and the extra `hookops` key is a
//! single namespaced addition that Darwin readers ignore.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use crate::model::{
    DatasetRef, DeliveryId, DeliveryTrigger, EventType, Item, ItemId, ItemState, PayloadFormat,
    StageId,
};
use crate::workflow::{Stage, WebhookConfig, Workflow};

/// The Darwin JSON 2.0 schema URL that darwin-py's exporter writes (and V7's own exports carry).
pub const SCHEMA_REF: &str =
    "https://darwin-public.s3.eu-west-1.amazonaws.com/darwin_json/2.0/schema.json";

/// The Darwin JSON format version.
pub const DARWIN_VERSION: &str = "2.0";

/// The envelope's `source`.
pub const ENVELOPE_SOURCE: &str = "hookops";

/// The envelope's major `version`.
pub const ENVELOPE_VERSION: u32 = 1;

/// Name of the sample item [`test_body`] sends.
pub const TEST_ITEM_NAME: &str = "hookops-test.jpg";

/// Id of the sample item [`test_body`] sends.
pub const TEST_ITEM_ID: &str = "hookops-test";

/// What a body says about its delivery. Fixed when the delivery is created.
#[derive(Clone, Debug, PartialEq)]
pub struct DeliveryMeta {
    pub delivery_id: DeliveryId,
    pub event: EventType,
    pub trigger: DeliveryTrigger,
    /// The stage the item came from, when it came from one.
    pub previous_stage: Option<StageId>,
    pub created_at: DateTime<Utc>,
}

/// Why a body could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Only webhook stages send bodies.
    #[error("stage `{0}` is not a webhook stage, so it has no payload")]
    NotWebhookStage(StageId),
    /// JSON serialisation failed (not expected for `serde_json::Value`).
    #[error("could not serialise the payload: {0}")]
    Json(#[from] serde_json::Error),
}

/// A URL-style slug: ASCII lowercase letters and digits, every other run of characters one `-`,
/// no leading or trailing `-` (`"E2E Testing"` → `"e2e-testing"`).
pub fn slugify(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut dash = false;
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.push(c.to_ascii_lowercase());
        } else {
            dash = true;
        }
    }
    out
}

/// The item's V7-style workview link, when the workflow has a `workview_url_base`.
pub fn workview_url(wf: &Workflow, item: &ItemId) -> Option<String> {
    wf.workview_url_base
        .as_deref()
        .map(|base| format!("{}/items/{}", base.trim_end_matches('/'), item))
}

/// The Darwin JSON 2.0 document of `item`: `version`, `schema_ref`,
/// `item{name, path, source_info{item_id, dataset, team, workview_url}, slots}` and, when
/// `include_annotations`, `annotations` (`[]` when there are none). Slots and annotations are
/// passed through unchanged; `workview_url` is absent without a `workview_url_base`.
pub fn darwin_document(wf: &Workflow, item: &Item, include_annotations: bool) -> Value {
    let mut source_info = Map::new();
    source_info.insert("item_id".into(), json!(item.id));
    source_info.insert(
        "dataset".into(),
        json!({ "name": item.dataset.name, "slug": item.dataset.slug }),
    );
    source_info.insert(
        "team".into(),
        json!({ "name": wf.team, "slug": slugify(&wf.team) }),
    );
    if let Some(url) = workview_url(wf, &item.id) {
        source_info.insert("workview_url".into(), Value::String(url));
    }

    let mut doc = Map::new();
    doc.insert("version".into(), json!(DARWIN_VERSION));
    doc.insert("schema_ref".into(), json!(SCHEMA_REF));
    doc.insert(
        "item".into(),
        json!({
            "name": item.name,
            "path": item.path,
            "source_info": source_info,
            "slots": item.slots,
        }),
    );
    if include_annotations {
        doc.insert("annotations".into(), Value::Array(item.annotations.clone()));
    }
    Value::Object(doc)
}

fn webhook_config(stage: &Stage) -> Result<&WebhookConfig, PayloadError> {
    stage
        .webhook()
        .ok_or_else(|| PayloadError::NotWebhookStage(stage.id.clone()))
}

/// RFC 3339 in UTC with a `Z` and milliseconds (`2024-01-01T12:00:00.000Z`).
fn rfc3339_utc(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// ISO 8601 with microseconds and a numeric offset, as Encord writes it
/// (`2024-03-25T15:18:55.406529+00:00`).
fn encord_timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// The body as a JSON value, before serialisation.
fn body_value(
    wf: &Workflow,
    stage: &Stage,
    item: &Item,
    meta: &DeliveryMeta,
) -> Result<Value, PayloadError> {
    let cfg = webhook_config(stage)?;
    let darwin = darwin_document(wf, item, cfg.include_annotations);
    Ok(match cfg.payload {
        PayloadFormat::Darwin => {
            let mut doc = darwin;
            if let Value::Object(map) = &mut doc {
                map.insert(
                    "hookops".into(),
                    json!({
                        "event": meta.event,
                        "delivery_id": meta.delivery_id,
                        "trigger": meta.trigger,
                        "workflow": { "id": wf.id, "name": wf.name },
                        "stage": { "id": stage.id, "name": stage.name },
                        "previous_stage": meta.previous_stage,
                        "created_at": rfc3339_utc(&meta.created_at),
                    }),
                );
            }
            doc
        }
        PayloadFormat::Envelope => {
            let mut payload = Map::new();
            payload.insert("project_hash".into(), json!(wf.id));
            payload.insert("data_hash".into(), json!(item.id));
            payload.insert("data_hashes".into(), json!([item.id]));
            payload.insert("label_hash".into(), json!(item.id));
            payload.insert("label_hashes".into(), json!([item.id]));
            payload.insert("workflow_id".into(), json!(wf.id));
            payload.insert("stage_id".into(), json!(stage.id));
            payload.insert("item_id".into(), json!(item.id));
            payload.insert("item_name".into(), json!(item.name));
            payload.insert("tags".into(), json!(item.tags));
            payload.insert("properties".into(), Value::Object(item.properties.clone()));
            if cfg.include_annotations {
                payload.insert("annotations".into(), Value::Array(item.annotations.clone()));
            }
            payload.insert("darwin".into(), darwin);
            // A test must not look like a real event to a receiver that acts on event_type.
            let event_type = match meta.event {
                EventType::StageWebhook => cfg.event_type.as_str(),
                other => other.as_str(),
            };
            json!({
                "uid": meta.delivery_id,
                "version": ENVELOPE_VERSION,
                "source": ENVELOPE_SOURCE,
                "event_type": event_type,
                "event_created_timestamp": encord_timestamp(&meta.created_at),
                "payload": payload,
            })
        }
    })
}

/// The frozen body of a delivery of `item` through the webhook `stage`, as compact JSON.
///
/// `payload = "darwin"`: the Darwin document plus
/// `hookops{event, delivery_id, trigger, workflow{id, name}, stage{id, name}, previous_stage,
/// created_at}`. `payload = "envelope"`: `{uid, version, source, event_type,
/// event_created_timestamp, payload{…, darwin}}`; `event_type` is the stage's for
/// `stage.webhook` deliveries and the event's own name (`webhook.test`) otherwise.
pub fn build_body(
    wf: &Workflow,
    stage: &Stage,
    item: &Item,
    meta: &DeliveryMeta,
) -> Result<Vec<u8>, PayloadError> {
    Ok(serde_json::to_vec(&body_value(wf, stage, item, meta)?)?)
}

/// The sample item a test delivery carries: `hookops-test.jpg`, one 1920×1080 image slot and
/// one bounding box, tagged `hookops-test`.
pub fn sample_item(wf: &Workflow, stage: &Stage, created_at: DateTime<Utc>) -> Item {
    let mut properties = Map::new();
    properties.insert("hookops_test".into(), Value::Bool(true));
    Item {
        id: ItemId::new(TEST_ITEM_ID),
        workflow: wf.id.clone(),
        stage: stage.id.clone(),
        state: ItemState::Active,
        name: TEST_ITEM_NAME.into(),
        path: "/".into(),
        dataset: DatasetRef {
            name: wf.id.to_string(),
            slug: wf.id.to_string(),
        },
        tags: vec!["hookops-test".into()],
        properties,
        slots: vec![json!({
            "type": "image",
            "slot_name": "0",
            "width": 1920,
            "height": 1080,
            "source_files": [{ "file_name": TEST_ITEM_NAME }],
        })],
        annotations: vec![json!({
            "id": "00000000-0000-4000-8000-000000000001",
            "name": "hookops-test-box",
            "bounding_box": { "h": 100.0, "w": 200.0, "x": 10.0, "y": 20.0 },
            "properties": [],
            "slot_names": ["0"],
        })],
        version: 0,
        created_at,
        updated_at: created_at,
    }
}

/// The body of a `webhook.test` delivery: [`sample_item`] in the stage's format, with the
/// stage's `include_annotations`.
pub fn test_body(
    wf: &Workflow,
    stage: &Stage,
    meta: &DeliveryMeta,
) -> Result<Vec<u8>, PayloadError> {
    let item = sample_item(wf, stage, meta.created_at);
    build_body(wf, stage, &item, meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::WorkflowId;
    use crate::workflow::StageSpec;
    use chrono::TimeZone;
    use std::time::Duration;

    const FIXTURES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jsonl/darwin-v2"
    );

    fn cfg(payload: PayloadFormat, include_annotations: bool) -> WebhookConfig {
        WebhookConfig {
            url: "http://127.0.0.1:9000/hook?route=a".into(),
            authorization: None,
            headers: vec![],
            secrets: vec![],
            include_annotations,
            payload,
            event_type: "task_completed_event".into(),
            max_attempts: 6,
            timeout: Duration::from_secs(10),
            retry_schedule: WebhookConfig::default_retry_schedule(),
            pause_after_failures: 50,
            max_in_flight: None,
            rate_limit: None,
            on_success: StageId::new("done"),
            on_failure: None,
        }
    }

    fn stage(payload: PayloadFormat, include_annotations: bool) -> Stage {
        Stage {
            id: StageId::new("export"),
            name: "Export".into(),
            spec: StageSpec::Webhook(cfg(payload, include_annotations)),
        }
    }

    fn workflow(base: Option<&str>) -> Workflow {
        Workflow {
            id: WorkflowId::new("wf1"),
            name: "Workflow One".into(),
            team: "E2E Testing".into(),
            workview_url_base: base.map(String::from),
            stages: vec![stage(PayloadFormat::Darwin, true)],
            notify: vec![],
            secrets: vec![],
        }
    }

    fn meta() -> DeliveryMeta {
        DeliveryMeta {
            delivery_id: DeliveryId::new("msg_0190abcdef"),
            event: EventType::StageWebhook,
            trigger: DeliveryTrigger::Route,
            previous_stage: Some(StageId::new("annotate")),
            created_at: Utc.with_ymd_and_hms(2024, 1, 1, 12, 0, 0).unwrap()
                + chrono::Duration::microseconds(406_529),
        }
    }

    /// An item built by hand from a Darwin export, as import would store it.
    fn item_from_export(doc: &Value) -> Item {
        let it = &doc["item"];
        let si = &it["source_info"];
        let t = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
        Item {
            id: ItemId::new(si["item_id"].as_str().unwrap()),
            workflow: WorkflowId::new("wf1"),
            stage: StageId::new("export"),
            state: ItemState::InDelivery,
            name: it["name"].as_str().unwrap().into(),
            path: it["path"].as_str().unwrap().into(),
            dataset: DatasetRef {
                name: si["dataset"]["name"].as_str().unwrap().into(),
                slug: si["dataset"]["slug"].as_str().unwrap().into(),
            },
            tags: vec!["t1".into()],
            properties: Map::new(),
            slots: it["slots"].as_array().unwrap().clone(),
            annotations: doc["annotations"].as_array().unwrap().clone(),
            version: 3,
            created_at: t,
            updated_at: t,
        }
    }

    fn fixtures() -> Vec<(String, Value)> {
        let mut out: Vec<(String, Value)> = std::fs::read_dir(FIXTURES)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .map(|p| {
                let v = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                (p.display().to_string(), v)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(out.len(), 34, "expected the 34 darwin-py fixtures");
        out
    }

    #[test]
    fn schema_ref_is_the_one_the_exports_carry() {
        for (name, doc) in fixtures() {
            assert_eq!(doc["schema_ref"], SCHEMA_REF, "{name}");
            assert_eq!(doc["version"], DARWIN_VERSION, "{name}");
        }
    }

    #[test]
    fn darwin_document_reproduces_every_fixture() {
        let wf = workflow(None);
        for (name, export) in fixtures() {
            let item = item_from_export(&export);
            let doc = darwin_document(&wf, &item, true);
            assert_eq!(doc["version"], "2.0", "{name}");
            assert_eq!(doc["schema_ref"], export["schema_ref"], "{name}");
            assert_eq!(doc["item"]["name"], export["item"]["name"], "{name}");
            assert_eq!(doc["item"]["path"], export["item"]["path"], "{name}");
            assert_eq!(doc["item"]["slots"], export["item"]["slots"], "{name}");
            assert_eq!(doc["annotations"], export["annotations"], "{name}");
            let (si, esi) = (&doc["item"]["source_info"], &export["item"]["source_info"]);
            assert_eq!(si["item_id"], esi["item_id"], "{name}");
            assert_eq!(si["dataset"]["name"], esi["dataset"]["name"], "{name}");
            assert_eq!(si["dataset"]["slug"], esi["dataset"]["slug"], "{name}");
            // The workflow's team, slugified as V7 does.
            assert_eq!(si["team"], esi["team"], "{name}");
            assert!(si.get("workview_url").is_none(), "{name}");
            // Annotation ids are untouched, and 36-character UUIDs as Darwin readers need.
            for (a, e) in doc["annotations"]
                .as_array()
                .unwrap()
                .iter()
                .zip(export["annotations"].as_array().unwrap())
            {
                assert_eq!(a["id"], e["id"], "{name}");
                assert_eq!(a["id"].as_str().unwrap().len(), 36, "{name}");
            }
            // Through the frozen bytes too.
            let body =
                build_body(&wf, &stage(PayloadFormat::Darwin, true), &item, &meta()).unwrap();
            let back: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(back["annotations"], export["annotations"], "{name}");
            assert_eq!(back["item"]["slots"], export["item"]["slots"], "{name}");
        }
    }

    #[test]
    fn include_annotations_false_omits_the_key_and_none_is_empty_list() {
        let wf = workflow(None);
        let (_, export) = fixtures().remove(0);
        let mut item = item_from_export(&export);
        let doc = darwin_document(&wf, &item, false);
        assert!(doc.get("annotations").is_none());
        assert_eq!(doc["item"]["slots"], export["item"]["slots"]);
        let body = build_body(&wf, &stage(PayloadFormat::Darwin, false), &item, &meta()).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v.get("annotations").is_none());
        assert!(v.get("hookops").is_some());

        item.annotations.clear();
        let doc = darwin_document(&wf, &item, true);
        assert_eq!(doc["annotations"], json!([]));
    }

    #[test]
    fn workview_url_only_with_a_base() {
        let (_, export) = fixtures().remove(0);
        let item = item_from_export(&export);
        let doc = darwin_document(&workflow(Some("https://darwin.example/wf1/")), &item, true);
        assert_eq!(
            doc["item"]["source_info"]["workview_url"],
            format!("https://darwin.example/wf1/items/{}", item.id)
        );
        let doc = darwin_document(&workflow(None), &item, true);
        assert!(doc["item"]["source_info"].get("workview_url").is_none());
    }

    #[test]
    fn darwin_body_has_the_hookops_key_and_is_compact() {
        let wf = workflow(None);
        let (_, export) = fixtures().remove(0);
        let item = item_from_export(&export);
        let st = stage(PayloadFormat::Darwin, true);
        let body = build_body(&wf, &st, &item, &meta()).unwrap();
        assert!(!body.contains(&b'\n'));
        assert!(!body.windows(2).any(|w| w == b": " || w == b", "));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["hookops"],
            json!({
                "event": "stage.webhook",
                "delivery_id": "msg_0190abcdef",
                "trigger": "route",
                "workflow": { "id": "wf1", "name": "Workflow One" },
                "stage": { "id": "export", "name": "Export" },
                "previous_stage": "annotate",
                "created_at": "2024-01-01T12:00:00.406Z",
            })
        );
        let mut m = meta();
        m.previous_stage = None;
        let v: Value = serde_json::from_slice(&build_body(&wf, &st, &item, &m).unwrap()).unwrap();
        assert_eq!(v["hookops"]["previous_stage"], Value::Null);
        // Same inputs, same bytes.
        assert_eq!(body, build_body(&wf, &st, &item, &meta()).unwrap());
    }

    #[test]
    fn envelope_has_the_encord_shape() {
        let wf = workflow(Some("https://darwin.example"));
        let (_, export) = fixtures().remove(0);
        let mut item = item_from_export(&export);
        item.properties.insert("priority".into(), json!("high"));
        let st = stage(PayloadFormat::Envelope, true);
        let v: Value =
            serde_json::from_slice(&build_body(&wf, &st, &item, &meta()).unwrap()).unwrap();
        let id = item.id.as_str();
        assert_eq!(v["uid"], "msg_0190abcdef");
        assert_eq!(v["version"], 1);
        assert_eq!(v["source"], "hookops");
        assert_eq!(v["event_type"], "task_completed_event");
        assert_eq!(
            v["event_created_timestamp"],
            "2024-01-01T12:00:00.406529+00:00"
        );
        let p = &v["payload"];
        assert_eq!(p["project_hash"], "wf1");
        assert_eq!(p["data_hash"], id);
        assert_eq!(p["data_hashes"], json!([id]));
        assert_eq!(p["label_hash"], id);
        assert_eq!(p["label_hashes"], json!([id]));
        assert_eq!(p["workflow_id"], "wf1");
        assert_eq!(p["stage_id"], "export");
        assert_eq!(p["item_id"], id);
        assert_eq!(p["item_name"], export["item"]["name"]);
        assert_eq!(p["tags"], json!(["t1"]));
        assert_eq!(p["properties"], json!({ "priority": "high" }));
        assert_eq!(p["annotations"], export["annotations"]);
        assert_eq!(p["darwin"], darwin_document(&wf, &item, true));
        assert!(p["darwin"].get("hookops").is_none());
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "event_created_timestamp",
                "event_type",
                "payload",
                "source",
                "uid",
                "version"
            ]
        );

        let st = stage(PayloadFormat::Envelope, false);
        let v: Value =
            serde_json::from_slice(&build_body(&wf, &st, &item, &meta()).unwrap()).unwrap();
        assert!(v["payload"].get("annotations").is_none());
        assert!(v["payload"]["darwin"].get("annotations").is_none());
    }

    #[test]
    fn only_webhook_stages_have_bodies() {
        let wf = workflow(None);
        let (_, export) = fixtures().remove(0);
        let item = item_from_export(&export);
        let st = Stage {
            id: StageId::new("review"),
            name: "review".into(),
            spec: StageSpec::Complete,
        };
        let err = build_body(&wf, &st, &item, &meta()).unwrap_err();
        assert!(matches!(err, PayloadError::NotWebhookStage(ref s) if s == "review"));
        assert!(err.to_string().contains("`review`"));
    }

    #[test]
    fn test_body_follows_the_stage_format() {
        let wf = workflow(None);
        let mut m = meta();
        m.event = EventType::WebhookTest;
        m.trigger = DeliveryTrigger::Test;
        m.previous_stage = None;

        let v: Value = serde_json::from_slice(
            &test_body(&wf, &stage(PayloadFormat::Darwin, true), &m).unwrap(),
        )
        .unwrap();
        assert_eq!(v["item"]["name"], TEST_ITEM_NAME);
        assert_eq!(v["item"]["source_info"]["item_id"], TEST_ITEM_ID);
        assert_eq!(v["annotations"].as_array().unwrap().len(), 1);
        assert!(v["annotations"][0].get("bounding_box").is_some());
        assert_eq!(v["annotations"][0]["id"].as_str().unwrap().len(), 36);
        assert_eq!(v["hookops"]["event"], "webhook.test");
        assert_eq!(v["hookops"]["trigger"], "test");

        let v: Value = serde_json::from_slice(
            &test_body(&wf, &stage(PayloadFormat::Envelope, false), &m).unwrap(),
        )
        .unwrap();
        assert_eq!(v["event_type"], "webhook.test");
        assert_eq!(v["payload"]["item_name"], TEST_ITEM_NAME);
        assert!(v["payload"].get("annotations").is_none());
        assert_eq!(v["payload"]["darwin"]["item"]["name"], TEST_ITEM_NAME);
    }

    #[test]
    fn slugs() {
        assert_eq!(slugify("E2E Testing"), "e2e-testing");
        assert_eq!(slugify("  Acme -- Labs! "), "acme-labs");
        assert_eq!(slugify("Ünïcode Team"), "n-code-team");
        assert_eq!(slugify(""), "");
    }
}
