//! Pure routing: where an item goes when it is imported, put into a stage, or when something
//! happens in its stage (design §1).
//!
//! Every function here is a pure function of a [`Workflow`] and an [`Item`]: no IO, no clock,
//! no randomness (sampling hashes the item id, so the same item always takes the same branch).
//! The answer is a [`Route`]: every hop taken, one history row each, and where the item ends up.
//! Automated stages resolve inside the same call: logic and sampling route on at once, and
//! entering a webhook stage ends the route with `deliver = true`, so the caller writes the move
//! and the delivery in one transaction. The store applies a route; this module never sees it.
//!
//! Invariant: routing always terminates. Validation rejects cycles made only of automated
//! stages, but a route over an unvalidated workflow stops with [`RouteError::TooManyHops`]
//! instead of looping.

pub mod cause;
pub mod classify;
pub mod delivery;
pub mod flow;
pub mod payload;

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::model::{
    HistoryCause, Item, ItemId, ItemState, ParseEnumError, StageId, StageKind, WorkflowId,
};
use crate::workflow::{Condition, Rule, Split, StageSpec, Workflow};

/// Something that happened to an item in its current stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A person finished the item in a dataset or annotate stage (`item advance`).
    Advance,
    /// A reviewer approved the item in a review stage.
    Approve,
    /// A reviewer rejected the item in a review stage.
    Reject,
    /// The webhook stage's delivery succeeded.
    WebhookSuccess,
    /// The webhook stage's delivery failed for good (final status or attempts exhausted).
    WebhookFailure,
}

impl Outcome {
    /// Every outcome, in declaration order.
    pub const ALL: &'static [Outcome] = &[
        Outcome::Advance,
        Outcome::Approve,
        Outcome::Reject,
        Outcome::WebhookSuccess,
        Outcome::WebhookFailure,
    ];

    /// The outcome's name, as the CLI and error messages spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Advance => "advance",
            Outcome::Approve => "approve",
            Outcome::Reject => "reject",
            Outcome::WebhookSuccess => "webhook_success",
            Outcome::WebhookFailure => "webhook_failure",
        }
    }

    /// The history cause of the hop this outcome makes.
    pub fn cause(self) -> HistoryCause {
        match self {
            Outcome::Advance => HistoryCause::Advance,
            Outcome::Approve => HistoryCause::Approve,
            Outcome::Reject => HistoryCause::Reject,
            Outcome::WebhookSuccess => HistoryCause::WebhookSuccess,
            Outcome::WebhookFailure => HistoryCause::WebhookFailure,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Outcome {
    type Err = ParseEnumError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Outcome::ALL
            .iter()
            .copied()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| ParseEnumError {
                what: "outcome",
                value: s.to_string(),
                expected: Outcome::ALL
                    .iter()
                    .map(|o| o.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// One move of an item: one row of its history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    /// The stage the item left; `None` for the import hop into the dataset stage.
    pub from: Option<StageId>,
    pub to: StageId,
    pub cause: HistoryCause,
}

/// Where an item ends up: every hop taken (one history row each), the final stage and state,
/// and whether entering that stage creates a delivery (final stage is a webhook stage).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// In order; empty when the item stays where it is (a webhook failure without `on_failure`).
    pub hops: Vec<Hop>,
    pub stage: StageId,
    pub state: ItemState,
    /// The item entered a webhook stage: write a delivery in the same transaction as the move.
    pub deliver: bool,
}

/// Why an item cannot be routed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// A stage id (the item's stage, a target or an edge) that the workflow does not have.
    #[error("stage `{0}` does not exist in this workflow")]
    UnknownStage(StageId),
    /// The outcome cannot happen in a stage of this kind (e.g. `approve` in an annotate stage).
    #[error("`{outcome}` is not possible in {kind} stage `{stage}`")]
    InvalidOutcome {
        stage: StageId,
        kind: StageKind,
        outcome: &'static str,
    },
    /// Automated stages kept routing the item past the hop limit: they form a loop.
    #[error(
        "routing went around in circles at stage `{0}`: the workflow has a loop of automated \
         stages (logic/sampling) with no way out"
    )]
    TooManyHops(StageId),
    /// The workflow has no dataset stage for imported items to land in.
    #[error("workflow `{0}` has no dataset stage for imported items to land in")]
    NoDatasetStage(WorkflowId),
    /// An automated stage with no edge to take (a sampling stage without any split).
    #[error("stage `{0}` has no edge to route the item along")]
    NoEdge(StageId),
}

