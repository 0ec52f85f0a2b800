//! The demo files, checked against the parser, the importer and the engine: `demo/workflow.toml`
//! parses with an empty environment and has every stage kind; `demo/items.jsonl` holds what the
//! demo needs (urgent and blurry items in both line formats); and every item routes the way the
//! comment at the top of the workflow file describes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::Engine as _;

use super::tests::item;
use super::*;
use crate::import::parse_jsonl;
use crate::model::NewItem;

fn demo_workflow() -> Workflow {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/demo/workflow.toml");
    let text = std::fs::read_to_string(path).unwrap();
    crate::workflow::parse("demo/workflow.toml", &text, &|_| None)
        .unwrap_or_else(|d| panic!("demo/workflow.toml does not parse: {d:#?}"))
}

fn demo_items() -> Vec<Item> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/demo/items.jsonl");
    let file = std::fs::File::open(path).unwrap();
    let parsed = parse_jsonl(std::io::BufReader::new(file)).unwrap();
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    assert_eq!(parsed.items.len(), 200);
    parsed.items.into_iter().map(to_item).collect()
}

fn to_item(n: NewItem) -> Item {
    let mut it = item(n.id.as_str(), "dataset");
    it.id = n.id;
    it.name = n.name;
    it.path = n.path;
    it.tags = n.tags;
    it.properties = n.properties;
    it.slots = n.slots;
    it.annotations = n.annotations;
    it
}

fn sid(s: &str) -> StageId {
    StageId::from(s)
}

/// Routes the item with `f` and applies the route to it, as the store would.
fn step(it: &mut Item, f: impl FnOnce(&Item) -> Result<Route, RouteError>) -> Route {
    let r = f(it).unwrap_or_else(|e| panic!("{}: {e}", it.id));
    it.stage = r.stage.clone();
    it.state = r.state;
    r
}

#[test]
fn demo_workflow_has_every_kind_and_short_demo_timings() {
    let w = demo_workflow();
    assert_eq!(
        (w.id.as_str(), w.name.as_str(), w.team.as_str()),
        ("defects", "Defect labelling", "acme")
    );
    let kinds: BTreeSet<StageKind> = w.stages.iter().map(|s| s.kind()).collect();
    assert_eq!(kinds.len(), StageKind::ALL.len(), "{kinds:?}");

    // Items wait for assignment: the dataset's next stage is a webhook stage.
    let Some(StageSpec::Dataset { next }) = w.dataset_stage().map(|s| &s.spec) else {
        panic!("no dataset stage");
    };
    assert_eq!(w.stage(next).map(|s| s.kind()), Some(StageKind::Webhook));

    let mut paths = BTreeSet::new();
    for s in &w.stages {
        let Some(h) = s.webhook() else { continue };
        let rest = h
            .url
            .strip_prefix("http://127.0.0.1:9000/")
            .unwrap_or_else(|| panic!("{}: {}", s.id, h.url));
        let path = rest.split('?').next().unwrap_or_default();
        assert!(paths.insert(path.to_string()), "path /{path} used twice");
        assert!(h.timeout <= Duration::from_secs(5), "{}", s.id);
        assert!(
            h.retry_schedule
                .iter()
                .all(|d| *d <= Duration::from_secs(5)),
            "{}: retries should show within seconds",
            s.id
        );
    }
    let want: BTreeSet<String> = ["validate", "qa", "export", "notify-slow", "archive"]
        .map(String::from)
        .into();
    assert_eq!(
        paths, want,
        "the receiver script in the file's header names these"
    );

    let validate = w.stage(&sid("validate")).and_then(|s| s.webhook()).unwrap();
    assert!(validate.url.ends_with("/validate?source=hookops"));
    assert_eq!(validate.secrets.len(), 1);
    let key = validate.secrets[0].strip_prefix("whsec_").unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap();
    assert!(bytes.len() >= 24, "signing key of {} bytes", bytes.len());
    assert!(!validate.headers.is_empty());
    assert_eq!(validate.on_failure, Some(sid("webhook-failed")));
    let parking = w.stage(&sid("webhook-failed")).unwrap();
    assert_eq!(parking.name, "Webhook failed");
    assert_eq!(
        parking.spec,
        StageSpec::Annotate {
            next: sid("validate")
        }
    );

    let slow = w
        .stage(&sid("notify-slow"))
        .and_then(|s| s.webhook())
        .unwrap();
    assert_eq!(slow.timeout, Duration::from_secs(2));
    assert_eq!(slow.max_attempts, 3);
    // The defaults are secrets too: they must be masked like any expansion.
    assert!(w.secrets.iter().any(|s| s == &validate.secrets[0]));
}

