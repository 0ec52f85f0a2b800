//! The HTTP API of `hookops serve --api` over real HTTP on 127.0.0.1: every endpoint, every
//! error status, auth, read-only, the body cap, cursor paging across inserts, the V7-style
//! callback loop, event notifications, and every response checked against `/openapi.json`.
//!
//! Each test builds its own world: a temp SQLite file, a scripted receiver, the API server and
//! (where deliveries matter) an in-process dispatcher. Waiting is on conditions with a
//! deadline, never on fixed sleeps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hookops::api::{ApiOptions, Metrics, Server, StartError, Tokens};
use hookops::dispatch::{self, DispatchNotice, DispatcherOptions};
use hookops::model::{DeliveryId, DeliveryState, EventType, ItemId};
use hookops::receiver::{CallbackApi, Receiver, ReceiverOptions, Script};
use hookops::store::{DeliveryFilter, Location, OpenOptions, Store};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

#[path = "support/pg.rs"]
mod pg;

const TOKEN: &str = "alice-token-0123456789";
const BOT_TOKEN: &str = "bot-token-abcdefghijkl";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const DEADLINE: Duration = Duration::from_secs(30);

struct World {
    dir: tempfile::TempDir,
    store: Store,
    api: String,
    receiver: Receiver,
    client: reqwest::Client,
    stop: watch::Sender<bool>,
    notices: broadcast::Sender<DispatchNotice>,
    store_errors: Arc<std::sync::Mutex<Vec<String>>>,
    doc: Value,
}

#[derive(Clone)]
struct Opts {
    script: &'static str,
    dispatch: bool,
    max_body: usize,
    /// Serve a second, read-only store of the same file instead of the writable one.
    read_only: bool,
    /// `callback:STAGE` rules call this world's own API.
    callback: bool,
    /// The store on a PostgreSQL database of the test cluster instead of a SQLite file.
    postgres: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            script: "/hook=ok,/fail=500,/events=ok,/events-down=400,*=ok",
            dispatch: true,
            max_body: hookops::api::DEFAULT_MAX_BODY,
            read_only: false,
            callback: false,
            postgres: false,
        }
    }
}

fn workflow_text(recv: &Receiver, hook_path: &str) -> String {
    format!(
        r#"
id = "wf"
name = "API test"
team = "acme"

[[notify]]
url = "{events}"
events = ["item.created", "item.stage_changed", "item.completed", "delivery.failed", "stage.paused"]
secret = "{SECRET}"

[[notify]]
url = "{down}"
events = ["delivery.failed"]
secret = "{SECRET}"

[[stage]]
id = "dataset"
kind = "dataset"
next = "hook"

[[stage]]
id = "hold"
kind = "annotate"
next = "hook"

[[stage]]
id = "hook"
kind = "webhook"
url = "{hook}"
secret = "{SECRET}"
max_attempts = 1
on_success = "review"
on_failure = "parked"

[[stage]]
id = "failing"
kind = "webhook"
url = "{fail}"
secret = "{SECRET}"
max_attempts = 1
on_success = "review"
on_failure = "parked"

[[stage]]
id = "review"
kind = "review"
on_approve = "done"
on_reject = "hold"

[[stage]]
id = "parked"
kind = "annotate"
next = "done"

[[stage]]
id = "done"
kind = "complete"
"#,
        events = recv.url("/events"),
        down = recv.url("/events-down"),
        hook = recv.url(hook_path),
        fail = recv.url("/fail"),
    )
}

fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl World {
    async fn new(o: Opts) -> World {
        Self::with_hook(o, "/hook").await
    }

    async fn with_hook(o: Opts, hook_path: &str) -> World {
        install_tls_provider();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("api.db");
        let tokens_file = dir.path().join("tokens");
        std::fs::write(&tokens_file, format!("alice:{TOKEN}\nbot:{BOT_TOKEN}\n")).unwrap();
        std::fs::set_permissions(
            &tokens_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let tokens = Tokens::from_file(&tokens_file).unwrap();
        let receiver = Receiver::start(ReceiverOptions {
            script: o.script.parse().unwrap(),
            secrets: vec![SECRET.to_string()],
            ..ReceiverOptions::default()
        })
        .await
        .unwrap();
        let location = if o.postgres {
            // The cluster's admin client runs a runtime of its own: off the async threads.
            Location::parse(&tokio::task::block_in_place(|| pg::cluster().database())).unwrap()
        } else {
            Location::File(db)
        };
        let writable = Store::open_at(&location, &OpenOptions::default()).unwrap();
        let wf =
            hookops::workflow::parse("wf.toml", &workflow_text(&receiver, hook_path), &|_| None)
                .unwrap();
        // Store writes block on the writer: off the async threads.
        tokio::task::block_in_place(|| writable.apply_workflow(&wf, &Vec::new(), "setup")).unwrap();
        let store = if o.read_only {
            Store::open_at(
                &location,
                &OpenOptions {
                    read_only: true,
                    ..OpenOptions::default()
                },
            )
            .unwrap()
        } else {
            writable.clone()
        };
        let (stop, stop_rx) = watch::channel(false);
        let (notices, _) = broadcast::channel(4096);
        let store_errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        {
            let mut sub = notices.subscribe();
            let errors = store_errors.clone();
            tokio::spawn(async move {
                loop {
                    match sub.recv().await {
                        Ok(DispatchNotice::StoreError(m)) => errors.lock().unwrap().push(m),
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            });
        }
        let server = Server::bind(
            store.clone(),
            ApiOptions {
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                tokens,
                max_body: o.max_body,
                max_send_body: hookops::dispatch::http::DEFAULT_MAX_BODY,
            },
            Arc::new(Metrics::default()),
            Some(notices.clone()),
        )
        .await
        .unwrap();
        let api = format!("http://{}", server.local_addr().unwrap());
        tokio::spawn(server.run(stop_rx.clone()));
        if o.callback {
            receiver.set_script(o.script.parse::<Script>().unwrap().with_callback_api(
                CallbackApi {
                    url: api.clone(),
                    token: BOT_TOKEN.to_string(),
                },
            ));
        }
        if o.dispatch {
            tokio::spawn(dispatch::run(
                writable.clone(),
                DispatcherOptions::default(),
                notices.clone(),
                stop_rx.clone(),
            ));
        }
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let doc: Value = client
            .get(format!("{api}/openapi.json"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .map(|t| serde_json::from_str(&t).unwrap())
            .unwrap();
        World {
            dir,
            store: writable,
            api,
            receiver,
            client,
            stop,
            notices,
            store_errors,
            doc,
        }
    }

    /// Calls `METHOD template` (with `{…}` filled from `args`) and checks the answer against
    /// the OpenAPI document: the status must be documented and the body must match its schema.
    async fn call(
        &self,
        method: &str,
        template: &str,
        args: &[&str],
        query: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call_as(
            Some(TOKEN),
            method,
            template,
            args,
            query,
            body.map(|b| b.to_string()),
        )
        .await
    }

    async fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        template: &str,
        args: &[&str],
        query: &str,
        body: Option<String>,
    ) -> (u16, Value) {
        let mut path = template.to_string();
        for a in args {
            let start = path.find('{').expect("more args than parameters");
            let end = path[start..].find('}').unwrap() + start;
            path.replace_range(start..=end, a);
        }
        let url = format!(
            "{}{path}{}",
            self.api,
            if query.is_empty() {
                String::new()
            } else {
                format!("?{query}")
            }
        );
        let mut req = match method {
            "get" => self.client.get(&url),
            "post" => self.client.post(&url),
            "delete" => self.client.delete(&url),
            _ => unreachable!(),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        let value = if ctype.starts_with("application/json") {
            serde_json::from_str(&text).unwrap()
        } else {
            Value::String(text)
        };
        self.check_schema(method, template, status, &ctype, &value);
        (status, value)
    }

    fn check_schema(&self, method: &str, template: &str, status: u16, ctype: &str, body: &Value) {
        let op = &self.doc["paths"][template][method];
        assert!(
            op.is_object(),
            "{method} {template} is not in /openapi.json"
        );
        let resp = &op["responses"][status.to_string()];
        assert!(
            resp.is_object(),
            "{method} {template} answered {status}, which /openapi.json does not list: {body}"
        );
        let content = resp["content"].as_object().unwrap();
        let media = ctype.split(';').next().unwrap_or("").trim();
        let (_, spec) = content
            .iter()
            .find(|(k, _)| k.split(';').next().unwrap().trim() == media)
            .unwrap_or_else(|| panic!("{method} {template} {status}: undocumented type {ctype}"));
        let mut schema = spec["schema"].clone();
        if let Some(obj) = schema.as_object_mut() {
            obj.insert("components".into(), self.doc["components"].clone());
        }
        let validator = jsonschema::validator_for(&schema).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {template} {status} does not match /openapi.json: {errors:?}\n{body}"
        );
    }

    async fn import(&self, items: Value) -> Value {
        let (s, v) = self
            .call("post", "/v1/items", &[], "workflow=wf", Some(items))
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    async fn set_stage(&self, body: Value) -> (u16, Value) {
        self.call("post", "/v1/items/stage", &[], "", Some(body))
            .await
    }

    async fn item(&self, id: &str) -> Value {
        let (s, v) = self.call("get", "/v1/items/{id}", &[id], "", None).await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Polls `cond` until it holds or the deadline passes.
    async fn wait(&self, what: &str, mut cond: impl AsyncFnMut() -> bool) {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            if cond().await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_item_in(&self, id: &str, stage: &str) {
        self.wait(&format!("item {id} in {stage}"), async || {
            self.store.item(&ItemId::new(id)).unwrap().stage.as_str() == stage
        })
        .await;
    }

    fn notifications(&self) -> Vec<Value> {
        self.receiver
            .received()
            .into_iter()
            .filter(|r| r.path == "/events")
            .map(|r| {
                assert_eq!(r.signature_valid, Some(true), "notifications are signed");
                serde_json::from_slice(&r.body).unwrap()
            })
            .collect()
    }

    fn assert_no_store_errors(&self) {
        let errors = self.store_errors.lock().unwrap();
        assert!(
            errors.is_empty(),
            "the dispatcher hit store errors: {errors:?}"
        );
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        let _ = &self.notices;
        let _ = self.dir.path();
    }
}

fn ids(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

fn items(prefix: &str, n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"id": format!("{prefix}{i:03}"), "name": format!("{prefix} {i}.jpg")}))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auth_is_required_everywhere_but_healthz_and_names_the_operator() {
    let w = World::new(Opts {
        dispatch: false,
        ..Opts::default()
    })
    .await;
    let (s, v) = w.call_as(None, "get", "/healthz", &[], "", None).await;
    assert_eq!((s, &v["ok"]), (200, &json!(true)));
    for token in [None, Some("wrong-token-0123456789"), Some("")] {
        let (s, v) = w
            .call_as(token, "get", "/v1/workflows", &[], "", None)
            .await;
        assert_eq!(s, 401, "{token:?}: {v}");
        assert_eq!(v["error"]["code"], "unauthorized");
        let (s, _) = w.call_as(token, "get", "/metrics", &[], "", None).await;
        assert_eq!(s, 401);
        let (s, _) = w
            .call_as(token, "post", "/v1/items/stage", &[], "", Some("{}".into()))
            .await;
        assert_eq!(s, 401);
    }
    // The 401 says how to authenticate, and never echoes the token.
    let resp = w
        .client
        .get(format!("{}/v1/workflows", w.api))
        .bearer_auth("wrong-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert!(!resp.text().await.unwrap().contains("wrong-token"));

    let (s, v) = w.call("get", "/v1/workflows", &[], "", None).await;
    assert_eq!(s, 200);
    assert_eq!(ids(&v), vec!["wf"]);

    // The token's name is the operator in the audit log.
    w.import(json!({"id": "a1", "name": "a1.jpg"})).await;
    let (s, _) = w
        .call_as(
            Some(BOT_TOKEN),
            "post",
            "/v1/items/stage",
            &[],
            "",
            Some(json!({"workflow_id": "wf", "stage_id": "hold", "item_ids": ["a1"]}).to_string()),
        )
        .await;
    assert_eq!(s, 200);
    let audit = w.store.audit_log(10).unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "assign" && a.operator == "bot"),
        "{audit:?}"
    );
    assert!(
        audit
            .iter()
            .any(|a| a.action == "import" && a.operator == "alice"),
        "{audit:?}"
    );

    // A non-loopback address without tokens is refused at start.
    let err = Server::bind(
        w.store.clone(),
        ApiOptions {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            tokens: Tokens::default(),
            max_body: 1024,
            max_send_body: 1024,
        },
        Arc::new(Metrics::default()),
        None,
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(err, StartError::NoTokens(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_endpoint_answers_its_documented_shape_and_errors() {
    every_endpoint(Opts::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_endpoint_answers_its_documented_shape_and_errors_on_postgresql() {
    every_endpoint(Opts {
        postgres: true,
        ..Opts::default()
    })
    .await;
}

async fn every_endpoint(o: Opts) {
    let w = World::new(o).await;
    // Every documented route is exercised below, or (the bulk actions, jobs, failures and the
    // attempt stream of issue 18) in the tests at the end of this file; this count keeps the
    // document and the tests in step.
    let documented: Vec<String> = w.doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| format!("{m} {p}"))
        })
        .collect();
    assert_eq!(documented.len(), 25, "{documented:?}");

    // POST /v1/items: one object, an array, JSON Lines.
    let v = w
        .import(json!({"id": "i1", "name": "one.jpg", "tags": ["urgent"]}))
        .await;
    assert_eq!(v["imported"], 1);
    assert_eq!(v["items"], json!([{"id": "i1", "stage": "dataset"}]));
    let v = w.import(items("arr", 3)).await;
    assert_eq!(v["imported"], 3);
    let lines = "{\"id\":\"l1\",\"name\":\"l1.jpg\"}\n{\"id\":\"l2\",\"name\":\"l2.jpg\"}\n";
    let (s, v) = w
        .call_as(
            Some(TOKEN),
            "post",
            "/v1/items",
            &[],
            "workflow=wf",
            Some(lines.into()),
        )
        .await;
    assert_eq!((s, v["imported"].as_i64()), (200, Some(2)), "{v}");
    let v = w
        .import(json!({"id": "i1", "name": "one.jpg", "tags": ["urgent"]}))
        .await;
    assert_eq!(
        (v["imported"].as_i64(), v["already_present"].as_i64()),
        (Some(0), Some(1))
    );
    // 400 with the line at fault; nothing imported.
    let bad = "{\"id\":\"ok1\",\"name\":\"ok\"}\n{\"id\":\"bad id\",\"name\":\"x\"}\n";
    let (s, v) = w
        .call_as(
            Some(TOKEN),
            "post",
            "/v1/items",
            &[],
            "workflow=wf",
            Some(bad.into()),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["details"][0]["path"], "line 2");
    assert!(
        w.store.item(&ItemId::new("ok1")).is_err(),
        "nothing imported"
    );
    let (s, v) = w
        .call("post", "/v1/items", &[], "", Some(json!({"name": "x"})))
        .await;
    assert_eq!(s, 400, "missing ?workflow: {v}");
    let (s, v) = w
        .call(
            "post",
            "/v1/items",
            &[],
            "workflow=nope",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );

    // GET /v1/items and /v1/items/{id}.
    let (s, v) = w
        .call("get", "/v1/items", &[], "workflow=wf&stage=dataset", None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        ids(&v),
        vec!["i1", "arr000", "arr001", "arr002", "l1", "l2"]
    );
    let (s, v) = w.call("get", "/v1/items", &[], "state=bogus", None).await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = w.call("get", "/v1/items", &[], "limit=0", None).await;
    assert_eq!(s, 400);
    let (s, _) = w
        .call("get", "/v1/items", &[], "cursor=not-a-cursor", None)
        .await;
    assert_eq!(s, 400);
    let d = w.item("i1").await;
    assert_eq!(
        (d["workflow"].as_str(), d["stage"].as_str()),
        (Some("wf"), Some("dataset"))
    );
    assert_eq!(d["history"][0]["cause"], "import");
    let (s, v) = w.call("get", "/v1/items/{id}", &["nope"], "", None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));

    // POST /v1/items/stage: by ids, compare-and-set, bulk from a stage; refusals.
    let (s, v) = w
        .set_stage(
            json!({"workflow_id": "wf", "stage_id": "hold", "item_ids": ["i1", "zz-unknown"]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["moved"], 1);
    assert_eq!(v["refused"][0]["item_id"], "zz-unknown");
    let (s, v) = w
        .set_stage(json!({"workflow_id": "wf", "stage_id": "review", "item_ids": ["i1"], "from_stage_id": "dataset"}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("stale")),
        "{v}"
    );
    // Compare-and-set against a stage that does not exist: 404, not a "stale" to retry.
    let (s, v) = w
        .set_stage(json!({"workflow_id": "wf", "stage_id": "review", "item_ids": ["i1"], "from_stage_id": "nope"}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    // `limit: 0` would mean all or nothing: refused, naming the field.
    let (s, v) = w
        .set_stage(json!({"workflow_id": "wf", "stage_id": "hold", "from_stage_id": "dataset", "limit": 0}))
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["details"][0]["path"], "limit", "{v}");
    let (s, v) = w
        .set_stage(json!({"workflow_id": "wf", "stage_id": "hold", "item_ids": ["nope"]}))
        .await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = w
        .set_stage(json!({"workflow_id": "wf", "stage_id": "hold", "from_stage_id": "dataset", "limit": 2}))
        .await;
    assert_eq!((s, v["moved"].as_i64()), (200, Some(2)), "{v}");
    let (s, v) = w
        .set_stage(json!({"workflow_id": "wf", "stage_id": "hold", "item_ids": [7]}))
        .await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["details"][0]["path"], "item_ids[0]", "{v}");
    let (s, v) = w
        .set_stage(json!({"workflow_id": "wf", "stage_id": "hold", "surprise": 1}))
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = w
        .set_stage(json!({"workflow_id": "wf", "stage_id": "hold"}))
        .await;
    assert_eq!(s, 400);
    let (s, _) = w
        .set_stage(json!({"workflow_id": "wf", "stage_id": "nowhere", "item_ids": ["i1"]}))
        .await;
    assert_eq!(s, 404);
    let (s, _) = w
        .call_as(
            Some(TOKEN),
            "post",
            "/v1/items/stage",
            &[],
            "",
            Some("{not json".into()),
        )
        .await;
    assert_eq!(s, 400);

    // POST /v1/items/{id}/advance: annotate -> webhook -> review; decide the review.
    let (s, v) = w
        .call("post", "/v1/items/{id}/advance", &["i1"], "", None)
        .await;
    assert_eq!(s, 200, "{v}");
    w.wait_item_in("i1", "review").await;
    let (s, v) = w
        .call("post", "/v1/items/{id}/advance", &["i1"], "", None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("invalid_transition")),
        "{v}"
    );
    let (s, v) = w
        .call(
            "post",
            "/v1/items/{id}/advance",
            &["i1"],
            "",
            Some(json!({"outcome": "approve", "expect_stage_id": "hold"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("stale")),
        "{v}"
    );
    let (s, _) = w
        .call(
            "post",
            "/v1/items/{id}/advance",
            &["i1"],
            "",
            Some(json!({"outcome": "maybe"})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, v) = w
        .call(
            "post",
            "/v1/items/{id}/advance",
            &["i1"],
            "",
            Some(json!({"outcome": "approve"})),
        )
        .await;
    assert_eq!((s, v["landed"]["done"].as_i64()), (200, Some(1)), "{v}");
    let (s, _) = w
        .call("post", "/v1/items/{id}/advance", &["nope"], "", None)
        .await;
    assert_eq!(s, 404);

    // Workflows.
    let (s, v) = w.call("get", "/v1/workflows/{id}", &["wf"], "", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["stage_list"].as_array().unwrap().len(), 7);
    // Webhook settings come with the shape `workflow show --json` has, keys masked.
    let hook = v["stage_list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["kind"] == "webhook")
        .expect("a webhook stage");
    let secrets = hook["webhook"]["secrets"]
        .as_array()
        .expect("webhook settings");
    assert!(!secrets.is_empty(), "{hook}");
    assert!(!v.to_string().contains(&SECRET[6..]), "{v}");
    let (s, _) = w
        .call("get", "/v1/workflows/{id}", &["nope"], "", None)
        .await;
    assert_eq!(s, 404);

    // Deliveries: list, show, refire (409 while the item moved on), replay, failing stage.
    let (s, v) = w
        .call(
            "get",
            "/v1/deliveries",
            &[],
            "stage=hook&event=stage.webhook",
            None,
        )
        .await;
    assert_eq!(s, 200);
    let first = v["items"][0]["id"].as_str().unwrap().to_string();
    let (s, v) = w
        .call("get", "/v1/deliveries/{id}", &[&first], "", None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["attempt_log"][0]["status"], 200, "{v}");
    let (s, _) = w
        .call("get", "/v1/deliveries/{id}", &["msg_nope"], "", None)
        .await;
    assert_eq!(s, 404);
    let (s, v) = w
        .call("post", "/v1/deliveries/{id}/refire", &[&first], "", None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("stale")),
        "{v}"
    );
    let (s, _) = w
        .call(
            "post",
            "/v1/deliveries/{id}/refire",
            &["msg_nope"],
            "",
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (s, v) = w
        .call("post", "/v1/deliveries/{id}/replay", &[&first], "", None)
        .await;
    assert_eq!(
        (s, v["status"].as_u64(), v["trigger"].as_str()),
        (200, Some(200), Some("manual")),
        "{v}"
    );
    let (s, _) = w
        .call(
            "post",
            "/v1/deliveries/{id}/replay",
            &["msg_nope"],
            "",
            None,
        )
        .await;
    assert_eq!(s, 404);
    // A failing stage: its delivery fails, the item parks; re-fire makes a new delivery.
    let (s, _) = w
        .set_stage(json!({"workflow_id": "wf", "stage_id": "failing", "item_ids": ["l1"]}))
        .await;
    assert_eq!(s, 200);
    w.wait_item_in("l1", "parked").await;
    let (_, v) = w
        .call(
            "get",
            "/v1/deliveries",
            &[],
            "stage=failing&state=failed",
            None,
        )
        .await;
    let failed = v["items"][0]["id"].as_str().unwrap().to_string();
    let (s, v) = w
        .call("post", "/v1/deliveries/{id}/refire", &[&failed], "", None)
        .await;
    assert_eq!((s, v["refired"].as_i64()), (200, Some(1)), "{v}");
    let history = w.item("l1").await["history"].clone();
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["cause"] == "refire" && h["operator"] == "alice"),
        "{history}"
    );
    // A notification delivery cannot be re-fired (it is no stage.webhook): 422.
    w.wait("a notification", async || {
        w.call("get", "/v1/deliveries", &[], "event=item.created", None)
            .await
            .1["items"][0]["id"]
            .is_string()
    })
    .await;
    let (_, v) = w
        .call("get", "/v1/deliveries", &[], "event=item.created", None)
        .await;
    let note = v["items"][0]["id"].as_str().unwrap().to_string();
    let (s, _) = w
        .call("post", "/v1/deliveries/{id}/refire", &[&note], "", None)
        .await;
    assert_eq!(s, 422);

    // Stages: test, pause, resume.
    let (s, v) = w
        .call(
            "post",
            "/v1/stages/{workflow}/{stage}/test",
            &["wf", "hook"],
            "",
            None,
        )
        .await;
    assert_eq!(
        (s, v["event"].as_str(), v["status"].as_u64()),
        (200, Some("webhook.test"), Some(200)),
        "{v}"
    );
    let (s, _) = w
        .call(
            "post",
            "/v1/stages/{workflow}/{stage}/test",
            &["wf", "hold"],
            "",
            None,
        )
        .await;
    assert_eq!(s, 422);
    let (s, _) = w
        .call(
            "post",
            "/v1/stages/{workflow}/{stage}/test",
            &["wf", "nope"],
            "",
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (s, v) = w
        .call(
            "post",
            "/v1/stages/{workflow}/{stage}/pause",
            &["wf", "hook"],
            "",
            None,
        )
        .await;
    assert_eq!(
        (s, &v),
        (
            200,
            &json!({"workflow": "wf", "stage": "hook", "paused": true, "changed": true})
        )
    );
    let (s, v) = w
        .call(
            "post",
            "/v1/stages/{workflow}/{stage}/pause",
            &["wf", "hook"],
            "",
            None,
        )
        .await;
    assert_eq!((s, v["changed"].as_bool()), (200, Some(false)));
    let (s, _) = w
        .call(
            "post",
            "/v1/stages/{workflow}/{stage}/pause",
            &["wf", "review"],
            "",
            None,
        )
        .await;
    assert_eq!(s, 422);

    // Metrics: Prometheus text with the documented families.
    let (s, v) = w.call("get", "/metrics", &[], "", None).await;
    assert_eq!(s, 200);
    let text = v.as_str().unwrap();
    for family in [
        "hookops_deliveries{workflow=\"wf\",stage=\"hook\",state=\"succeeded\"}",
        "hookops_retry_queue_depth",
        "hookops_stage_paused{workflow=\"wf\",stage=\"hook\"} 1",
        "hookops_paused_stages 1",
        "hookops_attempts_recorded_total",
        "hookops_attempt_duration_seconds_bucket{le=\"+Inf\"}",
        "hookops_attempt_duration_seconds_count",
    ] {
        assert!(text.contains(family), "missing {family} in\n{text}");
    }
    // The replay and the test went through the API's own event channel into the histogram.
    let count = text
        .lines()
        .find_map(|l| l.strip_prefix("hookops_attempt_duration_seconds_count "))
        .unwrap();
    assert!(count.parse::<u64>().unwrap() >= 2, "{text}");
    let (s, v) = w
        .call(
            "post",
            "/v1/stages/{workflow}/{stage}/resume",
            &["wf", "hook"],
            "",
            None,
        )
        .await;
    assert_eq!((s, v["paused"].as_bool()), (200, Some(false)));

    // Unknown paths are JSON 404s too.
    let resp = w
        .client
        .get(format!("{}/v2/nothing", w.api))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "not_found");
    // So are the errors axum answers itself: a method a path does not take, a path that is
    // not UTF-8.
    let resp = w
        .client
        .delete(format!("{}/v1/items/i1", w.api))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert!(resp.headers().contains_key("allow"));
    let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "method_not_allowed", "{v}");
    let resp = w
        .client
        .get(format!("{}/v1/items/%ff", w.api))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "bad_request", "{v}");

    // An item whose id is `stage` shares its path with Set Stage (`POST /v1/items/stage`): a
    // GET still reads the item.
    w.import(json!({"id": "stage", "name": "stage.jpg"})).await;
    assert_eq!(w.item("stage").await["id"], "stage");
    w.assert_no_store_errors();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_400_has_details_set_stage_takes_only_an_object_and_a_414_is_json() {
    let w = World::new(Opts {
        dispatch: false,
        ..Opts::default()
    })
    .await;
    w.import(json!({"id": "i1", "name": "one.jpg"})).await;
    // Set Stage with its fields by position: serde would read it as the struct, in order.
    let (s, v) = w
        .call_as(
            Some(TOKEN),
            "post",
            "/v1/items/stage",
            &[],
            "",
            Some(r#"["wf", "hold", ["i1"]]"#.into()),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["details"][0]["path"], "body", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("JSON object"),
        "{v}"
    );
    assert_eq!(w.item("i1").await["stage"], "dataset", "nothing moved");

    // Every kind of 400 names what is at fault.
    let cases: Vec<(&str, &str, &str, Option<String>, &str)> = vec![
        (
            "post",
            "/v1/items",
            "",
            Some(r#"{"name":"x"}"#.into()),
            "query",
        ),
        (
            "post",
            "/v1/items",
            "workflow=wf",
            Some("   ".into()),
            "body",
        ),
        (
            "post",
            "/v1/items/stage",
            "",
            Some("{not json".into()),
            "body",
        ),
        (
            "post",
            "/v1/items/stage",
            "",
            Some(r#"{"workflow_id":"wf","stage_id":"hold"}"#.into()),
            "item_ids",
        ),
        ("get", "/v1/items", "limit=lots", None, "query"),
        ("get", "/v1/deliveries", "cursor=zzz", None, "cursor"),
    ];
    for (method, path, query, body, part) in cases {
        let (s, v) = w.call_as(Some(TOKEN), method, path, &[], query, body).await;
        assert_eq!(s, 400, "{method} {path}?{query}: {v}");
        let details = v["error"]["details"].as_array();
        assert!(
            details.is_some_and(|d| !d.is_empty()),
            "{method} {path}?{query}: no details: {v}"
        );
        assert_eq!(v["error"]["details"][0]["path"], part, "{v}");
    }
    // axum's own 400 (a path parameter that is not UTF-8) has details too.
    let resp = w
        .client
        .get(format!("{}/v1/items/%ff", w.api))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(v["error"]["details"][0]["path"], "path", "{v}");

    // A URI over the limit: 414 with the API's JSON error, documented on every path.
    let long = format!("search={}", "x".repeat(hookops::api::MAX_URI));
    let (s, v) = w.call("get", "/v1/items", &[], &long, None).await;
    assert_eq!(s, 414, "{v}");
    assert_eq!(v["error"]["code"], "uri_too_long", "{v}");
    // Just under it is an ordinary request.
    let short = format!("search={}", "x".repeat(hookops::api::MAX_URI - 100));
    let (s, v) = w.call("get", "/v1/items", &[], &short, None).await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_only_api_answers_reads_and_refuses_every_action() {
    read_only_api(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_only_api_answers_reads_and_refuses_every_action_on_postgresql() {
    read_only_api(true).await;
}

async fn read_only_api(postgres: bool) {
    let w = World::new(Opts {
        dispatch: false,
        read_only: true,
        postgres,
        ..Opts::default()
    })
    .await;
    let (s, v) = w.call("get", "/healthz", &[], "", None).await;
    assert_eq!((s, v["read_only"].as_bool()), (200, Some(true)));
    let (s, _) = w.call("get", "/v1/workflows/{id}", &["wf"], "", None).await;
    assert_eq!(s, 200);
    let (s, _) = w.call("get", "/v1/items", &[], "", None).await;
    assert_eq!(s, 200);
    let (s, v) = w
        .call("post", "/v1/items", &[], "workflow=wf", Some(items("x", 1)))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("read_only")),
        "{v}"
    );
    let (s, _) = w
        .set_stage(json!({"workflow_id": "wf", "stage_id": "hold", "from_stage_id": "dataset"}))
        .await;
    assert_eq!(s, 403);
    for (t, a) in [
        ("/v1/items/{id}/advance", vec!["x"]),
        ("/v1/deliveries/{id}/refire", vec!["msg_x"]),
        ("/v1/deliveries/{id}/replay", vec!["msg_x"]),
        ("/v1/stages/{workflow}/{stage}/test", vec!["wf", "hook"]),
        ("/v1/stages/{workflow}/{stage}/pause", vec!["wf", "hook"]),
        ("/v1/stages/{workflow}/{stage}/resume", vec!["wf", "hook"]),
    ] {
        let (s, v) = w.call("post", t, &a, "", None).await;
        assert_eq!(s, 403, "{t}: {v}");
    }
    for t in [
        "/v1/deliveries/refire",
        "/v1/deliveries/replay",
        "/v1/deliveries/cancel",
    ] {
        let (s, v) = w
            .call(
                "post",
                t,
                &[],
                "",
                Some(json!({"filter": {"workflow": "wf"}})),
            )
            .await;
        assert_eq!(s, 403, "{t}: {v}");
    }
    let (s, v) = w
        .call(
            "post",
            "/v1/deliveries/test",
            &[],
            "",
            Some(json!({"item": {"id": "x"}})),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    // Nothing was sent: a read-only operator sends nothing.
    assert_eq!(w.receiver.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodies_over_the_cap_get_413() {
    let w = World::new(Opts {
        dispatch: false,
        max_body: 4096,
        ..Opts::default()
    })
    .await;
    let big = json!({"id": "big", "name": "x".repeat(8192)}).to_string();
    let (s, v) = w
        .call_as(
            Some(TOKEN),
            "post",
            "/v1/items",
            &[],
            "workflow=wf",
            Some(big.clone()),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("too_large")),
        "{v}"
    );
    // Without a Content-Length (chunked), the cap holds while reading.
    let (status, v) = chunked_post(&w.api, "/v1/items/stage", big.as_bytes()).await;
    w.check_schema("post", "/v1/items/stage", status, "application/json", &v);
    assert_eq!(status, 413, "{v}");
    // Under the cap is fine.
    w.import(json!({"id": "small", "name": "small.jpg"})).await;
}

/// POSTs `body` with `Transfer-Encoding: chunked` (no Content-Length) over a raw connection.
async fn chunked_post(api: &str, path: &str, body: &[u8]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = api.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for c in body.chunks(1000) {
        req.extend(format!("{:x}\r\n", c.len()).bytes());
        req.extend(c);
        req.extend(b"\r\n");
    }
    req.extend(b"0\r\n\r\n");
    // The server may answer and close before it has read everything: a write error is fine.
    let _ = s.write_all(&req).await;
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp).await;
    let text = String::from_utf8_lossy(&resp);
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    (status, serde_json::from_str(body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cursors_page_through_lists_while_rows_are_inserted() {
    cursors_page_through_lists(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cursors_page_through_lists_while_rows_are_inserted_on_postgresql() {
    cursors_page_through_lists(true).await;
}

async fn cursors_page_through_lists(postgres: bool) {
    let w = World::new(Opts {
        dispatch: false,
        postgres,
        ..Opts::default()
    })
    .await;
    w.import(items("p", 25)).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut round = 0;
    loop {
        let q = match &cursor {
            Some(c) => format!("workflow=wf&limit=10&cursor={c}"),
            None => "workflow=wf&limit=10".to_string(),
        };
        let (s, v) = w.call("get", "/v1/items", &[], &q, None).await;
        assert_eq!(s, 200, "{v}");
        seen.extend(ids(&v));
        // New items arrive between pages; they come after everything already listed.
        w.import(items(&format!("new{round}-"), 3)).await;
        round += 1;
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(round < 20, "paging does not end");
    }
    let originals: Vec<String> = (0..25).map(|i| format!("p{i:03}")).collect();
    assert_eq!(
        &seen[..25],
        &originals[..],
        "every original once, in order, before the new ones"
    );
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), seen.len(), "no item twice");
    // By name: its own cursor; a waiting-order cursor is refused there.
    let (_, v) = w
        .call("get", "/v1/items", &[], "order=name&limit=5", None)
        .await;
    let c = v["next_cursor"].as_str().unwrap().to_string();
    let (s, _) = w
        .call(
            "get",
            "/v1/items",
            &[],
            &format!("order=name&limit=5&cursor={c}"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = w
        .call(
            "get",
            "/v1/items",
            &[],
            &format!("limit=5&cursor={c}"),
            None,
        )
        .await;
    assert_eq!(s, 400);

    // Deliveries are newest first: rows made while paging never repeat or shift a page.
    w.set_stage(
        json!({"workflow_id": "wf", "stage_id": "hook", "from_stage_id": "dataset", "limit": 12}),
    )
    .await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for round in 0.. {
        let q = match &cursor {
            Some(c) => format!("stage=hook&limit=5&cursor={c}"),
            None => "stage=hook&limit=5".to_string(),
        };
        let (_, v) = w.call("get", "/v1/deliveries", &[], &q, None).await;
        seen.extend(ids(&v));
        let (s, _) = w
            .set_stage(json!({"workflow_id": "wf", "stage_id": "hook", "item_ids": [format!("new{round}-000")]}))
            .await;
        assert_eq!(s, 200);
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 12, "{seen:?}");
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_calling_back_while_its_delivery_is_recorded_never_deadlocks() {
    calling_back_while_recorded(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_calling_back_while_its_delivery_is_recorded_never_deadlocks_on_postgresql() {
    calling_back_while_recorded(true).await;
}

async fn calling_back_while_recorded(postgres: bool) {
    // The receiver's own `callback:STAGE` mode: answer 200, call /v1/items/stage at once.
    let w = World::new(Opts {
        script: "/hook=callback:parked,/events=ok,/events-down=400,*=ok",
        callback: true,
        postgres,
        ..Opts::default()
    })
    .await;
    w.import(items("cb", 40)).await;
    let (s, v) = w
        .set_stage(json!({"workflow_id": "wf", "stage_id": "hook", "from_stage_id": "dataset"}))
        .await;
    assert_eq!((s, v["moved"].as_i64()), (200, Some(40)), "{v}");
    // Whichever commits first (the record routing to `review`, or the callback), the
    // callback's move is the last word: every item ends in `parked`.
    for i in 0..40 {
        w.wait_item_in(&format!("cb{i:03}"), "parked").await;
    }
    w.wait("every delivery closed", async || {
        let (_, v) = w
            .call("get", "/v1/deliveries", &[], "stage=hook&limit=100", None)
            .await;
        v["items"].as_array().unwrap().iter().all(|d| {
            let s: DeliveryState = d["state"].as_str().unwrap().parse().unwrap();
            !s.is_open()
        })
    })
    .await;
    w.assert_no_store_errors();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_calling_back_before_it_answers_never_deadlocks() {
    // A validator that calls /v1/items/stage *inside* its handler, before answering: the
    // dispatcher holds the lease (in_flight) while the API moves the item and cancels the
    // delivery; the late answer is recorded and routes nothing.
    install_tls_provider();
    let api_slot: Arc<std::sync::OnceLock<String>> = Default::default();
    let slot = api_slot.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let slot = slot.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap();
                let id = v["item"]["source_info"]["item_id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let r = reqwest::Client::new()
                    .post(format!("{}/v1/items/stage", slot.get().unwrap()))
                    .bearer_auth(BOT_TOKEN)
                    .header("content-type", "application/json")
                    .body(
                        json!({"workflow_id": "wf", "stage_id": "parked", "item_ids": [id]})
                            .to_string(),
                    )
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200);
                "{\"ok\":true}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let w = World::with_hook(Opts::default(), "/unused").await;
    api_slot.set(w.api.clone()).unwrap();
    // Point the webhook stage at the validator (re-apply: future attempts use the new URL).
    let text = workflow_text(&w.receiver, "/unused").replace(&w.receiver.url("/unused"), &hook);
    let wf = hookops::workflow::parse("wf.toml", &text, &|_| None).unwrap();
    tokio::task::block_in_place(|| w.store.apply_workflow(&wf, &Vec::new(), "setup")).unwrap();
    w.import(items("pre", 30)).await;
    let (s, _) = w
        .set_stage(json!({"workflow_id": "wf", "stage_id": "hook", "from_stage_id": "dataset"}))
        .await;
    assert_eq!(s, 200);
    for i in 0..30 {
        w.wait_item_in(&format!("pre{i:03}"), "parked").await;
    }
    w.wait("every delivery recorded", async || {
        let (_, v) = w
            .call("get", "/v1/deliveries", &[], "stage=hook&limit=100", None)
            .await;
        let all = v["items"].as_array().unwrap();
        all.len() == 30
            && all
                .iter()
                .all(|d| d["state"] == "cancelled" && d["cancel_reason"] == "item_moved")
    })
    .await;
    // Each late answer was still recorded as an attempt of its (cancelled) delivery.
    let (_, v) = w
        .call("get", "/v1/deliveries", &[], "stage=hook&limit=1", None)
        .await;
    let id = v["items"][0]["id"].as_str().unwrap().to_string();
    w.wait("the late answer recorded", async || {
        let (_, d) = w.call("get", "/v1/deliveries/{id}", &[&id], "", None).await;
        d["attempt_log"][0]["status"] == 200
    })
    .await;
    w.assert_no_store_errors();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notifications_are_delivered_signed_and_never_notify_themselves() {
    let w = World::new(Opts::default()).await;
    w.import(items("n", 2)).await;
    // item.created for each import (history row "import").
    w.wait("two item.created", async || {
        w.notifications()
            .iter()
            .filter(|n| n["type"] == "item.created")
            .count()
            == 2
    })
    .await;
    let created = w
        .notifications()
        .into_iter()
        .find(|n| n["type"] == "item.created" && n["data"]["item_id"] == "n000")
        .unwrap();
    assert_eq!(created["data"]["stage"], "dataset");
    assert_eq!(created["data"]["workflow"], "wf");
    assert!(created["timestamp"].as_str().unwrap().ends_with('Z'));
    // A move and a failed delivery: item.stage_changed (twice: into `failing`, then `parked`)
    // and delivery.failed, sent to the first entry; the second entry answers 400.
    w.set_stage(json!({"workflow_id": "wf", "stage_id": "failing", "item_ids": ["n000"]}))
        .await;
    w.wait_item_in("n000", "parked").await;
    w.wait("delivery.failed and stage changes", async || {
        let n = w.notifications();
        n.iter().any(|n| n["type"] == "delivery.failed")
            && n.iter()
                .filter(|n| n["type"] == "item.stage_changed")
                .count()
                == 2
    })
    .await;
    let failed = w
        .notifications()
        .into_iter()
        .find(|n| n["type"] == "delivery.failed")
        .unwrap();
    assert_eq!(failed["data"]["stage"], "failing");
    assert_eq!(failed["data"]["item_name"], "n 0.jpg");
    assert_eq!(failed["data"]["last_status"], 500);
    let failed_delivery = failed["data"]["delivery_id"].as_str().unwrap().to_string();
    // The failing notification entry (400) ends failed and routes, pauses and notifies nothing.
    w.wait("the second entry's notification failed", async || {
        let (_, v) = w
            .call(
                "get",
                "/v1/deliveries",
                &[],
                "stage=notify:1&state=failed",
                None,
            )
            .await;
        !v["items"].as_array().unwrap().is_empty()
    })
    .await;
    let (_, v) = w
        .call("get", "/v1/deliveries", &[], "stage=notify:1", None)
        .await;
    let down = &v["items"][0];
    assert_eq!(
        (down["event"].as_str(), down["state"].as_str()),
        (Some("delivery.failed"), Some("failed"))
    );
    let (_, d) = w
        .call(
            "get",
            "/v1/deliveries/{id}",
            &[down["id"].as_str().unwrap()],
            "",
            None,
        )
        .await;
    assert_eq!(d["body"]["type"], "delivery.failed");
    assert_eq!(d["body"]["data"]["delivery_id"], failed_delivery.as_str());
    // Exactly one delivery.failed was ever made per entry: the failed notification made none.
    let (_, v) = w
        .call("get", "/v1/deliveries", &[], "event=delivery.failed", None)
        .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 2, "{v}");
    let reported: Vec<String> = w
        .notifications()
        .iter()
        .filter(|n| n["type"] == "delivery.failed")
        .map(|n| n["data"]["delivery_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reported, vec![failed_delivery.clone()]);
    // Every notification carries the webhook-id that is its delivery's id (receivers dedup).
    for r in w.receiver.received().iter().filter(|r| r.path == "/events") {
        let id = r.webhook_id.clone().unwrap();
        let (s, d) = w.call("get", "/v1/deliveries/{id}", &[&id], "", None).await;
        assert_eq!(s, 200);
        assert!(d["stage"].as_str().unwrap().starts_with("notify:"), "{d}");
    }
    // A paused stage holds webhook deliveries, never notifications (they have no stage).
    w.call(
        "post",
        "/v1/stages/{workflow}/{stage}/pause",
        &["wf", "hook"],
        "",
        None,
    )
    .await;
    w.wait("stage.paused", async || {
        w.notifications()
            .iter()
            .any(|n| n["type"] == "stage.paused" && n["data"]["operator"] == "alice")
    })
    .await;
    let before = w.notifications().len();
    w.set_stage(json!({"workflow_id": "wf", "stage_id": "hook", "item_ids": ["n001"]}))
        .await;
    w.wait("the move's notification despite the pause", async || {
        w.notifications().len() > before
    })
    .await;
    assert_eq!(w.item("n001").await["state"], "in_delivery");
    assert!(
        !w.receiver.received().iter().any(|r| r.path == "/hook"),
        "paused: nothing sent"
    );
    w.assert_no_store_errors();
}

// ---------------------------------------------------------------------------------------------
// Issue 18: one filter and the same actions in every front end
// ---------------------------------------------------------------------------------------------

/// Runs the real binary on this world's database.
fn hookops_cli(w: &World, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_hookops"))
        .arg("--db")
        .arg(w.dir.path().join("api.db"))
        .args(args)
        .env("USER", "carol")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

impl World {
    /// Makes `items` fail in the `failing` stage with the receiver answering `behaviour`.
    async fn fail_with(&self, behaviour: &str, items_: &[&str]) {
        self.receiver
            .set_script(format!("/fail={behaviour},*=ok").parse::<Script>().unwrap());
        let list: Vec<Value> = items_.iter().map(|i| json!({"id": i, "name": i})).collect();
        self.import(Value::Array(list)).await;
        let (s, v) = self
            .set_stage(json!({"workflow_id": "wf", "stage_id": "failing", "item_ids": items_}))
            .await;
        assert_eq!(s, 200, "{v}");
        for i in items_ {
            self.wait_item_in(i, "parked").await;
        }
    }

    async fn job_until_ended(&self, id: &str) -> Value {
        let mut last = Value::Null;
        self.wait(&format!("job {id} to end"), async || {
            let (s, v) = self.call("get", "/v1/jobs/{id}", &[id], "", None).await;
            assert_eq!(s, 200, "{v}");
            last = v;
            last["state"] != "running"
        })
        .await;
        last
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The same filter typed into the CLI, the API and the console selects the same deliveries
/// (the same ids, not only as many); then the recovery: the API re-fires exactly the 5xx and
/// redirect failures as a job polled to completion, the CLI the 404 one, and the audit log
/// names each with its ids and front end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_filter_selects_the_same_ids_in_every_front_end_and_bulk_refire_is_a_job() {
    let w = World::new(Opts::default()).await;
    w.fail_with("503", &["x1", "x2"]).await;
    w.fail_with("500", &["y1"]).await;
    w.fail_with("404", &["z1"]).await;
    w.fail_with("redirect", &["r1"]).await;
    let delivery = |i: &str| {
        w.store
            .item_detail(&ItemId::new(i))
            .unwrap()
            .deliveries
            .into_iter()
            .find(|d| d.stage.as_str() == "failing")
            .unwrap()
    };
    let y1_at = delivery("y1")
        .created_at
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let of = |items_: &[&str]| sorted(items_.iter().map(|i| delivery(i).id.to_string()).collect());

    // (CLI flags, API query, console words, the items it must select)
    let scope = (
        "--workflow wf --stage failing --state failed",
        "workflow=wf&stage=failing&state=failed",
        "failed stage=failing",
    );
    let table: Vec<(String, String, String, Vec<&str>)> = vec![
        (
            "--status 5xx".into(),
            "status=5xx".into(),
            "5xx".into(),
            vec!["x1", "x2", "y1"],
        ),
        (
            "--status 503".into(),
            "status=503".into(),
            "503".into(),
            vec!["x1", "x2"],
        ),
        (
            "--status 5xx,404".into(),
            "status=5xx&status=404".into(),
            "5xx 404".into(),
            vec!["x1", "x2", "y1", "z1"],
        ),
        (
            "--error-kind redirect".into(),
            "error_kind=redirect".into(),
            "redirect".into(),
            vec!["r1"],
        ),
        (
            "--status 503 --error-kind redirect".into(),
            "status=503&error_kind=redirect".into(),
            "503 redirect".into(),
            vec!["x1", "x2", "r1"],
        ),
        (
            format!("--since {y1_at}"),
            format!("since={y1_at}"),
            format!("since={y1_at}"),
            vec!["y1", "z1", "r1"],
        ),
        (
            format!("--until {y1_at}"),
            format!("until={y1_at}"),
            format!("until={y1_at}"),
            vec!["x1", "x2"],
        ),
    ];
    for (flags, query, words, want) in &table {
        let want = of(want);
        let mut args: Vec<&str> = vec!["deliveries", "--json", "--limit", "0"];
        args.extend(scope.0.split(' '));
        args.extend(flags.split(' '));
        let out = hookops_cli(&w, &args);
        assert!(
            out.status.success(),
            "{flags}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
        let cli = sorted(
            cli.as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_str().unwrap().to_string())
                .collect(),
        );
        let q = format!("{}&{query}&limit=1000", scope.1);
        let (s, v) = w.call("get", "/v1/deliveries", &[], &q, None).await;
        assert_eq!(s, 200, "{query}: {v}");
        let api = sorted(ids(&v));
        let words = format!("{} {words}", scope.2);
        let f = hookops::actions::FilterParams::from_words(words.split(' '))
            .unwrap()
            .to_filter(chrono::Utc::now())
            .unwrap();
        let f = hookops::store::DeliveryFilter {
            workflow: Some(hookops::model::WorkflowId::new("wf")),
            ..f
        };
        let console = sorted(
            w.store
                .list_deliveries(&f, None, 1000)
                .unwrap()
                .into_iter()
                .map(|(d, _)| d.id.to_string())
                .collect(),
        );
        assert_eq!(cli, want, "CLI {flags}");
        assert_eq!(api, want, "API {query}");
        assert_eq!(console, want, "console :dl {words}");
    }

    // The receiver is back: the API re-fires the 5xx and redirect failures as a job.
    w.receiver
        .set_script("/fail=ok,*=ok".parse::<Script>().unwrap());
    let body = json!({"filter": {"workflow": "wf", "stage": "failing", "status": "5xx", "error_kind": "redirect"}});
    let (s, dry) = w
        .call(
            "post",
            "/v1/deliveries/refire",
            &[],
            "",
            Some(json!({"dry_run": true, "filter": body["filter"]})),
        )
        .await;
    assert_eq!((s, dry["state"].as_str()), (200, Some("planned")), "{dry}");
    let mut planned: Vec<String> = dry["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_string())
        .collect();
    planned.sort();
    assert_eq!(
        planned,
        of(&["x1", "x2", "y1", "r1"]),
        "a dry run lists what it would touch"
    );
    let (s, job) = w
        .call("post", "/v1/deliveries/refire", &[], "", Some(body))
        .await;
    assert_eq!((s, job["matched"].as_u64()), (202, Some(4)), "{job}");
    let done = w.job_until_ended(job["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(
        (done["acted"].as_u64(), done["refused"].as_u64()),
        (Some(4), Some(0))
    );
    for i in ["x1", "x2", "y1", "r1"] {
        w.wait_item_in(i, "review").await;
    }
    assert_eq!(
        delivery("z1").state,
        DeliveryState::Failed,
        "the 404 is left alone"
    );
    let audit = w
        .store
        .audit_entry(done["audit_id"].as_i64().unwrap())
        .unwrap();
    assert_eq!(
        (
            audit.action.as_str(),
            audit.operator.as_str(),
            audit.via.as_deref(),
            audit.outcome.as_deref()
        ),
        ("refire", "alice", Some("api:alice"), Some("done"))
    );
    assert_eq!(sorted(audit.ids.clone().unwrap()), planned);
    assert!(audit.filter.unwrap().contains("--status 5xx"));

    // The CLI re-fires the 404 one by the same filter flags, counted first (--dry-run).
    let z1 = delivery("z1").id.to_string();
    let out = hookops_cli(
        &w,
        &[
            "refire",
            "--failed",
            "--workflow",
            "wf",
            "--stage",
            "failing",
            "--status",
            "404",
            "--dry-run",
        ],
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("would re-fire 1 failed delivery(ies) matching") && text.contains(&z1),
        "{text}"
    );
    let out = hookops_cli(
        &w,
        &[
            "refire",
            "--failed",
            "--workflow",
            "wf",
            "--stage",
            "failing",
            "--status",
            "404",
            "--yes",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.wait_item_in("z1", "review").await;

    // Who re-fired z1, when and from where.
    let out = hookops_cli(
        &w,
        &["audit", "--item", "z1", "--action", "refire", "--json"],
    );
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0]["operator"].as_str(), rows[0]["via"].as_str()),
        (Some("carol"), Some("cli"))
    );
    let out = hookops_cli(&w, &["audit", "--item", "x1", "--json"]);
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["via"], "api:alice", "{rows}");
    let out = hookops_cli(&w, &["audit", "show", &rows[0]["id"].to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&delivery_of_first_failing(&w, "x1")),
        "{text}"
    );
    w.assert_no_store_errors();
}

/// The first delivery an item had in the `failing` stage (the one a re-fire acted on).
fn delivery_of_first_failing(w: &World, item: &str) -> String {
    w.store
        .item_detail(&ItemId::new(item))
        .unwrap()
        .deliveries
        .into_iter()
        .rfind(|d| d.stage.as_str() == "failing")
        .unwrap()
        .id
        .to_string()
}

/// A bulk job stopped midway keeps what it did, whole: every delivery it cancelled routed
/// its item, none other changed, and the count of cancelled ones is the job's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bulk_job_stopped_midway_keeps_what_it_did_and_nothing_is_half_done() {
    let w = World::new(Opts::default()).await;
    let (s, _) = w
        .call(
            "post",
            "/v1/stages/{workflow}/{stage}/pause",
            &["wf", "failing"],
            "",
            None,
        )
        .await;
    assert_eq!(s, 200);
    let n = 6000;
    w.import(items("c", n)).await;
    let (s, v) = w
        .set_stage(json!({"workflow_id": "wf", "stage_id": "failing", "from_stage_id": "dataset"}))
        .await;
    assert_eq!((s, v["moved"].as_u64()), (200, Some(n as u64)), "{v}");
    let body = json!({"filter": {"workflow": "wf", "stage": "failing", "state": "pending"}});
    let (s, job) = w
        .call("post", "/v1/deliveries/cancel", &[], "", Some(body))
        .await;
    assert_eq!((s, job["matched"].as_u64()), (202, Some(n as u64)), "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let (s, _) = w.call("delete", "/v1/jobs/{id}", &[&id], "", None).await;
    assert_eq!(s, 200);
    let ended = w.job_until_ended(&id).await;
    assert_eq!(ended["state"], "stopped", "{ended}");
    let processed = ended["processed"].as_u64().unwrap() as usize;
    assert!(processed < n, "stopped before the end: {ended}");
    assert_eq!(
        processed % hookops::actions::CHUNK,
        0,
        "whole chunks only: {ended}"
    );
    assert_eq!(ended["acted"].as_u64().unwrap() as usize, processed);
    let count = |state: &str| {
        w.store
            .count_deliveries(&hookops::store::DeliveryFilter {
                workflow: Some(hookops::model::WorkflowId::new("wf")),
                stage: Some(hookops::model::StageId::new("failing")),
                state: Some(state.parse().unwrap()),
                ..Default::default()
            })
            .unwrap() as usize
    };
    assert_eq!(count("cancelled"), processed);
    assert_eq!(count("pending"), n - processed);
    let parked = w
        .store
        .list_items(
            &hookops::store::ItemFilter {
                workflow: Some(hookops::model::WorkflowId::new("wf")),
                stage: Some(hookops::model::StageId::new("parked")),
                ..Default::default()
            },
            None,
            n + 1,
        )
        .unwrap()
        .len();
    assert_eq!(
        parked, processed,
        "every cancelled delivery routed its item, no other"
    );
    let audit = w
        .store
        .audit_entry(ended["audit_id"].as_i64().unwrap())
        .unwrap();
    assert_eq!(audit.outcome.as_deref(), Some("stopped"));
    assert_eq!(
        (audit.count as usize, audit.matched),
        (processed, Some(n as i64))
    );
    if processed > 1000 {
        assert_eq!(
            audit.ids, None,
            "beyond 1,000 ids: the filter and the count"
        );
        assert!(audit.filter.is_some());
    }
}

/// Refusals are typed, and each kind has its documented status.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bulk_refusals_map_to_their_documented_statuses() {
    let w = World::new(Opts {
        dispatch: false,
        ..Opts::default()
    })
    .await;
    w.import(items("p", 1)).await;
    let (s, _) = w
        .set_stage(json!({"workflow_id": "wf", "stage_id": "failing", "item_ids": ["p000"]}))
        .await;
    assert_eq!(s, 200);
    let pending = w
        .store
        .item_detail(&ItemId::new("p000"))
        .unwrap()
        .deliveries[0]
        .id
        .to_string();
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/v1/deliveries/refire",
            json!({"filter": {"state": "pending"}}),
            400,
            "bad_request",
        ),
        (
            "/v1/deliveries/refire",
            json!({"filter": {"stage": "failing"}}),
            400,
            "bad_request",
        ),
        (
            "/v1/deliveries/refire",
            json!({"filter": {"status": "5x"}}),
            400,
            "bad_request",
        ),
        (
            "/v1/deliveries/refire",
            json!({"filter": {"since": "soon"}}),
            400,
            "bad_request",
        ),
        (
            "/v1/deliveries/refire",
            json!({"filter": {}, "ids": ["msg_x"]}),
            400,
            "bad_request",
        ),
        (
            "/v1/deliveries/refire",
            json!({"filter": {"workflow": "wf"}, "limit": 0}),
            400,
            "bad_request",
        ),
        (
            "/v1/deliveries/cancel",
            json!({"filter": {"state": "failed", "workflow": "wf"}}),
            400,
            "bad_request",
        ),
        (
            "/v1/deliveries/refire",
            json!({"filter": {"workflow": "nope"}}),
            404,
            "not_found",
        ),
        (
            "/v1/deliveries/refire",
            json!({"filter": {"workflow": "wf", "stage": "nope"}}),
            404,
            "not_found",
        ),
    ];
    for (path, body, status, code) in cases {
        let (s, v) = w.call("post", path, &[], "", Some(body.clone())).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{path} {body}: {v}"
        );
    }
    let (_, v) = w
        .call(
            "post",
            "/v1/deliveries/refire",
            &[],
            "",
            Some(json!({"filter": {"status": "5x"}})),
        )
        .await;
    assert_eq!(v["error"]["details"][0]["path"], "filter.status", "{v}");
    // Per delivery: unknown 404, still open 409 (the single-id endpoint answers the kind).
    let (s, v) = w
        .call(
            "post",
            "/v1/deliveries/{id}/refire",
            &["msg_nope"],
            "",
            None,
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    let (s, v) = w
        .call("post", "/v1/deliveries/{id}/refire", &[&pending], "", None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("stale")),
        "{v}"
    );
    // In a job, each refusal keeps its kind.
    let (s, job) = w
        .call(
            "post",
            "/v1/deliveries/refire",
            &[],
            "",
            Some(json!({"ids": [pending, "msg_nope"]})),
        )
        .await;
    assert_eq!(s, 202, "{job}");
    let ended = w.job_until_ended(job["id"].as_str().unwrap()).await;
    let kinds: Vec<&str> = ended["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["stale", "not_found"], "{ended}");
    let audit = w
        .store
        .audit_entry(ended["audit_id"].as_i64().unwrap())
        .unwrap();
    assert_eq!(audit.outcome.as_deref(), Some("refused"));
    let (s, v) = w
        .call("get", "/v1/jobs/{id}", &["job_nope"], "", None)
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, v) = w
        .call("get", "/v1/deliveries", &[], "status=600", None)
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = w
        .call("get", "/v1/deliveries", &[], "colour=red", None)
        .await;
    assert_eq!(s, 400, "{v}");
}

/// Failures grouped by cause over the API: exact groups and counts, each with the filter
/// that selects it, which a bulk re-fire takes as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_are_grouped_by_cause_and_a_group_is_a_filter() {
    let w = World::new(Opts::default()).await;
    w.fail_with("503", &["g1", "g2", "g3"]).await;
    w.fail_with("404", &["h1"]).await;
    let (s, v) = w
        .call(
            "get",
            "/v1/failures",
            &[],
            "workflow=wf&stage=failing",
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let groups = v["items"].as_array().unwrap();
    let seen: Vec<(u64, u64, u64)> = groups
        .iter()
        .map(|g| {
            (
                g["status"].as_u64().unwrap(),
                g["count"].as_u64().unwrap(),
                g["items"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [(503, 3, 3), (404, 1, 1)], "{v}");
    w.receiver
        .set_script("/fail=ok,*=ok".parse::<Script>().unwrap());
    let (s, job) = w
        .call(
            "post",
            "/v1/deliveries/refire",
            &[],
            "",
            Some(json!({"filter": groups[0]["filter"]})),
        )
        .await;
    assert_eq!((s, job["matched"].as_u64()), (202, Some(3)), "{job}");
    let ended = w.job_until_ended(job["id"].as_str().unwrap()).await;
    assert_eq!(ended["acted"], 3, "{ended}");
    for i in ["g1", "g2", "g3"] {
        w.wait_item_in(i, "review").await;
    }
    assert_eq!(
        w.store.item(&ItemId::new("h1")).unwrap().stage.as_str(),
        "parked"
    );

    // The same id forms everywhere: `--item ID` re-fires the item's latest stage delivery.
    let out = hookops_cli(
        &w,
        &[
            "refire",
            "--item",
            "h1",
            "--workflow",
            "wf",
            "--stage",
            "failing",
            "--yes",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.wait_item_in("h1", "review").await;
    let out = hookops_cli(&w, &["refire", "--item", "nobody", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    let out = hookops_cli(&w, &["refire", "--item", "h1", "--status", "5xx"]);
    assert_eq!(out.status.code(), Some(2), "filters need --failed");
}

/// Set Stage with `dry_run` lists what would move (oldest first, at most `limit`) and moves
/// nothing; the real move's audit row names the token and every item moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn set_stage_dry_run_lists_what_would_move_and_the_move_is_audited_with_its_ids() {
    let w = World::new(Opts::default()).await;
    w.import(
        json!([{"id": "d1", "name": "d1"}, {"id": "d2", "name": "d2"}, {"id": "d3", "name": "d3"}]),
    )
    .await;
    let body = |dry_run: bool| json!({"workflow_id": "wf", "stage_id": "hold", "from_stage_id": "dataset", "limit": 2, "dry_run": dry_run});
    let (s, v) = w.set_stage(body(true)).await;
    assert_eq!(
        (s, &v),
        (200, &json!({"matched": 2, "ids": ["d1", "d2"]})),
        "{v}"
    );
    assert_eq!(
        w.store.item(&ItemId::new("d1")).unwrap().stage.as_str(),
        "dataset"
    );
    let (s, v) = w.set_stage(body(false)).await;
    assert_eq!((s, v["moved"].as_i64()), (200, Some(2)), "{v}");
    let row = w.store.audit_log(1).unwrap().remove(0);
    let row = w.store.audit_entry(row.id).unwrap();
    assert_eq!(row.action, "assign");
    assert!(
        row.via.as_deref().is_some_and(|v| v.starts_with("api:")),
        "{row:?}"
    );
    assert_eq!(row.ids, Some(vec!["d1".to_string(), "d2".to_string()]));
    assert_eq!(
        row.filter.as_deref(),
        Some("--from-stage dataset --limit 2")
    );
}

/// `--item ID [--workflow W --stage S]` names the item's latest stage delivery for cancel
/// and test as it does for re-fire, in the CLI and the API alike; a test with an item sends
/// that item's document and moves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_and_test_take_an_items_latest_delivery() {
    let w = World::new(Opts::default()).await;
    let (s, v) = w
        .call(
            "post",
            "/v1/stages/{workflow}/{stage}/pause",
            &["wf", "failing"],
            "",
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    w.import(json!([{"id": "c1", "name": "c1"}, {"id": "c2", "name": "c2"}]))
        .await;
    let (s, v) = w
        .set_stage(json!({"workflow_id": "wf", "stage_id": "failing", "item_ids": ["c1", "c2"]}))
        .await;
    assert_eq!(s, 200, "{v}");
    let latest = |item: &str| {
        let f = DeliveryFilter {
            item: Some(ItemId::new(item)),
            event: Some(EventType::StageWebhook),
            ..Default::default()
        };
        w.store.list_deliveries(&f, None, 1).unwrap()[0]
            .0
            .id
            .to_string()
    };
    let open = latest("c1");

    // The CLI and the API name the same delivery.
    let out = hookops_cli(
        &w,
        &["delivery", "cancel", "--item", "c1", "--dry-run", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["ids"], json!([open]), "{plan}");
    let (s, job) = w
        .call(
            "post",
            "/v1/deliveries/cancel",
            &[],
            "",
            Some(json!({"item": {"id": "c1", "workflow": "wf", "stage": "failing"}, "dry_run": true})),
        )
        .await;
    assert_eq!((s, &job["ids"]), (200, &json!([open])), "{job}");
    let (s, v) = w
        .call(
            "post",
            "/v1/deliveries/cancel",
            &[],
            "",
            Some(json!({"item": {"id": "c1", "stage": "failing"}})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["details"][0]["path"].as_str()),
        (400, Some("item.stage")),
        "{v}"
    );
    let (s, v) = w
        .call(
            "post",
            "/v1/deliveries/cancel",
            &[],
            "",
            Some(json!({"item": {"id": "c1"}, "ids": [open]})),
        )
        .await;
    assert_eq!(s, 400, "{v}");

    // Cancel by item: no confirmation for one delivery; the item routes along on_failure.
    let out = hookops_cli(
        &w,
        &[
            "delivery",
            "cancel",
            "--item",
            "c1",
            "--workflow",
            "wf",
            "--stage",
            "failing",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.wait_item_in("c1", "parked").await;
    assert_eq!(
        w.store
            .delivery_detail(&DeliveryId::new(open.as_str()))
            .unwrap()
            .summary
            .state,
        DeliveryState::Cancelled
    );
    // Its latest delivery is no longer open: refused, and the other item's stays open.
    let out = hookops_cli(&w, &["delivery", "cancel", "--item", "c1"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        w.store
            .delivery_detail(&DeliveryId::new(latest("c2")))
            .unwrap()
            .summary
            .state,
        DeliveryState::Pending
    );
    let out = hookops_cli(
        &w,
        &["delivery", "cancel", "--item", "c2", "--stage", "failing"],
    );
    assert_eq!(out.status.code(), Some(2), "a stage needs its workflow");
    let out = hookops_cli(&w, &["delivery", "cancel", "--item", "c2", "--limit", "1"]);
    assert_eq!(out.status.code(), Some(2));

    // Test by item: the stage of its latest delivery, with its document; nothing moves.
    let sent_to = |path: &str| {
        w.receiver
            .received()
            .into_iter()
            .filter(|r| r.path == path)
            .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap())
            .filter(|b| b["hookops"]["event"] == "webhook.test")
            .map(|b| {
                b["item"]["source_info"]["item_id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    w.receiver.set_script("*=ok".parse::<Script>().unwrap());
    let out = hookops_cli(&w, &["test-webhook", "--item", "c1", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ev: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (ev["stage"].as_str(), ev["item_id"].as_str()),
        (Some("failing"), Some("c1")),
        "{ev}"
    );
    let out = hookops_cli(&w, &["test-webhook", &latest("c2"), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sent_to("/fail"), ["c1", "c2"]);
    let (s, v) = w
        .call(
            "post",
            "/v1/deliveries/test",
            &[],
            "",
            Some(json!({"item": {"id": "c2", "workflow": "wf", "stage": "failing"}})),
        )
        .await;
    assert_eq!((s, v["event"].as_str()), (200, Some("webhook.test")), "{v}");
    let (s, v) = w
        .call(
            "post",
            "/v1/stages/{workflow}/{stage}/test",
            &["wf", "hook"],
            "",
            Some(json!({"item": "c1"})),
        )
        .await;
    assert_eq!((s, v["stage"].as_str()), (200, Some("hook")), "{v}");
    assert_eq!(sent_to("/fail"), ["c1", "c2", "c2"]);
    assert_eq!(sent_to("/hook"), ["c1"]);
    let (s, _) = w
        .call(
            "post",
            "/v1/stages/{workflow}/{stage}/test",
            &["wf", "hook"],
            "",
            Some(json!({"item": "nobody"})),
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = w
        .call(
            "post",
            "/v1/deliveries/test",
            &[],
            "",
            Some(json!({"id": "msg_nope"})),
        )
        .await;
    assert_eq!(s, 404);
    let out = hookops_cli(&w, &["test-webhook", "--item", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
    let out = hookops_cli(&w, &["test-webhook"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        w.store.item(&ItemId::new("c1")).unwrap().stage.as_str(),
        "parked"
    );
    assert_eq!(
        w.store.item(&ItemId::new("c2")).unwrap().stage.as_str(),
        "failing"
    );

    // Audit: who tested c1, from where.
    let out = hookops_cli(&w, &["audit", "--item", "c1", "--action", "test", "--json"]);
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let via: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["via"].as_str().unwrap())
        .collect();
    assert_eq!(via.len(), 2, "{rows}");
    assert!(
        via.contains(&"cli") && via.iter().any(|v| v.starts_with("api:")),
        "{rows}"
    );
}

/// `GET /v1/attempts?follow=true` streams every new attempt of a matching delivery as a JSON
/// line, once each, in the log's order, and nothing its filter leaves out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_attempt_stream_sends_every_new_attempt_once() {
    let w = World::new(Opts::default()).await;
    let (s, v) = w
        .call("get", "/v1/attempts", &[], "workflow=wf", None)
        .await;
    assert_eq!(
        (s, v["error"]["details"][0]["path"].as_str()),
        (400, Some("follow")),
        "{v}"
    );
    let mut resp = w
        .client
        .get(format!(
            "{}/v1/attempts?follow=true&workflow=wf&stage=hook",
            w.api
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    w.import(items("s", 30)).await;
    let (s, _) = w
        .set_stage(json!({"workflow_id": "wf", "stage_id": "hook", "from_stage_id": "dataset"}))
        .await;
    assert_eq!(s, 200);
    w.fail_with("500", &["elsewhere"]).await;
    for i in 0..30 {
        w.wait_item_in(&format!("s{i:03}"), "review").await;
    }
    // A last attempt of the stage: once it is read, everything before it was.
    let (s, marker) = w
        .call(
            "post",
            "/v1/stages/{workflow}/{stage}/test",
            &["wf", "hook"],
            "",
            None,
        )
        .await;
    assert_eq!(s, 200, "{marker}");
    let marker = marker["delivery_id"].as_str().unwrap().to_string();
    let mut lines: Vec<Value> = Vec::new();
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !lines.iter().any(|l| l["delivery_id"] == marker.as_str()) {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("the marker line within the deadline")
            .unwrap()
            .expect("the stream stays open");
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            lines.push(serde_json::from_slice(&line).unwrap());
        }
    }
    drop(resp);
    let got: Vec<String> = lines
        .iter()
        .map(|l| l["delivery_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got.last(), Some(&marker));
    let mut want: Vec<String> = (0..30)
        .map(|i| {
            w.store
                .item_detail(&ItemId::new(format!("s{i:03}")))
                .unwrap()
                .deliveries
                .into_iter()
                .find(|d| d.stage.as_str() == "hook")
                .unwrap()
                .id
                .to_string()
        })
        .collect();
    want.push(marker.clone());
    assert_eq!(
        sorted(got.clone()),
        sorted(want),
        "every attempt of the stage, once"
    );
    assert!(
        lines.iter().all(|l| l["stage"] == "hook"),
        "nothing of another stage"
    );
}