/// A newly imported item lands in the dataset stage: it waits there (state Waiting) when the
/// dataset's `next` is automated (webhook/logic/sampling); otherwise it moves on at once (hop with
/// cause Import then the next stage; an annotate/review stage -> Active; complete/discard -> Done).
///
/// The first hop is `{from: None, to: dataset, cause: Import}`; the move on to `next` is a
/// second hop with cause `Route` (nobody decided it). `item.stage` is not read.
pub fn import(wf: &Workflow, item: &Item) -> Result<Route, RouteError> {
    let dataset = wf
        .dataset_stage()
        .ok_or_else(|| RouteError::NoDatasetStage(wf.id.clone()))?;
    let mut hops = vec![Hop {
        from: None,
        to: dataset.id.clone(),
        cause: HistoryCause::Import,
    }];
    let StageSpec::Dataset { next } = &dataset.spec else {
        // dataset_stage() only returns dataset stages.
        return Err(RouteError::NoDatasetStage(wf.id.clone()));
    };
    let next_stage = wf
        .stage(next)
        .ok_or_else(|| RouteError::UnknownStage(next.clone()))?;
    if next_stage.kind().is_automated() {
        // V7: "assign files to the stage manually to kick off the workflow".
        return Ok(Route {
            hops,
            stage: dataset.id.clone(),
            state: ItemState::Waiting,
            deliver: false,
        });
    }
    hops.push(Hop {
        from: Some(dataset.id.clone()),
        to: next.clone(),
        cause: HistoryCause::Route,
    });
    resolve(wf, item, hops)
}

/// An operator (or re-fire) puts the item into `to`: first hop {from: item's current stage, to,
/// cause}; then automated stages resolve in the same step.
pub fn enter(
    wf: &Workflow,
    item: &Item,
    to: &StageId,
    cause: HistoryCause,
) -> Result<Route, RouteError> {
    let hops = vec![Hop {
        from: Some(item.stage.clone()),
        to: to.clone(),
        cause,
    }];
    resolve(wf, item, hops)
}

/// An outcome happens in the item's current stage (`item.stage`): Advance from dataset/annotate
/// along `next`; Approve/Reject in review; WebhookSuccess/WebhookFailure in a webhook stage
/// (failure without `on_failure` -> no hops, same stage, state Failed, deliver false). Anything
/// else -> InvalidOutcome.
pub fn outcome(wf: &Workflow, item: &Item, outcome: Outcome) -> Result<Route, RouteError> {
    let stage = wf
        .stage(&item.stage)
        .ok_or_else(|| RouteError::UnknownStage(item.stage.clone()))?;
    let target = match (&stage.spec, outcome) {
        (StageSpec::Dataset { next } | StageSpec::Annotate { next }, Outcome::Advance) => next,
        (StageSpec::Review { on_approve, .. }, Outcome::Approve) => on_approve,
        (StageSpec::Review { on_reject, .. }, Outcome::Reject) => on_reject,
        (StageSpec::Webhook(w), Outcome::WebhookSuccess) => &w.on_success,
        (StageSpec::Webhook(w), Outcome::WebhookFailure) => match &w.on_failure {
            Some(to) => to,
            None => {
                return Ok(Route {
                    hops: Vec::new(),
                    stage: stage.id.clone(),
                    state: ItemState::Failed,
                    deliver: false,
                });
            }
        },
        _ => {
            return Err(RouteError::InvalidOutcome {
                stage: stage.id.clone(),
                kind: stage.kind(),
                outcome: outcome.as_str(),
            });
        }
    };
    enter(wf, item, target, outcome.cause())
}

/// Sampling bucket in 0..10_000: first 8 bytes (big-endian u64) of
/// SHA-256("{workflow}/{stage}/{item id}") mod 10_000.
pub fn sampling_bucket(workflow: &WorkflowId, stage: &StageId, item: &ItemId) -> u32 {
    let digest = Sha256::digest(format!("{workflow}/{stage}/{item}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // The remainder is below 10_000, so it fits a u32.
    (u64::from_be_bytes(first) % 10_000) as u32
}

/// Follows `hops` (at least one) from the last hop's target until the item rests in a stage
/// that is not logic or sampling.
fn resolve(wf: &Workflow, item: &Item, mut hops: Vec<Hop>) -> Result<Route, RouteError> {
    // Without a cycle every hop after the first leaves a distinct automated stage, so a route
    // never needs more hops than the workflow has stages, plus the first.
    let limit = wf.stages.len() + 1;
    loop {
        let Some(last) = hops.last() else {
            return Err(RouteError::NoEdge(item.stage.clone()));
        };
        let here = wf
            .stage(&last.to)
            .ok_or_else(|| RouteError::UnknownStage(last.to.clone()))?;
        let (state, deliver) = match &here.spec {
            StageSpec::Dataset { .. } => (ItemState::Waiting, false),
            StageSpec::Annotate { .. } | StageSpec::Review { .. } => (ItemState::Active, false),
            StageSpec::Webhook(_) => (ItemState::InDelivery, true),
            StageSpec::Complete | StageSpec::Discard => (ItemState::Done, false),
            StageSpec::Logic { rules, else_to } => {
                let to = logic_target(item, rules, else_to).clone();
                hops = push_hop(hops, &here.id, to, limit)?;
                continue;
            }
            StageSpec::Sampling { split } => {
                let bucket = sampling_bucket(&wf.id, &here.id, &item.id);
                let to = sampling_target(bucket, split)
                    .ok_or_else(|| RouteError::NoEdge(here.id.clone()))?
                    .clone();
                hops = push_hop(hops, &here.id, to, limit)?;
                continue;
            }
        };
        return Ok(Route {
            stage: here.id.clone(),
            hops,
            state,
            deliver,
        });
    }
}

/// Appends an automated hop, refusing to go past `limit` hops.
fn push_hop(
    mut hops: Vec<Hop>,
    from: &StageId,
    to: StageId,
    limit: usize,
) -> Result<Vec<Hop>, RouteError> {
    if hops.len() >= limit {
        return Err(RouteError::TooManyHops(from.clone()));
    }
    hops.push(Hop {
        from: Some(from.clone()),
        to,
        cause: HistoryCause::Route,
    });
    Ok(hops)
}

/// The first rule that holds, else `else_to`.
fn logic_target<'a>(item: &Item, rules: &'a [Rule], else_to: &'a StageId) -> &'a StageId {
    rules
        .iter()
        .find(|r| condition_holds(item, &r.when))
        .map_or(else_to, |r| &r.to)
}

fn condition_holds(item: &Item, cond: &Condition) -> bool {
    match cond {
        Condition::Tag(tag) => item.rule_tags().contains(&tag.as_str()),
        Condition::Property { name, is_any_of } => item
            .properties
            .get(name)
            .is_some_and(|v| value_matches(v, is_any_of)),
    }
}

/// A property value matches when its string form is one of `wanted`: a string as it is, a
/// number or boolean by its JSON text, a list when any element matches. Null and objects never
/// match.
fn value_matches(value: &serde_json::Value, wanted: &[String]) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => wanted.iter().any(|w| w == s),
        Value::Number(n) => {
            let text = n.to_string();
            wanted.contains(&text)
        }
        Value::Bool(b) => {
            let text = if *b { "true" } else { "false" };
            wanted.iter().any(|w| w == text)
        }
        Value::Array(items) => items.iter().any(|v| value_matches(v, wanted)),
        Value::Null | Value::Object(_) => false,
    }
}

