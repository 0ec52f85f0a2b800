//! The OpenAPI 3.1 document, generated from the endpoint table and the handlers' serde types
//! (`schemars` reads the same serde attributes that shape the JSON, so they cannot differ).

use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use schemars::{Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use super::error::ErrorBody;
use super::routes::{Answer, ENDPOINTS, RequestBody};

const COMPONENTS: &str = "/components/schemas";

fn generator(serialize: bool) -> SchemaGenerator {
    let settings = SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = COMPONENTS.into();
        s.meta_schema = None;
    });
    if serialize {
        settings.for_serialize().into_generator()
    } else {
        settings.for_deserialize().into_generator()
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        400 => "Bad input; `details` names each field at fault",
        401 => "Missing or wrong bearer token",
        403 => "The API is read-only",
        404 => "No such object",
        409 => {
            "Stale: the object changed since the caller looked, or the action conflicts with its state"
        }
        413 => "The request body is larger than the limit",
        414 => "The request URI is longer than the limit (8 KiB)",
        422 => "The object cannot take this action (an invalid transition)",
        _ => "Internal error",
    }
}

/// The inline object behind a `$ref` the generator made (for query parameters).
fn resolve(g: &SchemaGenerator, s: &Schema) -> Value {
    let v = s.as_value();
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.trim_start_matches(&format!("#{COMPONENTS}/")).to_string();
            g.definitions().get(&name).cloned().unwrap_or(Value::Null)
        }
        None => v.clone(),
    }
}

fn build() -> Value {
    let mut resp = generator(true);
    let mut req = generator(false);
    let error_ref = resp.subschema_for::<ErrorBody>().to_value();
    let mut paths: Map<String, Value> = Map::new();
    for e in ENDPOINTS {
        let mut params: Vec<Value> = Vec::new();
        for seg in e.path.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                params.push(json!({
                    "name": name, "in": "path", "required": true, "schema": {"type": "string"}
                }));
            }
        }
        if let Some(q) = e.query {
            let s = q(&mut req);
            let obj = resolve(&req, &s);
            let required: Vec<&str> = obj
                .get("required")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(props) = obj.get("properties").and_then(Value::as_object) {
                for (name, ps) in props {
                    let mut p = json!({
                        "name": name, "in": "query",
                        "required": required.contains(&name.as_str()),
                        "schema": ps,
                    });
                    if let Some(d) = ps.get("description") {
                        p["description"] = d.clone();
                    }
                    params.push(p);
                }
            }
        }
        let mut op = json!({
            "operationId": e.operation_id,
            "summary": e.summary,
            "parameters": params,
            "security": if e.auth { json!([{"bearer": []}]) } else { json!([]) },
        });
        match &e.body {
            RequestBody::None => {}
            RequestBody::Json(f) | RequestBody::OptionalJson(f) => {
                let s = f(&mut req).to_value();
                op["requestBody"] = json!({
                    "required": matches!(e.body, RequestBody::Json(_)),
                    "content": {"application/json": {"schema": s}},
                });
            }
            RequestBody::Items => {
                op["requestBody"] = json!({
                    "required": true,
                    "description": "One item object (plain, or a whole Darwin JSON 2.0 export), an array of them, or JSON Lines",
                    "content": {
                        "application/json": {"schema": {"oneOf": [
                            {"type": "object"},
                            {"type": "array", "items": {"type": "object"}},
                        ]}},
                        "application/x-ndjson": {"schema": {"type": "string"}},
                    },
                });
            }
        }
        let mut responses = Map::new();
        let ok = match &e.answer {
            Answer::Json(f) => json!({
                "description": "OK",
                "content": {"application/json": {"schema": f(&mut resp).to_value()}},
            }),
            Answer::Accepted(f) => {
                let body = json!({"application/json": {"schema": f(&mut resp).to_value()}});
                responses.insert(
                    "202".into(),
                    json!({"description": "Accepted: the job started", "content": body}),
                );
                json!({"description": "OK: a dry run, nothing started", "content": body})
            }
            Answer::Text(ct) => json!({
                "description": "OK",
                "content": {*ct: {"schema": {"type": "string"}}},
            }),
        };
        responses.insert("200".into(), ok);
        let mut codes: Vec<u16> = e.errors.to_vec();
        if e.auth {
            codes.push(401);
        }
        if e.mutates && !codes.contains(&403) {
            codes.push(403);
        }
        codes.push(414);
        codes.push(500);
        codes.sort_unstable();
        for c in codes {
            responses.insert(
                c.to_string(),
                json!({
                    "description": reason(c),
                    "content": {"application/json": {"schema": error_ref}},
                }),
            );
        }
        op["responses"] = Value::Object(responses);
        let entry = paths.entry(e.path.to_string()).or_insert_with(|| json!({}));
        entry[e.method] = op;
    }
    let mut schemas = resp.take_definitions(true);
    for (k, v) in req.take_definitions(true) {
        schemas.entry(k).or_insert(v);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "hookops API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The HTTP API of `hookops serve --api`. Every call except /healthz needs `Authorization: Bearer <token>`. Errors are `{\"error\": {\"code\", \"message\", \"details\"?}}`.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    })
}

/// The document (built once).
pub fn document() -> Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build).clone()
}