#[test]
fn demo_items_route_as_the_workflow_file_describes() {
    let w = demo_workflow();
    let mut at: BTreeMap<String, usize> = BTreeMap::new();
    // (urgent, blurry) counts per format: [plain, darwin]; Darwin lines are the ones with slots.
    let mut markers = [(0, 0); 2];
    for mut it in demo_items() {
        let r = step(&mut it, |it| import(&w, it));
        assert_eq!((r.stage.as_str(), r.state), ("dataset", ItemState::Waiting));
        let r = step(&mut it, |it| {
            enter(&w, it, &sid("validate"), HistoryCause::Assign)
        });
        assert!(r.deliver && r.state == ItemState::InDelivery);

        let blurry = it.properties.get("quality") == Some(&serde_json::json!("blurry"));
        let urgent = it.rule_tags().contains(&"urgent");
        let fmt = usize::from(!it.slots.is_empty());
        markers[fmt].0 += usize::from(urgent);
        markers[fmt].1 += usize::from(blurry);

        let r = step(&mut it, |it| outcome(&w, it, Outcome::WebhookSuccess));
        let want = match (blurry, urgent) {
            (true, _) => "discard",
            (false, true) => "review",
            (false, false) => "annotate",
        };
        assert_eq!(r.stage.as_str(), want, "{}", it.id);
        *at.entry(want.to_string()).or_default() += 1;
        if it.stage.as_str() == "annotate" {
            step(&mut it, |it| outcome(&w, it, Outcome::Advance));
        }
        if it.stage.as_str() == "review" {
            let r = step(&mut it, |it| outcome(&w, it, Outcome::Approve));
            assert!(r.deliver);
            *at.entry(r.stage.to_string()).or_default() += 1;
        }
    }
    for (fmt, (urgent, blurry)) in markers.iter().enumerate() {
        assert!(*urgent > 0 && *blurry > 0, "format {fmt}: {markers:?}");
    }
    let n = |s: &str| at.get(s).copied().unwrap_or_default();
    assert!((5..=30).contains(&n("discard")), "{at:?}");
    assert!((10..=35).contains(&n("review")), "{at:?}");
    assert!(n("annotate") > 130, "{at:?}");
    // Sampling 20/80 over the ~180 approved items.
    let sampled = n("qa-export") + n("export");
    assert_eq!(sampled, 200 - n("discard"));
    assert!(
        (sampled / 10..=sampled * 3 / 10).contains(&n("qa-export")),
        "{at:?}"
    );
}

#[test]
fn demo_webhook_edges_behave_as_documented() {
    let w = demo_workflow();
    let after = |stage: &str, o: Outcome| {
        let it = item("weld-1", stage);
        let r = outcome(&w, &it, o).unwrap();
        (r.stage.to_string(), r.state)
    };
    let s = |x: &str| x.to_string();
    assert_eq!(
        after("validate", Outcome::WebhookFailure),
        (s("webhook-failed"), ItemState::Active)
    );
    assert_eq!(
        after("webhook-failed", Outcome::Advance),
        (s("validate"), ItemState::InDelivery)
    );
    assert_eq!(
        after("review", Outcome::Reject),
        (s("annotate"), ItemState::Active)
    );
    assert_eq!(
        after("export", Outcome::WebhookSuccess),
        (s("notify-slow"), ItemState::InDelivery)
    );
    assert_eq!(
        after("export", Outcome::WebhookFailure),
        (s("review"), ItemState::Active)
    );
    for o in [Outcome::WebhookSuccess, Outcome::WebhookFailure] {
        assert_eq!(
            after("notify-slow", o),
            (s("archive"), ItemState::InDelivery)
        );
    }
    assert_eq!(
        after("archive", Outcome::WebhookSuccess),
        (s("complete"), ItemState::Done)
    );
    assert_eq!(
        after("archive", Outcome::WebhookFailure),
        (s("archive"), ItemState::Failed)
    );
    assert_eq!(
        after("qa-export", Outcome::WebhookSuccess),
        (s("complete"), ItemState::Done)
    );
    assert_eq!(
        after("qa-export", Outcome::WebhookFailure),
        (s("qa-export"), ItemState::Failed)
    );
}