/// The branch whose cumulative range holds `bucket` (percent × 100 per branch). If the splits
/// sum to less than 100 (only possible on an unvalidated workflow) the last branch takes the
/// rest, so every item still goes somewhere; `None` only when there is no branch at all.
fn sampling_target(bucket: u32, split: &[Split]) -> Option<&StageId> {
    let mut upper: u64 = 0;
    for s in split {
        upper += u64::from(s.percent) * 100;
        if u64::from(bucket) < upper {
            return Some(&s.to);
        }
    }
    split.last().map(|s| &s.to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DatasetRef, PayloadFormat};
    use crate::workflow::{Stage, WebhookConfig};
    use serde_json::json;

    fn sid(s: &str) -> StageId {
        StageId::from(s)
    }

    fn st(id: &str, spec: StageSpec) -> Stage {
        Stage {
            id: sid(id),
            name: id.to_string(),
            spec,
        }
    }

    fn next(kind: &str, id: &str, to: &str) -> Stage {
        let next = sid(to);
        st(
            id,
            match kind {
                "dataset" => StageSpec::Dataset { next },
                _ => StageSpec::Annotate { next },
            },
        )
    }

    fn review(id: &str, approve: &str, reject: &str) -> Stage {
        st(
            id,
            StageSpec::Review {
                on_approve: sid(approve),
                on_reject: sid(reject),
            },
        )
    }

    fn webhook(id: &str, on_success: &str, on_failure: Option<&str>) -> Stage {
        st(
            id,
            StageSpec::Webhook(WebhookConfig {
                url: format!("http://127.0.0.1:9000/{id}"),
                authorization: None,
                headers: Vec::new(),
                secrets: Vec::new(),
                include_annotations: true,
                payload: PayloadFormat::Darwin,
                event_type: "stage.webhook".to_string(),
                max_attempts: WebhookConfig::DEFAULT_MAX_ATTEMPTS,
                timeout: WebhookConfig::DEFAULT_TIMEOUT,
                retry_schedule: WebhookConfig::default_retry_schedule(),
                pause_after_failures: WebhookConfig::DEFAULT_PAUSE_AFTER_FAILURES,
                max_in_flight: None,
                rate_limit: None,
                on_success: sid(on_success),
                on_failure: on_failure.map(sid),
            }),
        )
    }

    fn logic(id: &str, rules: Vec<(Condition, &str)>, else_to: &str) -> Stage {
        st(
            id,
            StageSpec::Logic {
                rules: rules
                    .into_iter()
                    .map(|(when, to)| Rule { when, to: sid(to) })
                    .collect(),
                else_to: sid(else_to),
            },
        )
    }

    fn sampling(id: &str, split: &[(&str, u32)]) -> Stage {
        st(
            id,
            StageSpec::Sampling {
                split: split
                    .iter()
                    .map(|(to, percent)| Split {
                        to: sid(to),
                        percent: *percent,
                    })
                    .collect(),
            },
        )
    }

    fn tag(t: &str) -> Condition {
        Condition::Tag(t.to_string())
    }

    fn prop(name: &str, any_of: &[&str]) -> Condition {
        Condition::Property {
            name: name.to_string(),
            is_any_of: any_of.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn wf(stages: Vec<Stage>) -> Workflow {
        Workflow {
            id: WorkflowId::from("defects"),
            name: "Defect labelling".to_string(),
            team: "acme".to_string(),
            workview_url_base: None,
            stages,
            notify: Vec::new(),
            secrets: Vec::new(),
        }
    }

    /// The demo's shape: dataset -> validate (webhook) -> triage (logic) -> annotate/review ->
    /// sample (sampling) -> qa-export / export -> complete, with a parking stage and a discard.
    pub(super) fn demo() -> Workflow {
        wf(vec![
            next("dataset", "dataset", "validate"),
            webhook("validate", "triage", Some("webhook-failed")),
            next("annotate", "webhook-failed", "validate"),
            logic(
                "triage",
                vec![
                    (prop("quality", &["blurry"]), "discard"),
                    (tag("urgent"), "review"),
                ],
                "annotate",
            ),
            next("annotate", "annotate", "review"),
            review("review", "sample", "annotate"),
            sampling("sample", &[("qa-export", 20), ("export", 80)]),
            webhook("qa-export", "complete", None),
            webhook("export", "notify", Some("annotate")),
            webhook("notify", "complete", Some("review")),
            st("complete", StageSpec::Complete),
            st("discard", StageSpec::Discard),
        ])
    }

    pub(super) fn item(id: &str, stage: &str) -> Item {
        let t = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
        Item {
            id: ItemId::from(id),
            workflow: WorkflowId::from("defects"),
            stage: sid(stage),
            state: ItemState::Active,
            name: format!("{id}.jpg"),
            path: "/".to_string(),
            dataset: DatasetRef {
                name: "Welds".to_string(),
                slug: "welds".to_string(),
            },
            tags: Vec::new(),
            properties: serde_json::Map::new(),
            slots: Vec::new(),
            annotations: Vec::new(),
            version: 1,
            created_at: t,
            updated_at: t,
        }
    }

    fn hop(from: Option<&str>, to: &str, cause: HistoryCause) -> Hop {
        Hop {
            from: from.map(sid),
            to: sid(to),
            cause,
        }
    }

    fn hops(route: &Route) -> Vec<(Option<&str>, &str, HistoryCause)> {
        route
            .hops
            .iter()
            .map(|h| (h.from.as_ref().map(|f| f.as_str()), h.to.as_str(), h.cause))
            .collect()
    }

    #[test]
    fn review_approve_and_reject_follow_their_edges() {
        let w = wf(vec![
            next("dataset", "dataset", "annotate"),
            next("annotate", "annotate", "review"),
            review("review", "complete", "annotate"),
            st("complete", StageSpec::Complete),
        ]);
        let it = item("i1", "review");
        let r = outcome(&w, &it, Outcome::Approve).unwrap();
        assert_eq!(
            r,
            Route {
                hops: vec![hop(Some("review"), "complete", HistoryCause::Approve)],
                stage: sid("complete"),
                state: ItemState::Done,
                deliver: false,
            }
        );
        let r = outcome(&w, &it, Outcome::Reject).unwrap();
        assert_eq!(
            r.hops,
            vec![hop(Some("review"), "annotate", HistoryCause::Reject)]
        );
        assert_eq!((r.stage.as_str(), r.state), ("annotate", ItemState::Active));
        assert!(!r.deliver);
    }

    #[test]
    fn advance_moves_annotate_along_next() {
        let w = demo();
        let r = outcome(&w, &item("i1", "annotate"), Outcome::Advance).unwrap();
        assert_eq!(
            hops(&r),
            vec![(Some("annotate"), "review", HistoryCause::Advance)]
        );
        assert_eq!(r.state, ItemState::Active);
    }

    #[test]
    fn webhook_success_follows_on_success_and_resolves_logic() {
        let w = demo();
        let r = outcome(&w, &item("i1", "validate"), Outcome::WebhookSuccess).unwrap();
        assert_eq!(
            hops(&r),
            vec![
                (Some("validate"), "triage", HistoryCause::WebhookSuccess),
                (Some("triage"), "annotate", HistoryCause::Route),
            ]
        );
        assert_eq!((r.stage.as_str(), r.state), ("annotate", ItemState::Active));
    }

    #[test]
    fn webhook_failure_to_a_parking_stage() {
        let w = demo();
        let r = outcome(&w, &item("i1", "validate"), Outcome::WebhookFailure).unwrap();
        assert_eq!(
            hops(&r),
            vec![(
                Some("validate"),
                "webhook-failed",
                HistoryCause::WebhookFailure
            )]
        );
        assert_eq!(r.state, ItemState::Active);
        assert!(!r.deliver);
        // The parking stage's `next` leads back to the webhook: advancing re-delivers.
        let r = outcome(&w, &item("i1", "webhook-failed"), Outcome::Advance).unwrap();
        assert_eq!(
            (r.stage.as_str(), r.state, r.deliver),
            ("validate", ItemState::InDelivery, true)
        );
    }

    #[test]
    fn webhook_failure_forward_into_another_webhook_delivers_again() {
        let w = wf(vec![
            next("dataset", "dataset", "a"),
            webhook("a", "complete", Some("b")),
            webhook("b", "complete", None),
            st("complete", StageSpec::Complete),
        ]);
        let r = outcome(&w, &item("i1", "a"), Outcome::WebhookFailure).unwrap();
        assert_eq!(
            r,
            Route {
                hops: vec![hop(Some("a"), "b", HistoryCause::WebhookFailure)],
                stage: sid("b"),
                state: ItemState::InDelivery,
                deliver: true,
            }
        );
    }

    #[test]
    fn webhook_failure_backward_to_an_earlier_stage() {
        let w = demo();
        let r = outcome(&w, &item("i1", "notify"), Outcome::WebhookFailure).unwrap();
        assert_eq!(
            hops(&r),
            vec![(Some("notify"), "review", HistoryCause::WebhookFailure)]
        );
        assert_eq!(r.state, ItemState::Active);
    }

    #[test]
    fn webhook_failure_without_edge_stays_failed() {
        let w = demo();
        let r = outcome(&w, &item("i1", "qa-export"), Outcome::WebhookFailure).unwrap();
        assert_eq!(
            r,
            Route {
                hops: vec![],
                stage: sid("qa-export"),
                state: ItemState::Failed,
                deliver: false,
            }
        );
    }

    #[test]
    fn logic_matches_plain_tags_and_darwin_tag_annotations() {
        let w = demo();
        let mut it = item("i1", "validate");
        it.tags = vec!["night-shift".into(), "urgent".into()];
        let r = outcome(&w, &it, Outcome::WebhookSuccess).unwrap();
        assert_eq!(r.stage.as_str(), "review");
        assert_eq!(
            r.hops[1],
            hop(Some("triage"), "review", HistoryCause::Route)
        );

        // A Darwin tag annotation named `urgent` counts; a bounding box named `urgent` does not.
        let mut it = item("i2", "validate");
        it.annotations = vec![json!({
            "bounding_box": {"h": 10.0, "w": 10.0, "x": 1.0, "y": 1.0},
            "id": "5976dca9-ead0-4264-8ece-b6833c77dc4b",
            "name": "urgent",
            "properties": [],
            "slot_names": ["0"]
        })];
        let r = outcome(&w, &it, Outcome::WebhookSuccess).unwrap();
        assert_eq!(r.stage.as_str(), "annotate");
        it.annotations.push(json!({
            "id": "5fe86f0c-f337-4d0e-b146-c30a533cf354",
            "name": "urgent",
            "properties": [],
            "slot_names": ["0"],
            "tag": {}
        }));
        let r = outcome(&w, &it, Outcome::WebhookSuccess).unwrap();
        assert_eq!(r.stage.as_str(), "review");
    }

    #[test]
    fn logic_first_matching_rule_wins() {
        // Blurry and urgent: the blurry rule comes first, so it is discarded.
        let w = demo();
        let mut it = item("i1", "validate");
        it.tags = vec!["urgent".into()];
        it.properties.insert("quality".into(), json!("blurry"));
        let r = outcome(&w, &it, Outcome::WebhookSuccess).unwrap();
        assert_eq!((r.stage.as_str(), r.state), ("discard", ItemState::Done));
    }

    #[test]
    fn logic_matches_properties_as_strings() {
        let w = wf(vec![
            next("dataset", "dataset", "route"),
            logic(
                "route",
                vec![
                    (prop("camera", &["cam-2", "cam-3"]), "a"),
                    (prop("line", &["7", "2.5"]), "b"),
                    (prop("night", &["true"]), "c"),
                    (prop("defects", &["crack"]), "d"),
                ],
                "other",
            ),
            next("annotate", "a", "done"),
            next("annotate", "b", "done"),
            next("annotate", "c", "done"),
            next("annotate", "d", "done"),
            next("annotate", "other", "done"),
            st("done", StageSpec::Complete),
        ]);
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("camera", json!("cam-3"), "a"),
            ("camera", json!("cam-1"), "other"),
            ("camera", json!("CAM-3"), "other"),
            ("line", json!(7), "b"),
            ("line", json!(2.5), "b"),
            ("line", json!("7"), "b"),
            ("line", json!(8), "other"),
            ("night", json!(true), "c"),
            ("night", json!(false), "other"),
            ("defects", json!(["porosity", "crack"]), "d"),
            ("defects", json!(["porosity"]), "other"),
            ("defects", json!(null), "other"),
            ("defects", json!({"crack": true}), "other"),
            ("unrelated", json!("crack"), "other"),
        ];
        for (name, value, want) in cases {
            let mut it = item("i1", "dataset");
            it.properties.insert(name.into(), value.clone());
            let r = outcome(&w, &it, Outcome::Advance).unwrap();
            assert_eq!(r.stage.as_str(), want, "{name} = {value}");
            assert_eq!(
                hops(&r),
                vec![
                    (Some("dataset"), "route", HistoryCause::Advance),
                    (Some("route"), want, HistoryCause::Route),
                ]
            );
        }
    }

    #[test]
    fn sampling_bucket_is_the_documented_hash() {
        // Computed independently: int.from_bytes(sha256(b"...").digest()[:8], "big") % 10000.
        let b = |w: &str, s: &str, i: &str| {
            sampling_bucket(&WorkflowId::from(w), &sid(s), &ItemId::from(i))
        };
        assert_eq!(b("defects", "sample", "item-1"), 9600);
        assert_eq!(b("defects", "qa-sample", "weld_0042"), 2300);
        assert_eq!(b("w", "s", "a"), 5377);
    }

    #[test]
    fn sampling_is_deterministic_per_item() {
        let w = demo();
        for n in 0..200 {
            let it = item(&format!("weld_{n:04}"), "review");
            let first = outcome(&w, &it, Outcome::Approve).unwrap();
            let again = outcome(&w, &it, Outcome::Approve).unwrap();
            assert_eq!(first, again);
            assert!(first.deliver, "both branches are webhook stages");
            let bucket = sampling_bucket(&w.id, &sid("sample"), &it.id);
            let want = if bucket < 2000 { "qa-export" } else { "export" };
            assert_eq!(first.stage.as_str(), want);
            assert_eq!(first.hops[1].cause, HistoryCause::Route);
        }
    }

    #[test]
    fn sampling_five_ninety_five_lands_within_one_point() {
        let w = wf(vec![
            next("dataset", "dataset", "sample"),
            sampling("sample", &[("qa", 5), ("complete", 95)]),
            next("annotate", "qa", "complete"),
            st("complete", StageSpec::Complete),
        ]);
        let mut qa = 0;
        for n in 0..10_000 {
            let it = item(&format!("item-{n}"), "dataset");
            let r = outcome(&w, &it, Outcome::Advance).unwrap();
            match r.stage.as_str() {
                "qa" => qa += 1,
                "complete" => {}
                other => panic!("unexpected stage {other}"),
            }
        }
        assert!((400..=600).contains(&qa), "qa share {qa}/10000");
    }

    #[test]
    fn sampling_short_split_sends_the_rest_to_the_last_branch() {
        // Unvalidated: splits sum to 1 %, so nearly everything falls through to the last one.
        let w = wf(vec![
            next("dataset", "dataset", "sample"),
            sampling("sample", &[("a", 0), ("b", 1)]),
            st("a", StageSpec::Complete),
            st("b", StageSpec::Discard),
        ]);
        for n in 0..100 {
            let it = item(&format!("i{n}"), "dataset");
            let r = outcome(&w, &it, Outcome::Advance).unwrap();
            assert_eq!((r.stage.as_str(), r.state), ("b", ItemState::Done));
        }
        let empty = wf(vec![
            next("dataset", "dataset", "annotate"),
            next("annotate", "annotate", "sample"),
            sampling("sample", &[]),
        ]);
        assert_eq!(
            outcome(&empty, &item("i1", "annotate"), Outcome::Advance),
            Err(RouteError::NoEdge(sid("sample")))
        );
    }

    #[test]
    fn chained_automated_stages_resolve_in_one_call() {
        let w = wf(vec![
            next("dataset", "dataset", "annotate"),
            next("annotate", "annotate", "l1"),
            logic("l1", vec![(tag("x"), "s1")], "complete"),
            sampling("s1", &[("l2", 100)]),
            logic("l2", vec![(prop("camera", &["cam-1"]), "hook")], "complete"),
            webhook("hook", "complete", None),
            st("complete", StageSpec::Complete),
        ]);
        let mut it = item("i1", "annotate");
        it.tags = vec!["x".into()];
        it.properties.insert("camera".into(), json!("cam-1"));
        let r = outcome(&w, &it, Outcome::Advance).unwrap();
        assert_eq!(
            hops(&r),
            vec![
                (Some("annotate"), "l1", HistoryCause::Advance),
                (Some("l1"), "s1", HistoryCause::Route),
                (Some("s1"), "l2", HistoryCause::Route),
                (Some("l2"), "hook", HistoryCause::Route),
            ]
        );
        assert_eq!(
            (r.stage.as_str(), r.state, r.deliver),
            ("hook", ItemState::InDelivery, true)
        );
    }

    #[test]
    fn import_waits_when_dataset_next_is_automated() {
        let w = demo();
        let r = import(&w, &item("i1", "ignored")).unwrap();
        assert_eq!(
            r,
            Route {
                hops: vec![hop(None, "dataset", HistoryCause::Import)],
                stage: sid("dataset"),
                state: ItemState::Waiting,
                deliver: false,
            }
        );
        for auto in [
            logic("auto", vec![], "complete"),
            sampling("auto", &[("complete", 100)]),
        ] {
            let w = wf(vec![
                next("dataset", "dataset", "auto"),
                auto,
                st("complete", StageSpec::Complete),
            ]);
            let r = import(&w, &item("i1", "dataset")).unwrap();
            assert_eq!((r.stage.as_str(), r.state), ("dataset", ItemState::Waiting));
            assert_eq!(r.hops.len(), 1);
        }
    }

    #[test]
    fn import_moves_on_when_dataset_next_is_manual_or_terminal() {
        let cases = [
            (next("annotate", "n", "c"), ItemState::Active),
            (review("n", "c", "c"), ItemState::Active),
            (st("n", StageSpec::Complete), ItemState::Done),
            (st("n", StageSpec::Discard), ItemState::Done),
        ];
        for (stage, state) in cases {
            let w = wf(vec![
                next("dataset", "dataset", "n"),
                stage,
                st("c", StageSpec::Complete),
            ]);
            let r = import(&w, &item("i1", "dataset")).unwrap();
            assert_eq!(
                r,
                Route {
                    hops: vec![
                        hop(None, "dataset", HistoryCause::Import),
                        hop(Some("dataset"), "n", HistoryCause::Route),
                    ],
                    stage: sid("n"),
                    state,
                    deliver: false,
                }
            );
        }
    }

    #[test]
    fn import_needs_a_dataset_stage_with_a_real_next() {
        let w = wf(vec![st("complete", StageSpec::Complete)]);
        assert_eq!(
            import(&w, &item("i1", "x")),
            Err(RouteError::NoDatasetStage(WorkflowId::from("defects")))
        );
        let w = wf(vec![next("dataset", "dataset", "gone")]);
        assert_eq!(
            import(&w, &item("i1", "x")),
            Err(RouteError::UnknownStage(sid("gone")))
        );
    }

    #[test]
    fn assigning_from_the_dataset_kicks_off_the_webhook() {
        let w = demo();
        let r = enter(
            &w,
            &item("i1", "dataset"),
            &sid("validate"),
            HistoryCause::Assign,
        )
        .unwrap();
        assert_eq!(
            r,
            Route {
                hops: vec![hop(Some("dataset"), "validate", HistoryCause::Assign)],
                stage: sid("validate"),
                state: ItemState::InDelivery,
                deliver: true,
            }
        );
        // Advancing out of the dataset stage does the same, with cause Advance.
        let r = outcome(&w, &item("i1", "dataset"), Outcome::Advance).unwrap();
        assert_eq!(r.hops[0].cause, HistoryCause::Advance);
        assert!(r.deliver);
    }

    #[test]
    fn entering_each_kind_sets_its_state() {
        let w = demo();
        let it = item("i1", "annotate");
        let cases = [
            ("dataset", ItemState::Waiting, false),
            ("annotate", ItemState::Active, false),
            ("review", ItemState::Active, false),
            ("export", ItemState::InDelivery, true),
            ("complete", ItemState::Done, false),
            ("discard", ItemState::Done, false),
        ];
        for (to, state, deliver) in cases {
            let r = enter(&w, &it, &sid(to), HistoryCause::Assign).unwrap();
            assert_eq!(
                (r.stage.as_str(), r.state, r.deliver, r.hops.len()),
                (to, state, deliver, 1)
            );
        }
        // Entering a logic stage by hand routes on at once.
        let r = enter(&w, &it, &sid("triage"), HistoryCause::Assign).unwrap();
        assert_eq!(
            hops(&r),
            vec![
                (Some("annotate"), "triage", HistoryCause::Assign),
                (Some("triage"), "annotate", HistoryCause::Route),
            ]
        );
    }

    #[test]
    fn refire_reenters_the_same_webhook_stage() {
        let w = demo();
        let r = enter(
            &w,
            &item("i1", "export"),
            &sid("export"),
            HistoryCause::Refire,
        )
        .unwrap();
        assert_eq!(
            r.hops,
            vec![hop(Some("export"), "export", HistoryCause::Refire)]
        );
        assert!(r.deliver);
    }

    #[test]
    fn outcomes_that_do_not_fit_the_stage_are_refused() {
        let w = demo();
        let cases = [
            ("annotate", Outcome::Approve, StageKind::Annotate),
            ("annotate", Outcome::WebhookSuccess, StageKind::Annotate),
            ("dataset", Outcome::Reject, StageKind::Dataset),
            ("review", Outcome::Advance, StageKind::Review),
            ("review", Outcome::WebhookFailure, StageKind::Review),
            ("validate", Outcome::Advance, StageKind::Webhook),
            ("validate", Outcome::Approve, StageKind::Webhook),
            ("triage", Outcome::Advance, StageKind::Logic),
            ("sample", Outcome::WebhookSuccess, StageKind::Sampling),
            ("complete", Outcome::Advance, StageKind::Complete),
            ("discard", Outcome::Approve, StageKind::Discard),
        ];
        for (stage, o, kind) in cases {
            let err = outcome(&w, &item("i1", stage), o).unwrap_err();
            assert_eq!(
                err,
                RouteError::InvalidOutcome {
                    stage: sid(stage),
                    kind,
                    outcome: o.as_str(),
                }
            );
        }
        let msg = outcome(&w, &item("i1", "annotate"), Outcome::Approve)
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "`approve` is not possible in annotate stage `annotate`"
        );
    }

    #[test]
    fn unknown_stages_are_errors() {
        let w = demo();
        assert_eq!(
            outcome(&w, &item("i1", "retired"), Outcome::Advance),
            Err(RouteError::UnknownStage(sid("retired")))
        );
        assert_eq!(
            enter(
                &w,
                &item("i1", "annotate"),
                &sid("nope"),
                HistoryCause::Assign
            ),
            Err(RouteError::UnknownStage(sid("nope")))
        );
        let dangling = wf(vec![
            next("dataset", "dataset", "annotate"),
            next("annotate", "annotate", "l"),
            logic("l", vec![], "nowhere"),
        ]);
        assert_eq!(
            outcome(&dangling, &item("i1", "annotate"), Outcome::Advance),
            Err(RouteError::UnknownStage(sid("nowhere")))
        );
    }

    #[test]
    fn automated_loops_stop_at_the_hop_limit() {
        let w = wf(vec![
            next("dataset", "dataset", "annotate"),
            next("annotate", "annotate", "a"),
            logic("a", vec![(tag("never"), "complete")], "b"),
            sampling("b", &[("a", 100)]),
            st("complete", StageSpec::Complete),
        ]);
        let err = outcome(&w, &item("i1", "annotate"), Outcome::Advance).unwrap_err();
        assert!(matches!(err, RouteError::TooManyHops(_)), "{err:?}");
        assert!(err.to_string().contains("loop"), "{err}");
        // A logic stage pointing at itself.
        let w = wf(vec![
            next("dataset", "dataset", "annotate"),
            next("annotate", "annotate", "self"),
            logic("self", vec![], "self"),
        ]);
        assert_eq!(
            enter(
                &w,
                &item("i1", "annotate"),
                &sid("self"),
                HistoryCause::Assign
            ),
            Err(RouteError::TooManyHops(sid("self")))
        );
    }

    #[test]
    fn the_hop_limit_admits_the_longest_acyclic_chain() {
        // annotate -> l0 -> l1 -> ... -> l19 -> complete: 21 hops over 23 stages.
        let mut stages = vec![
            next("dataset", "dataset", "annotate"),
            next("annotate", "annotate", "l0"),
        ];
        for n in 0..20 {
            let to = if n == 19 {
                "complete".to_string()
            } else {
                format!("l{}", n + 1)
            };
            stages.push(logic(&format!("l{n}"), vec![], &to));
        }
        stages.push(st("complete", StageSpec::Complete));
        let w = wf(stages);
        let r = outcome(&w, &item("i1", "annotate"), Outcome::Advance).unwrap();
        assert_eq!(r.hops.len(), 21);
        assert_eq!(r.state, ItemState::Done);
    }

    #[test]
    fn outcome_names_round_trip() {
        for o in Outcome::ALL {
            assert_eq!(o.as_str().parse::<Outcome>().unwrap(), *o);
            assert_eq!(o.cause().as_str(), o.as_str());
        }
        let err = "approved".parse::<Outcome>().unwrap_err();
        assert!(err.to_string().contains("approve, reject"), "{err}");
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// Any graph, validated or not: routing terminates, never panics, and a successful
        /// route is consistent (hops chain, final state matches the final stage's kind).
        fn arb_workflow() -> impl Strategy<Value = Workflow> {
            (2usize..8)
                .prop_flat_map(|n| {
                    proptest::collection::vec((0u8..8, 0..n + 1, 0..n + 1, 0u32..101), n)
                })
                .prop_map(|specs| {
                    let n = specs.len();
                    // Index n is a dangling edge.
                    let name = |i: usize| {
                        if i < n {
                            format!("s{i}")
                        } else {
                            "gone".to_string()
                        }
                    };
                    let stages = specs
                        .iter()
                        .enumerate()
                        .map(|(i, &(kind, a, b, pct))| {
                            let id = name(i);
                            match kind {
                                0 => next("dataset", &id, &name(a)),
                                1 => next("annotate", &id, &name(a)),
                                2 => review(&id, &name(a), &name(b)),
                                3 => {
                                    webhook(&id, &name(a), (b % 2 == 0).then(|| name(b)).as_deref())
                                }
                                4 => logic(&id, vec![(tag("t"), &name(a))], &name(b)),
                                5 => sampling(&id, &[(&name(a), pct), (&name(b), 100 - pct)]),
                                6 => st(&id, StageSpec::Complete),
                                _ => st(&id, StageSpec::Discard),
                            }
                        })
                        .collect();
                    wf(stages)
                })
        }

        fn check(w: &Workflow, start: Option<&StageId>, r: &Result<Route, RouteError>) {
            let Ok(r) = r else { return };
            assert!(r.hops.len() <= w.stages.len() + 1);
            let mut at = start.cloned();
            for h in &r.hops {
                if at.is_some() || h.from.is_some() {
                    assert_eq!(h.from, at);
                }
                at = Some(h.to.clone());
            }
            if let Some(at) = at {
                assert_eq!(at, r.stage);
            }
            let kind = w.stage(&r.stage).map(|s| s.kind());
            let want = match kind {
                Some(StageKind::Dataset) => ItemState::Waiting,
                Some(StageKind::Annotate | StageKind::Review) => ItemState::Active,
                Some(StageKind::Webhook) if r.hops.is_empty() => ItemState::Failed,
                Some(StageKind::Webhook) => ItemState::InDelivery,
                Some(StageKind::Complete | StageKind::Discard) => ItemState::Done,
                other => panic!("route ended in {other:?}"),
            };
            assert_eq!(r.state, want);
            assert_eq!(r.deliver, want == ItemState::InDelivery);
        }

        proptest! {
            #[test]
            fn routing_always_terminates_consistently(
                w in arb_workflow(),
                from in 0usize..8,
                to in 0usize..8,
                o in 0usize..5,
                tagged: bool,
                item_n in 0u32..1000,
            ) {
                let n = w.stages.len();
                let mut it = item(&format!("item-{item_n}"), &format!("s{}", from % n));
                if tagged {
                    it.tags.push("t".into());
                }
                let r = import(&w, &it);
                check(&w, None, &r);
                let to = sid(&format!("s{}", to % n));
                let r = enter(&w, &it, &to, HistoryCause::Assign);
                check(&w, Some(&it.stage), &r);
                let r = outcome(&w, &it, Outcome::ALL[o]);
                check(&w, Some(&it.stage), &r);
            }
        }
    }
}

#[cfg(test)]
mod demo_tests;
