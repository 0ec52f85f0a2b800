//! The one table of endpoints: it registers every route and is what the OpenAPI document is
//! generated from, so a route cannot exist undocumented or be documented with another shape.

use std::sync::Arc;

use axum::Router;
use axum::routing::{MethodRouter, delete, get, post};
use schemars::{JsonSchema, Schema, SchemaGenerator};

use super::AppState;
use super::auth;
use super::handlers::{self as h, *};
use super::jobs::Job;
use crate::model::AttemptEvent;
use crate::store::{
    DeliveryDetail, DeliverySummary, ItemDetail, ItemRow, MoveReport, RefireReport, WorkflowDetail,
    WorkflowSummary,
};

/// A schema of a type, for the generator.
pub(super) type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

pub(super) fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// What a successful call answers.
pub(super) enum Answer {
    Json(SchemaFn),
    /// 202 Accepted with this body (a job started); a dry run answers 200 with the same shape.
    Accepted(SchemaFn),
    Text(&'static str),
}

/// What a call sends.
pub(super) enum RequestBody {
    None,
    Json(SchemaFn),
    /// `POST /v1/items`: an item, an array of items, or JSON Lines.
    Items,
    /// A JSON body that may be left out.
    OptionalJson(SchemaFn),
}

/// One endpoint: its route and its description.
pub(super) struct Endpoint {
    pub method: &'static str,
    /// axum and OpenAPI write path parameters alike: `/v1/items/{id}`.
    pub path: &'static str,
    pub operation_id: &'static str,
    pub summary: &'static str,
    pub auth: bool,
    /// Whether it changes something (refused when read-only).
    pub mutates: bool,
    /// The query string's type: its fields become the query parameters.
    pub query: Option<SchemaFn>,
    pub body: RequestBody,
    pub answer: Answer,
    /// Error statuses beside 401 (for authenticated calls) and 500.
    pub errors: &'static [u16],
    pub route: fn() -> MethodRouter<Arc<AppState>>,
}

pub(super) const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "get",
        path: "/healthz",
        operation_id: "healthz",
        summary: "Liveness: answers without a token",
        auth: false,
        mutates: false,
        query: None,
        body: RequestBody::None,
        answer: Answer::Json(schema::<Health>),
        errors: &[],
        route: || get(h::healthz),
    },
    Endpoint {
        method: "get",
        path: "/metrics",
        operation_id: "metrics",
        summary: "Prometheus metrics: deliveries by stage and state, attempts, retry queue depth, latency histogram, paused stages",
        auth: true,
        mutates: false,
        query: None,
        body: RequestBody::None,
        answer: Answer::Text("text/plain; version=0.0.4"),
        errors: &[],
        route: || get(h::metrics),
    },
    Endpoint {
        method: "get",
        path: "/openapi.json",
        operation_id: "openapi",
        summary: "This document",
        auth: true,
        mutates: false,
        query: None,
        body: RequestBody::None,
        answer: Answer::Json(|_| Schema::from(true)),
        errors: &[],
        route: || get(h::openapi),
    },
    Endpoint {
        method: "post",
        path: "/v1/items",
        operation_id: "importItems",
        summary: "Import items into a workflow's dataset stage: one item, an array, or JSON Lines (the formats of `item import`)",
        auth: true,
        mutates: true,
        query: Some(schema::<ImportQuery>),
        body: RequestBody::Items,
        answer: Answer::Json(schema::<ImportResponse>),
        errors: &[400, 403, 404, 413, 422],
        route: || post(h::import),
    },
    Endpoint {
        method: "get",
        path: "/v1/items",
        operation_id: "listItems",
        summary: "List items, oldest first in their stage (or by name), cursor-paged",
        auth: true,
        mutates: false,
        query: Some(schema::<ItemsQuery>),
        body: RequestBody::None,
        answer: Answer::Json(schema::<Page<ItemRow>>),
        errors: &[400],
        route: || get(h::list_items),
    },
    Endpoint {
        method: "post",
        path: "/v1/items/stage",
        operation_id: "setStage",
        summary: "Set Stage: move items (by id, compare-and-set with from_stage_id, or every item of from_stage_id) to a stage",
        auth: true,
        mutates: true,
        query: None,
        body: RequestBody::Json(schema::<SetStageRequest>),
        answer: Answer::Json(schema::<SetStageAnswer>),
        errors: &[400, 403, 404, 409, 413, 422],
        route: || post(h::set_stage).get(h::show_item_named_stage),
    },
    Endpoint {
        method: "get",
        path: "/v1/items/{id}",
        operation_id: "showItem",
        summary: "An item with its history and deliveries",
        auth: true,
        mutates: false,
        query: None,
        body: RequestBody::None,
        answer: Answer::Json(schema::<ItemDetail>),
        errors: &[404],
        route: || get(h::show_item),
    },
    Endpoint {
        method: "post",
        path: "/v1/items/{id}/advance",
        operation_id: "advanceItem",
        summary: "Complete an item's annotate stage, or decide its review (outcome approve or reject)",
        auth: true,
        mutates: true,
        query: None,
        body: RequestBody::OptionalJson(schema::<AdvanceRequest>),
        answer: Answer::Json(schema::<MoveReport>),
        errors: &[400, 403, 404, 409, 413, 422],
        route: || post(h::advance),
    },
    Endpoint {
        method: "get",
        path: "/v1/workflows",
        operation_id: "listWorkflows",
        summary: "List workflows with item totals",
        auth: true,
        mutates: false,
        query: None,
        body: RequestBody::None,
        answer: Answer::Json(schema::<Page<WorkflowSummary>>),
        errors: &[],
        route: || get(h::list_workflows),
    },
    Endpoint {
        method: "get",
        path: "/v1/workflows/{id}",
        operation_id: "showWorkflow",
        summary: "A workflow with every live stage, its counts and pause state",
        auth: true,
        mutates: false,
        query: None,
        body: RequestBody::None,
        answer: Answer::Json(schema::<WorkflowDetail>),
        errors: &[404],
        route: || get(h::show_workflow),
    },
    Endpoint {
        method: "get",
        path: "/v1/deliveries",
        operation_id: "listDeliveries",
        summary: "List deliveries, newest first, cursor-paged",
        auth: true,
        mutates: false,
        query: Some(schema::<DeliveriesQuery>),
        body: RequestBody::None,
        answer: Answer::Json(schema::<Page<DeliverySummary>>),
        errors: &[400],
        route: || get(h::list_deliveries),
    },
    Endpoint {
        method: "get",
        path: "/v1/attempts",
        operation_id: "followAttempts",
        summary: "With follow=true: every new attempt of a matching delivery as JSON Lines, as it is recorded, until the client disconnects",
        auth: true,
        mutates: false,
        query: Some(schema::<AttemptsQuery>),
        body: RequestBody::None,
        answer: Answer::Text("application/x-ndjson"),
        errors: &[400],
        route: || get(h::follow_attempts),
    },
    Endpoint {
        method: "get",
        path: "/v1/failures",
        operation_id: "listFailures",
        summary: "Failed deliveries grouped by cause (workflow, stage, error kind, status), biggest first, each with the filter that selects it",
        auth: true,
        mutates: false,
        query: Some(schema::<DeliveriesQuery>),
        body: RequestBody::None,
        answer: Answer::Json(schema::<Page<FailureGroupView>>),
        errors: &[400],
        route: || get(h::failures),
    },
    Endpoint {
        method: "post",
        path: "/v1/deliveries/refire",
        operation_id: "refireDeliveries",
        summary: "Re-fire the failed deliveries a filter selects (the latest of each item), or the given ids, as a job",
        auth: true,
        mutates: true,
        query: None,
        body: RequestBody::Json(schema::<BulkRequest>),
        answer: Answer::Accepted(schema::<Job>),
        errors: &[400, 403, 404, 413],
        route: || post(h::bulk_refire),
    },
    Endpoint {
        method: "post",
        path: "/v1/deliveries/replay",
        operation_id: "replayDeliveries",
        summary: "Replay the failed deliveries a filter selects, or the given ids, as a job; moves nothing",
        auth: true,
        mutates: true,
        query: None,
        body: RequestBody::Json(schema::<BulkRequest>),
        answer: Answer::Accepted(schema::<Job>),
        errors: &[400, 403, 404, 413],
        route: || post(h::bulk_replay),
    },
    Endpoint {
        method: "post",
        path: "/v1/deliveries/cancel",
        operation_id: "cancelDeliveries",
        summary: "Cancel the open deliveries a filter selects, or the given ids, as a job; items route along on_failure",
        auth: true,
        mutates: true,
        query: None,
        body: RequestBody::Json(schema::<BulkRequest>),
        answer: Answer::Accepted(schema::<Job>),
        errors: &[400, 403, 404, 413],
        route: || post(h::bulk_cancel),
    },
    Endpoint {
        method: "get",
        path: "/v1/jobs/{id}",
        operation_id: "showJob",
        summary: "A bulk job's progress and, once it has ended, its counts and refusals",
        auth: true,
        mutates: false,
        query: None,
        body: RequestBody::None,
        answer: Answer::Json(schema::<Job>),
        errors: &[404],
        route: || get(h::show_job),
    },
    Endpoint {
        method: "delete",
        path: "/v1/jobs/{id}",
        operation_id: "stopJob",
        summary: "Stop a bulk job after the chunk under way; what was done stays done",
        auth: true,
        mutates: false,
        query: None,
        body: RequestBody::None,
        answer: Answer::Json(schema::<Job>),
        errors: &[404],
        route: || delete(h::stop_job),
    },
    Endpoint {
        method: "get",
        path: "/v1/deliveries/{id}",
        operation_id: "showDelivery",
        summary: "A delivery with its frozen body and every attempt",
        auth: true,
        mutates: false,
        query: None,
        body: RequestBody::None,
        answer: Answer::Json(schema::<DeliveryDetail>),
        errors: &[404],
        route: || get(h::show_delivery),
    },
    Endpoint {
        method: "post",
        path: "/v1/deliveries/{id}/refire",
        operation_id: "refireDelivery",
        summary: "Re-fire: put the item back into the delivery's stage and deliver anew",
        auth: true,
        mutates: true,
        query: None,
        body: RequestBody::None,
        answer: Answer::Json(schema::<RefireReport>),
        errors: &[403, 404, 409, 422],
        route: || post(h::refire),
    },
    Endpoint {
        method: "post",
        path: "/v1/deliveries/{id}/replay",
        operation_id: "replayDelivery",
        summary: "Replay: send the frozen bytes again now as a manual attempt; moves nothing",
        auth: true,
        mutates: true,
        query: None,
        body: RequestBody::None,
        answer: Answer::Json(schema::<AttemptEvent>),
        errors: &[403, 404],
        route: || post(h::replay),
    },
    Endpoint {
        method: "post",
        path: "/v1/deliveries/test",
        operation_id: "testDelivery",
        summary: "POST a test to a delivery's stage (by `id`, or an `item`'s latest delivery) with its item's document now; moves nothing",
        auth: true,
        mutates: true,
        query: None,
        body: RequestBody::Json(schema::<TestDeliveryRequest>),
        answer: Answer::Json(schema::<AttemptEvent>),
        errors: &[400, 403, 404, 422],
        route: || post(h::test_delivery),
    },
    Endpoint {
        method: "post",
        path: "/v1/stages/{workflow}/{stage}/test",
        operation_id: "testStage",
        summary: "POST a sample document (or, with `item`, that item's) to a webhook stage now; moves nothing",
        auth: true,
        mutates: true,
        query: None,
        body: RequestBody::OptionalJson(schema::<TestRequest>),
        answer: Answer::Json(schema::<AttemptEvent>),
        errors: &[403, 404, 422],
        route: || post(h::test_stage),
    },
    Endpoint {
        method: "post",
        path: "/v1/stages/{workflow}/{stage}/pause",
        operation_id: "pauseStage",
        summary: "Pause a webhook stage: its deliveries wait",
        auth: true,
        mutates: true,
        query: None,
        body: RequestBody::None,
        answer: Answer::Json(schema::<StagePauseState>),
        errors: &[403, 404, 422],
        route: || post(h::pause),
    },
    Endpoint {
        method: "post",
        path: "/v1/stages/{workflow}/{stage}/resume",
        operation_id: "resumeStage",
        summary: "Resume a paused webhook stage",
        auth: true,
        mutates: true,
        query: None,
        body: RequestBody::None,
        answer: Answer::Json(schema::<StagePauseState>),
        errors: &[403, 404, 422],
        route: || post(h::resume),
    },
];

