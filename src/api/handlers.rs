//! The handlers: parse and check the request, call the library function the CLI calls (on a
//! blocking thread), answer with the CLI's serde type.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::Operator;
use super::error::{ApiError, FieldError};
use super::jobs::Job;
use crate::actions::{self, ActionError, Actor, BulkAction, Control, FilterParams, Selection, Via};
use crate::dispatch::DispatchNotice;
use crate::engine::Outcome;
use crate::model::AttemptEvent;
use crate::model::{
    DeliveryId, ItemId, ItemState, StageId, WorkflowId, is_valid_item_id, is_valid_slug,
};
use crate::store::{
    AssignTarget, DeliveryCursor, DeliveryDetail, DeliveryFilter, DeliverySummary, Expect,
    FailureGroup, ItemCursor, ItemDetail, ItemFilter, ItemOrder, ItemRow, Landed, MoveReport,
    RefireReport, Refusal, WorkflowDetail, WorkflowSummary,
};

type S = State<Arc<AppState>>;

/// Rows a list returns unless `limit` says otherwise, and the most it may ask for.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

// ---- shapes ---------------------------------------------------------------------------------

/// One page of a list; pass `next_cursor` back as `cursor` for the next (absent at the end).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// `POST /v1/items/stage`, V7's "Set Stage" shape. `item_ids` moves those items; with
/// `from_stage_id` too, each is moved only if it is still in that stage (compare-and-set);
/// `from_stage_id` alone moves every item of that stage (or the first `limit`).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStageRequest {
    pub workflow_id: String,
    pub stage_id: String,
    #[serde(default)]
    pub item_ids: Option<Vec<String>>,
    #[serde(default)]
    pub from_stage_id: Option<String>,
    /// With `from_stage_id` alone: move at most this many (oldest first).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Count and list what would move (oldest first) and move nothing: the answer is
    /// `{matched, ids}`.
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST /v1/items/stage`'s answer: what moved, or with `dry_run` what would.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum SetStageAnswer {
    Moved(MoveReport),
    Planned(actions::items::AssignPlan),
}

/// `POST /v1/items/{id}/advance`: `outcome` decides a review (required there); elsewhere the
/// item moves along `next`. `expect_stage_id` / `expect_version` refuse an item that moved.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdvanceRequest {
    #[serde(default)]
    pub outcome: Option<AdvanceOutcome>,
    #[serde(default)]
    pub expect_stage_id: Option<String>,
    #[serde(default)]
    pub expect_version: Option<i64>,
}

#[derive(Clone, Copy, Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AdvanceOutcome {
    Approve,
    Reject,
}

/// What `POST /v1/items` did: the `item import --json` figures plus each created item and the
/// stage it landed in.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ImportResponse {
    pub imported: i64,
    pub already_present: i64,
    /// Ids already present whose content differs (never overwritten).
    pub differing: Vec<ItemId>,
    /// Invalid lines (always 0: a request with an invalid line imports nothing).
    pub invalid: i64,
    pub landed: BTreeMap<String, i64>,
    pub items: Vec<Landed>,
}

/// A stage's pause state after `pause` or `resume`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct StagePauseState {
    pub workflow: WorkflowId,
    pub stage: StageId,
    pub paused: bool,
    /// False when the stage already was in that state.
    pub changed: bool,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Health {
    pub ok: bool,
    pub version: String,
    pub read_only: bool,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// The workflow whose dataset stage the items land in.
    pub workflow: String,
    /// Dataset name for items whose line names none (default: the workflow id).
    #[serde(default)]
    pub dataset: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemsQuery {
    #[serde(default)]
    pub workflow: Option<String>,
    #[serde(default)]
    pub stage: Option<String>,
    #[serde(default)]
    pub state: Option<ItemState>,
    /// Substring of the name or id.
    #[serde(default)]
    pub search: Option<String>,
    /// `waiting` (default: oldest first in their stage) or `name`.
    #[serde(default)]
    pub order: Option<ListOrder>,
    #[serde(default)]
    pub cursor: Option<String>,
    /// 1–1000, default 100.
    #[serde(default)]
    pub limit: Option<usize>,
}

#[derive(Clone, Copy, Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ListOrder {
    Waiting,
    Name,
}

/// `GET /v1/deliveries` and `GET /v1/failures`: the one delivery filter (issue 18) and the
/// page. A list field (`status`, `error_kind`) takes commas or repeats (`status=500&status=503`).
/// The document's shape of the query: `filter_query` reads the same fields (the filter
/// through [`FilterParams`] itself), so the two cannot drift.
#[allow(dead_code)]
#[derive(Debug, schemars::JsonSchema)]
pub struct DeliveriesQuery {
    #[serde(flatten)]
    pub filter: FilterParams,
    #[serde(default)]
    pub cursor: Option<String>,
    /// 1–1000, default 100.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `GET /v1/attempts?follow=true`: the delivery filter, matched against each attempt as
/// `deliveries --follow` does.
#[allow(dead_code)]
#[derive(Debug, schemars::JsonSchema)]
pub struct AttemptsQuery {
    #[serde(flatten)]
    pub filter: FilterParams,
    /// Must be `true`: the answer is a stream of JSON Lines, one attempt a line, as each is
    /// recorded (from `since`, else from now), until the client disconnects.
    pub follow: bool,
}

/// `POST /v1/deliveries/refire`, `/replay` and `/cancel`: a filter (re-fire and replay take
/// the failed deliveries it selects, the latest of each item; cancel the open ones),
/// explicit ids, or an item (its latest stage delivery), at most `limit` of them (oldest
/// first). Give exactly one of `filter`, `ids` and `item`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    #[serde(default)]
    pub filter: Option<FilterParams>,
    #[serde(default)]
    pub ids: Option<Vec<String>>,
    #[serde(default)]
    pub item: Option<ItemLatestParams>,
    /// With `filter`: at most this many (at least 1).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Count and list what would be touched, and do nothing (the job comes back `planned`).
    #[serde(default)]
    pub dry_run: bool,
}

/// An item's latest `stage.webhook` delivery (in that workflow and stage when given): the
/// CLI's `--item ID [--workflow W --stage S]`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemLatestParams {
    pub id: String,
    #[serde(default)]
    pub workflow: Option<String>,
    /// Needs `workflow` (stage ids belong to a workflow).
    #[serde(default)]
    pub stage: Option<String>,
}

impl ItemLatestParams {
    /// The selection, or a 400 naming the field (`path` is where it sits in the body).
    fn selection(&self, path: &str) -> Result<Selection, ApiError> {
        if self.stage.is_some() && self.workflow.is_none() {
            return Err(ApiError::field(
                &format!("{path}stage"),
                "needs `workflow` (stage ids belong to a workflow)",
            ));
        }
        Ok(Selection::ItemLatest {
            item: ItemId::new(self.id.as_str()),
            workflow: self.workflow.as_deref().map(WorkflowId::new),
            stage: self.stage.as_deref().map(StageId::new),
        })
    }
}

/// `POST /v1/stages/{workflow}/{stage}/test` (optional body): `item` sends that item's
/// document as it is now instead of a sample.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    #[serde(default)]
    pub item: Option<String>,
}

/// `POST /v1/deliveries/test` (the id forms of the bulk endpoints, one delivery): a test of
/// the delivery's stage with its item's document as it is now.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestDeliveryRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub item: Option<ItemLatestParams>,
}

/// One failure group of `GET /v1/failures`, with the filter that selects it (send it back
/// as a bulk request's `filter`).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct FailureGroupView {
    #[serde(flatten)]
    pub group: FailureGroup,
    pub filter: FilterParams,
}

// ---- plumbing -------------------------------------------------------------------------------

/// Runs a blocking store call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("the request's worker stopped: {e}")))?
}

/// The request body, read up to the configured cap (413 beyond it).
pub struct RawBody(pub Bytes);

impl FromRequest<Arc<AppState>> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let limit = state.max_body;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::too_large(limit));
        }
        match axum::body::to_bytes(req.into_body(), limit).await {
            Ok(b) => Ok(RawBody(b)),
            Err(e) => {
                // axum wraps http-body's `LengthLimitError`; its wording is the stable part.
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text.push_str(&s.to_string());
                    source = s.source();
                }
                if text.contains("length limit") {
                    Err(ApiError::too_large(limit))
                } else {
                    Err(ApiError::bad_request(
                        format!("the request body could not be read: {e}"),
                        vec![],
                    ))
                }
            }
        }
    }
}

/// A JSON body, refused with 400 naming the field at fault.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every request body is an object of named fields. serde would also take a struct from a
    // JSON array, field by field in declaration order (`["wf", "review", ["i1"]]`): a body
    // whose meaning hangs on the order of our struct's fields is refused.
    if bytes.trim_ascii_start().starts_with(b"[") {
        return Err(ApiError::bad_input(
            "body",
            "the body must be a JSON object with named fields, not an array",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() || inner.is_syntax() || inner.is_eof() {
            ApiError::bad_input("body", format!("the body is not valid: {inner}"))
        } else {
            ApiError::field(&path, inner.to_string())
        }
    })
}

fn query<T: DeserializeOwned>(uri: &Uri) -> Result<T, ApiError> {
    Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::bad_input("query", format!("bad query string: {}", e.body_text())))
}

/// A query string's pairs: `cursor` and `limit` apart, the rest read as the delivery filter
/// (repeated keys joined with commas; an unknown key is refused, naming it).
fn filter_query(uri: &Uri) -> Result<(FilterParams, Option<String>, Option<usize>), ApiError> {
    let (params, cursor, limit, follow) = filter_query_all(uri)?;
    if follow.is_some() {
        return Err(ApiError::field("follow", "only `GET /v1/attempts` follows"));
    }
    Ok((params, cursor, limit))
}

type FilterQuery = (FilterParams, Option<String>, Option<usize>, Option<bool>);

fn filter_query_all(uri: &Uri) -> Result<FilterQuery, ApiError> {
    let pairs: Vec<(String, String)> = query(uri)?;
    let (mut cursor, mut limit, mut follow) = (None, None, None);
    let mut map = serde_json::Map::new();
    for (k, v) in pairs {
        match k.as_str() {
            "follow" => {
                follow = Some(v.parse::<bool>().map_err(|_| {
                    ApiError::field("follow", format!("`{}` is not true or false", clip(&v)))
                })?)
            }
            "cursor" => cursor = Some(v),
            "limit" => {
                limit = Some(v.parse::<usize>().map_err(|_| {
                    ApiError::field("limit", format!("`{}` is not a number", clip(&v)))
                })?)
            }
            _ => {
                let joined = match map.remove(&k) {
                    Some(serde_json::Value::String(old)) => format!("{old},{v}"),
                    _ => v,
                };
                map.insert(k, serde_json::Value::String(joined));
            }
        }
    }
    let params: FilterParams = serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| ApiError::bad_input("query", format!("bad query string: {e}")))?;
    Ok((params, cursor, limit, follow))
}

/// The typed filter of `params`, a bad value refused naming its field (`query` or a body's
/// `filter.status`).
fn typed_filter(params: &FilterParams, prefix: &str) -> Result<DeliveryFilter, ApiError> {
    params
        .to_filter(chrono::Utc::now())
        .map_err(|e| ApiError::field(&format!("{prefix}{}", e.field), e.message))
}

/// An action refused as a whole: bad input 400, the store's refusals by their kind.
fn action_error(e: ActionError) -> ApiError {
    match e {
        ActionError::BadInput(m) => ApiError::bad_input("body", m),
        ActionError::Store(e) => e.into(),
    }
}

fn actor(op: &Operator) -> Actor {
    Actor::new(
        op.0.clone(),
        Via::Api {
            token: op.0.clone(),
        },
    )
}

fn limit_of(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::field(
            "limit",
            format!("must be 1 to {MAX_PAGE}, not {n}"),
        )),
    }
}

fn slug(path: &str, s: &str) -> Result<(), ApiError> {
    if is_valid_slug(s) {
        Ok(())
    } else {
        Err(ApiError::field(
            path,
            format!(
                "`{}` is not an id (lowercase letters, digits, `-`, `_`)",
                clip(s)
            ),
        ))
    }
}

fn clip(s: &str) -> String {
    crate::sanitize::strip_controls(&s.chars().take(80).collect::<String>())
}

/// Cursors are opaque: base64url of a tag and the store's keyset position.
fn encode_cursor(raw: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(s: &str, tag: char) -> Result<String, ApiError> {
    let bad = || ApiError::field("cursor", "is not a cursor this list returned");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let rest = text.strip_prefix(tag).and_then(|r| r.strip_prefix(':'));
    rest.map(str::to_string).ok_or_else(bad)
}

/// Publishes an attempt made by the API (replay, test) like the dispatcher's own.
/// (`serve` feeds the metrics from that channel; without one they are counted here.)
fn published(state: &AppState, e: &AttemptEvent) {
    match &state.events {
        Some(tx) => {
            let _ = tx.send(DispatchNotice::Attempt(Box::new(e.clone())));
        }
        None => state.metrics.observe(e),
    }
}

/// The answer to an action the store refused for some items: the first refusal's kind
/// decides the status; `details` lists every item.
fn refusal_error(refused: &[Refusal]) -> ApiError {
    let first = &refused[0];
    let mut e = ApiError::refusal(first.kind, first.reason.clone());
    e.body.error.details = refused
        .iter()
        .map(|r| FieldError {
            path: r.item_id.to_string(),
            message: r.reason.clone(),
        })
        .collect();
    e
}

// ---- handlers -------------------------------------------------------------------------------

pub async fn healthz(State(state): S) -> Json<Health> {
    Json(Health {
        ok: true,
        version: env!("CARGO_PKG_VERSION").to_string(),
        read_only: state.store.is_read_only(),
    })
}

pub async fn metrics(State(state): S) -> Result<Response, ApiError> {
    let st = state.clone();
    let text = blocking(move || Ok(st.metrics.render(&st.store)?)).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

pub async fn openapi() -> Json<serde_json::Value> {
    Json(super::openapi::document())
}

pub async fn import(
    State(state): S,
    Extension(op): Extension<Operator>,
    uri: Uri,
    RawBody(body): RawBody,
) -> Result<Json<ImportResponse>, ApiError> {
    state.store.ensure_writable("import")?;
    let q: ImportQuery = query(&uri)?;
    slug("workflow", &q.workflow)?;
    let items = parse_items(&body)?;
    let store = state.store.clone();
    let actor = actor(&op);
    let report = blocking(move || {
        let dataset = q.dataset.map(|name| crate::model::DatasetRef {
            slug: crate::import::dataset_from_name(&name)
                .map(|d| d.slug)
                .unwrap_or_else(|| name.clone()),
            name,
        });
        actions::admin::import(&store, &actor, &WorkflowId::new(q.workflow), items, dataset)
            .map_err(|e| {
                if e.done == 0
                    && let crate::store::StoreError::Invalid(m) = &e.source
                {
                    return ApiError::bad_input("body", m.clone());
                }
                ApiError::from(e.source)
            })
    })
    .await?;
    Ok(Json(ImportResponse {
        imported: report.imported,
        already_present: report.already_present,
        differing: report.differing,
        invalid: 0,
        landed: report.landed,
        items: report.created,
    }))
}

/// One item, an array of items, or JSON Lines: the formats and checks of `item import`.
fn parse_items(body: &[u8]) -> Result<Vec<crate::model::NewItem>, ApiError> {
    let text = body.trim_ascii_start();
    if text.is_empty() {
        return Err(ApiError::bad_request(
            "the body is empty: send an item, an array of items, or JSON Lines",
            vec![],
        ));
    }
    let mut items = Vec::new();
    let mut errors = Vec::new();
    if text.starts_with(b"[") {
        let values: Vec<serde_json::Value> = serde_json::from_slice(text).map_err(|e| {
            ApiError::bad_request(
                format!("the body is not a JSON array of items: {e}"),
                vec![],
            )
        })?;
        for (i, v) in values.iter().enumerate() {
            let line = serde_json::to_vec(v).unwrap_or_default();
            match crate::import::parse_line(i + 1, &line) {
                Ok(item) => items.push(item),
                Err(e) => errors.push(FieldError {
                    path: format!("[{i}]"),
                    message: e.message,
                }),
            }
        }
    } else if text.starts_with(b"{")
        && serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok()
    {
        match crate::import::parse_line(1, text) {
            Ok(item) => items.push(item),
            Err(e) => errors.push(FieldError {
                path: "body".into(),
                message: e.message,
            }),
        }
    } else {
        let parsed = crate::import::parse_jsonl(text)
            .map_err(|e| ApiError::bad_input("body", format!("cannot read the body: {e}")))?;
        items = parsed.items;
        errors = parsed
            .errors
            .into_iter()
            .map(|e| FieldError {
                path: format!("line {}", e.line),
                message: e.message,
            })
            .collect();
    }
    if !errors.is_empty() {
        let n = errors.len();
        return Err(ApiError::bad_request(
            format!("{n} invalid item(s); nothing was imported"),
            errors,
        ));
    }
    if items.is_empty() {
        return Err(ApiError::bad_input("body", "the body holds no items"));
    }
    Ok(items)
}

pub async fn set_stage(
    State(state): S,
    Extension(op): Extension<Operator>,
    JsonBody(req): JsonBody<SetStageRequest>,
) -> Result<Json<SetStageAnswer>, ApiError> {
    if !req.dry_run {
        state.store.ensure_writable("assign")?;
    }
    slug("workflow_id", &req.workflow_id)?;
    slug("stage_id", &req.stage_id)?;
    if let Some(from) = &req.from_stage_id {
        slug("from_stage_id", from)?;
    }
    let target = match (&req.item_ids, &req.from_stage_id) {
        (Some(ids), _) if !ids.is_empty() => {
            for (i, id) in ids.iter().enumerate() {
                if !is_valid_item_id(id) {
                    return Err(ApiError::field(
                        &format!("item_ids[{i}]"),
                        format!("`{}` is not an item id", clip(id)),
                    ));
                }
            }
            if req.limit.is_some() {
                return Err(ApiError::field(
                    "limit",
                    "only applies to `from_stage_id` alone",
                ));
            }
            AssignTarget::Items(ids.iter().map(|i| ItemId::new(i.as_str())).collect())
        }
        (Some(_), _) => return Err(ApiError::field("item_ids", "is empty")),
        // `limit: 0` could be read as all or as none: refused, as the CLI's `--limit 0` is.
        (None, Some(_)) if req.limit == Some(0) => {
            return Err(ApiError::field(
                "limit",
                "must be at least 1 (leave it out to move every item of the stage)",
            ));
        }
        (None, Some(from)) => AssignTarget::FromStage {
            stage: StageId::new(from.as_str()),
            limit: req.limit,
        },
        (None, None) => {
            return Err(ApiError::bad_input(
                "item_ids",
                "give `item_ids`, or `from_stage_id` to move every item of a stage",
            ));
        }
    };
    // `item_ids` with `from_stage_id` is compare-and-set (design §6).
    let expect = match (&req.item_ids, &req.from_stage_id) {
        (Some(_), Some(from)) => Some(StageId::new(from.as_str())),
        _ => None,
    };
    let store = state.store.clone();
    let assign = actions::items::Assign {
        workflow: WorkflowId::new(req.workflow_id),
        to: StageId::new(req.stage_id),
        target,
        expect_stage: expect,
    };
    if req.dry_run {
        let plan =
            blocking(move || actions::items::assign_plan(&store, &assign).map_err(action_error))
                .await?;
        return Ok(Json(SetStageAnswer::Planned(plan)));
    }
    let report =
        blocking(move || actions::items::assign(&store, &actor(&op), assign).map_err(action_error))
            .await?;
    if report.moved == 0 && !report.refused.is_empty() {
        return Err(refusal_error(&report.refused));
    }
    Ok(Json(SetStageAnswer::Moved(report)))
}

pub async fn advance(
    State(state): S,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Json<MoveReport>, ApiError> {
    state.store.ensure_writable("advance")?;
    let req: AdvanceRequest = if body.trim_ascii().is_empty() {
        AdvanceRequest::default()
    } else {
        parse_json(&body)?
    };
    if !is_valid_item_id(&id) {
        return Err(ApiError::not_found(format!(
            "no item with id `{}`",
            clip(&id)
        )));
    }
    if let Some(s) = &req.expect_stage_id {
        slug("expect_stage_id", s)?;
    }
    let outcome = req.outcome.map(|o| match o {
        AdvanceOutcome::Approve => Outcome::Approve,
        AdvanceOutcome::Reject => Outcome::Reject,
    });
    let expect = Expect {
        stage: req.expect_stage_id.map(StageId::new),
        version: req.expect_version,
    };
    let store = state.store.clone();
    let what = actions::items::AdvanceWhat::Ids(vec![ItemId::new(id)], expect);
    let report = blocking(move || {
        actions::items::advance(&store, &actor(&op), what, outcome).map_err(action_error)
    })
    .await?;
    if !report.refused.is_empty() {
        return Err(refusal_error(&report.refused));
    }
    Ok(Json(report))
}

pub async fn list_workflows(State(state): S) -> Result<Json<Page<WorkflowSummary>>, ApiError> {
    let store = state.store.clone();
    let items = blocking(move || Ok(store.list_workflows()?)).await?;
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}

pub async fn show_workflow(
    State(state): S,
    Path(id): Path<String>,
) -> Result<Json<WorkflowDetail>, ApiError> {
    let store = state.store.clone();
    let d = blocking(move || Ok(store.workflow_detail(&WorkflowId::new(id))?)).await?;
    Ok(Json(d))
}

pub async fn list_items(State(state): S, uri: Uri) -> Result<Json<Page<ItemRow>>, ApiError> {
    let q: ItemsQuery = query(&uri)?;
    let limit = limit_of(q.limit)?;
    let order = match q.order {
        Some(ListOrder::Name) => ItemOrder::Name,
        _ => ItemOrder::Waiting,
    };
    // A cursor belongs to one order: the tag says which.
    let tag = if order == ItemOrder::Name { 'n' } else { 'w' };
    let after = match &q.cursor {
        Some(c) => Some(
            ItemCursor::decode(&decode_cursor(c, tag)?)
                .ok_or_else(|| ApiError::field("cursor", "is not a cursor this list returned"))?,
        ),
        None => None,
    };
    let filter = ItemFilter {
        workflow: q.workflow.map(WorkflowId::new),
        stage: q.stage.map(StageId::new),
        state: q.state,
        search: q.search,
        order,
    };
    let store = state.store.clone();
    let mut rows =
        blocking(move || Ok(store.list_items(&filter, after.as_ref(), limit + 1)?)).await?;
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last()
            .map(|r| encode_cursor(&format!("{tag}:{}", r.cursor.encode())))
    } else {
        None
    };
    Ok(Json(Page {
        items: rows,
        next_cursor,
    }))
}

pub async fn show_item(
    State(state): S,
    Path(id): Path<String>,
) -> Result<Json<ItemDetail>, ApiError> {
    let store = state.store.clone();
    let d = blocking(move || Ok(store.item_detail(&ItemId::new(id))?)).await?;
    Ok(Json(d))
}

/// `GET /v1/items/stage`: the item whose id is `stage`. The path is also Set Stage's (`POST`),
/// and axum matches the fixed path first, so without this the item could not be read.
pub async fn show_item_named_stage(state: S) -> Result<Json<ItemDetail>, ApiError> {
    show_item(state, Path("stage".to_string())).await
}

pub async fn list_deliveries(
    State(state): S,
    uri: Uri,
) -> Result<Json<Page<DeliverySummary>>, ApiError> {
    let (params, cursor, limit) = filter_query(&uri)?;
    let limit = limit_of(limit)?;
    let after = match &cursor {
        Some(c) => Some(
            DeliveryCursor::decode(&decode_cursor(c, 'd')?)
                .ok_or_else(|| ApiError::field("cursor", "is not a cursor this list returned"))?,
        ),
        None => None,
    };
    let filter = typed_filter(&params, "")?;
    let store = state.store.clone();
    let mut rows = blocking(move || Ok(store.list_deliveries(&filter, after, limit + 1)?)).await?;
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last()
            .map(|(_, cursor)| encode_cursor(&format!("d:{}", cursor.encode())))
    } else {
        None
    };
    Ok(Json(Page {
        items: rows.into_iter().map(|(d, _)| d).collect(),
        next_cursor,
    }))
}

/// `GET /v1/failures`: the failed deliveries the filter selects, grouped by cause.
pub async fn failures(State(state): S, uri: Uri) -> Result<Json<Page<FailureGroupView>>, ApiError> {
    let (params, cursor, limit) = filter_query(&uri)?;
    if cursor.is_some() {
        return Err(ApiError::field("cursor", "failure groups come in one page"));
    }
    let limit = limit_of(limit)?;
    let filter = typed_filter(&params, "")?;
    let store = state.store.clone();
    let base = filter.clone();
    let mut groups = blocking(move || Ok(store.failure_groups(&filter)?)).await?;
    groups.truncate(limit);
    Ok(Json(Page {
        items: groups
            .into_iter()
            .map(|g| FailureGroupView {
                filter: FilterParams::of(&g.filter(&base)),
                group: g,
            })
            .collect(),
        next_cursor: None,
    }))
}

/// The bulk endpoints: count what the request selects, then answer with a job (or, for a
/// dry run, with what it would touch).
async fn bulk(
    state: Arc<AppState>,
    op: Operator,
    action: BulkAction,
    req: BulkRequest,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    if !req.dry_run {
        state.store.ensure_writable(action.as_str())?;
    }
    let given = [req.filter.is_some(), req.ids.is_some(), req.item.is_some()];
    let selection = match (&req.filter, &req.ids, &req.item) {
        _ if given.iter().filter(|g| **g).count() > 1 => {
            return Err(ApiError::bad_input(
                "body",
                "give one of `filter`, `ids` and `item`",
            ));
        }
        (None, None, None) => {
            return Err(ApiError::bad_input(
                "body",
                "give `filter` (an empty object selects every delivery the action takes), `ids` or `item`",
            ));
        }
        (Some(f), _, _) => {
            if req.limit == Some(0) {
                return Err(ApiError::field(
                    "limit",
                    "must be at least 1 (leave it out to act on every match)",
                ));
            }
            Selection::Filter {
                filter: typed_filter(f, "filter.")?,
                limit: req.limit,
            }
        }
        (None, Some(ids), _) => {
            if req.limit.is_some() {
                return Err(ApiError::field("limit", "only applies to `filter`"));
            }
            if ids.is_empty() {
                return Err(ApiError::field("ids", "is empty"));
            }
            Selection::Ids(ids.iter().map(|i| DeliveryId::new(i.as_str())).collect())
        }
        (None, None, Some(item)) => {
            if req.limit.is_some() {
                return Err(ApiError::field("limit", "only applies to `filter`"));
            }
            item.selection("item.")?
        }
    };
    let store = state.store.clone();
    let plan =
        blocking(move || actions::plan(&store, action, selection).map_err(action_error)).await?;
    if req.dry_run {
        return Ok((StatusCode::OK, Json(Job::planned(plan, &op.0))));
    }
    let st = state.clone();
    let job = state.jobs.start(
        state.store.clone(),
        actor(&op),
        plan,
        state.max_send_body,
        move |e| published(&st, e),
    );
    Ok((StatusCode::ACCEPTED, Json(job)))
}

pub async fn bulk_refire(
    State(state): S,
    Extension(op): Extension<Operator>,
    JsonBody(req): JsonBody<BulkRequest>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    bulk(state, op, BulkAction::Refire, req).await
}

pub async fn bulk_replay(
    State(state): S,
    Extension(op): Extension<Operator>,
    JsonBody(req): JsonBody<BulkRequest>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    bulk(state, op, BulkAction::Replay, req).await
}

pub async fn bulk_cancel(
    State(state): S,
    Extension(op): Extension<Operator>,
    JsonBody(req): JsonBody<BulkRequest>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    bulk(state, op, BulkAction::Cancel, req).await
}

/// `GET /v1/attempts?follow=true`: every new attempt of a matching delivery as a line of
/// JSON, as it is recorded, in the attempt log's order (the cursor rules of the console's
/// log pane and `deliveries --follow`: none skipped, none repeated), until the client goes.
pub async fn follow_attempts(State(state): S, uri: Uri) -> Result<Response, ApiError> {
    let (params, cursor, limit, follow) = filter_query_all(&uri)?;
    if follow != Some(true) {
        return Err(ApiError::field(
            "follow",
            "must be true: this endpoint streams new attempts (a delivery's attempts are in GET /v1/deliveries/{id})",
        ));
    }
    if cursor.is_some() || limit.is_some() {
        return Err(ApiError::bad_input(
            "query",
            "a stream takes no cursor or limit",
        ));
    }
    let filter = typed_filter(&params, "")?;
    if let Some(e) = actions::filter::follow_refusal(&filter) {
        return Err(ApiError::field(e.field, e.message));
    }
    let store = state.store.clone();
    let since = filter.since;
    let (watcher, start) = blocking(move || {
        let w = store.change_watcher()?;
        Ok((w, store.follow_start(since)?))
    })
    .await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(stream_attempts(
        state.store.clone(),
        filter,
        watcher,
        start,
        tx,
    ));
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::new(Lines(rx)),
    )
        .into_response())
}

/// Reads the attempt log after `after` whenever the store changed, and sends each matching
/// attempt as a line until the client has gone (the channel closes).
async fn stream_attempts(
    store: crate::store::Store,
    filter: DeliveryFilter,
    mut watcher: crate::store::ChangeWatcher,
    mut after: crate::store::AttemptCursor,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) {
    let mut read = true;
    loop {
        if read {
            let s = store.clone();
            let Ok(Ok(rows)) =
                tokio::task::spawn_blocking(move || s.attempts_after(after, 5000)).await
            else {
                return;
            };
            let full = rows.len() == 5000;
            for (cursor, e) in rows {
                after = after.max(cursor);
                if !actions::filter::matches_attempt(&filter, &e) {
                    continue;
                }
                let mut line = serde_json::to_vec(&e).unwrap_or_default();
                line.push(b'\n');
                if tx.send(Bytes::from(line)).await.is_err() {
                    return;
                }
            }
            if full {
                continue;
            }
        }
        // The change feed says when to read again (as the console's log pane polls it).
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        if tx.is_closed() {
            return;
        }
        let Ok((w, changed)) = tokio::task::spawn_blocking(move || {
            let changed = watcher.changed().unwrap_or(true);
            (watcher, changed)
        })
        .await
        else {
            return;
        };
        watcher = w;
        read = changed;
    }
}

/// A body of lines from a channel: ends when the sender does.
struct Lines(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for Lines {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|line| line.map(|b| Ok(http_body::Frame::data(b))))
    }
}

pub async fn show_job(State(state): S, Path(id): Path<String>) -> Result<Json<Job>, ApiError> {
    state
        .jobs
        .get(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no job with id `{}`", clip(&id))))
}

/// Stops a job after the chunk under way; what was done stays done.
pub async fn stop_job(State(state): S, Path(id): Path<String>) -> Result<Json<Job>, ApiError> {
    state
        .jobs
        .stop(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no job with id `{}`", clip(&id))))
}

pub async fn show_delivery(
    State(state): S,
    Path(id): Path<String>,
) -> Result<Json<DeliveryDetail>, ApiError> {
    let store = state.store.clone();
    let d = blocking(move || Ok(store.delivery_detail(&DeliveryId::new(id))?)).await?;
    Ok(Json(d))
}

/// One delivery through the actions layer, waited for (the single-id endpoints).
async fn one(
    state: &Arc<AppState>,
    op: &Operator,
    action: BulkAction,
    id: String,
) -> Result<actions::BulkReport, ApiError> {
    state.store.ensure_writable(action.as_str())?;
    let (store, actor, max) = (state.store.clone(), actor(op), state.max_send_body);
    let rt = tokio::runtime::Handle::current();
    let r = blocking(move || {
        let plan = actions::plan(&store, action, Selection::Ids(vec![DeliveryId::new(id)]))
            .map_err(action_error)?;
        actions::execute(
            &store,
            &actor,
            plan,
            Control {
                stop: None,
                progress: &mut |_, _| {},
                rt: Some(&rt),
                max_send_body: max,
            },
        )
        .map_err(action_error)
    })
    .await?;
    if let Some(e) = &r.error {
        return Err(ApiError::internal(e.clone()));
    }
    if let Some(x) = r.refused.first() {
        return Err(ApiError::refusal(x.kind, x.reason.clone()));
    }
    Ok(r)
}

pub async fn refire(
    State(state): S,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<RefireReport>, ApiError> {
    let r = one(&state, &op, BulkAction::Refire, id).await?;
    Ok(Json(RefireReport {
        refired: r.acted as i64,
        created: r.created,
        refused: r.refused,
    }))
}

pub async fn replay(
    State(state): S,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<AttemptEvent>, ApiError> {
    let r = one(&state, &op, BulkAction::Replay, id).await?;
    let e = r
        .attempts
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::internal("the replay sent nothing"))?;
    published(&state, &e);
    Ok(Json(e))
}

pub async fn test_stage(
    State(state): S,
    Extension(op): Extension<Operator>,
    Path((workflow, stage)): Path<(String, String)>,
    RawBody(body): RawBody,
) -> Result<Json<AttemptEvent>, ApiError> {
    let req: TestRequest = if body.trim_ascii().is_empty() {
        TestRequest::default()
    } else {
        parse_json(&body)?
    };
    test(
        state,
        op,
        actions::TestOf::Stage {
            workflow: WorkflowId::new(workflow),
            stage: StageId::new(stage),
            item: req.item.map(ItemId::new),
        },
    )
    .await
}

/// `POST /v1/deliveries/test`: a test of one delivery's stage (by `id`, or an `item`'s
/// latest) with its item's document.
pub async fn test_delivery(
    State(state): S,
    Extension(op): Extension<Operator>,
    JsonBody(req): JsonBody<TestDeliveryRequest>,
) -> Result<Json<AttemptEvent>, ApiError> {
    let selection = match (req.id, req.item) {
        (Some(id), None) => Selection::Ids(vec![DeliveryId::new(id)]),
        (None, Some(item)) => item.selection("item.")?,
        _ => return Err(ApiError::bad_input("body", "give one of `id` and `item`")),
    };
    test(state, op, actions::TestOf::Delivery(selection)).await
}

/// Sends a test through the actions layer and publishes its attempt.
async fn test(
    state: Arc<AppState>,
    op: Operator,
    of: actions::TestOf,
) -> Result<Json<AttemptEvent>, ApiError> {
    state.store.ensure_writable("test")?;
    let (store, actor, max) = (state.store.clone(), actor(&op), state.max_send_body);
    let rt = tokio::runtime::Handle::current();
    let r =
        blocking(move || actions::test_stage(&store, &actor, of, &rt, max).map_err(action_error))
            .await?;
    published(&state, &r.attempt);
    Ok(Json(r.attempt))
}

async fn set_paused(
    state: Arc<AppState>,
    op: Operator,
    workflow: String,
    stage: String,
    paused: bool,
) -> Result<Json<StagePauseState>, ApiError> {
    state
        .store
        .ensure_writable(if paused { "pause" } else { "resume" })?;
    let store = state.store.clone();
    let (wf, st) = (WorkflowId::new(workflow), StageId::new(stage));
    let (w, s) = (wf.clone(), st.clone());
    let changed = blocking(move || {
        actions::items::set_paused(&store, &actor(&op), &w, &s, paused).map_err(action_error)
    })
    .await?;
    Ok(Json(StagePauseState {
        workflow: wf,
        stage: st,
        paused,
        changed,
    }))
}

pub async fn pause(
    State(state): S,
    Extension(op): Extension<Operator>,
    Path((workflow, stage)): Path<(String, String)>,
) -> Result<Json<StagePauseState>, ApiError> {
    set_paused(state, op, workflow, stage, true).await
}

pub async fn resume(
    State(state): S,
    Extension(op): Extension<Operator>,
    Path((workflow, stage)): Path<(String, String)>,
) -> Result<Json<StagePauseState>, ApiError> {
    set_paused(state, op, workflow, stage, false).await
}

/// Unknown paths: a JSON 404 like every other error.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no API endpoint at `{}`", clip(uri.path())))
}