/// The router of every endpoint in [`ENDPOINTS`]: token-guarded ones behind the middleware.
pub(super) fn build(state: Arc<AppState>) -> Router {
    let mut open = Router::new();
    let mut guarded = Router::new();
    for e in ENDPOINTS {
        // `route` merges method routers of one path (`GET` and `POST /v1/items`).
        if e.auth {
            guarded = guarded.route(e.path, (e.route)());
        } else {
            open = open.route(e.path, (e.route)());
        }
    }
    let guarded = guarded.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::require_token,
    ));
    open.merge(guarded)
        .fallback(h::not_found)
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::from_fn(uri_limit))
        .with_state(state)
}

/// The longest request URI (path and query) the API reads. hyper answers a URI over 64 KiB
/// itself, with an empty 414 before any of our code runs; this limit is below it so that a
/// long URI gets the API's JSON error like every other error. No route needs more: ids are
/// at most 128 characters and a list's query a few filters and a cursor.
pub const MAX_URI: usize = 8 * 1024;

async fn uri_limit(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if len > MAX_URI {
        return super::error::ApiError::uri_too_long(len, MAX_URI).into_response();
    }
    next.run(req).await
}

/// Errors that axum itself answers (a method a path does not take, a path parameter that is
/// not UTF-8) come as plain text or nothing: they are given the API's JSON error shape too,
/// keeping their status and `Allow` header.
async fn json_errors(resp: axum::response::Response) -> axum::response::Response {
    use axum::http::header::{ALLOW, CONTENT_TYPE};
    use axum::response::IntoResponse;
    let status = resp.status();
    let json = resp
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return resp;
    }
    let allow = resp.headers().get(ALLOW).cloned();
    let text = axum::body::to_bytes(resp.into_body(), 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match (text.is_empty(), &allow) {
        (false, _) => text,
        (true, Some(a)) => format!(
            "this path does not take that method (it takes {})",
            a.to_str().unwrap_or("other methods")
        ),
        (true, None) => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let code = match status.as_u16() {
        400 => "bad_request",
        404 => "not_found",
        405 => "method_not_allowed",
        413 => "too_large",
        414 => "uri_too_long",
        _ => "error",
    };
    let mut error = super::error::ApiError::new(status, code, message);
    if status == axum::http::StatusCode::BAD_REQUEST {
        // axum's own 400s are about the path (a parameter that is not UTF-8).
        let message = error.body.error.message.clone();
        error = super::error::ApiError::bad_input("path", message);
    }
    let mut out = error.into_response();
    if let Some(a) = allow {
        out.headers_mut().insert(ALLOW, a);
    }
    out
}
