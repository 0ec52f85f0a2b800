use std::path::Path;
use std::time::Duration;

use super::*;
use crate::workflow::{Condition, StageSpec};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET2: &str = "whsec_dGhpcyBpcyBhIHNlY29uZCBzaWduaW5nIGtleQ==";

fn env(name: &str) -> Option<String> {
    match name {
        "VALIDATOR_TOKEN" => Some("tok-0123456789abcdef".into()),
        "VALIDATOR_SECRET" => Some(SECRET.into()),
        "OLD_SECRET" => Some(SECRET2.into()),
        "HOOK_BASE" => Some("http://127.0.0.1:9000".into()),
        "EMPTY" => Some(String::new()),
        "TEAM_HEADER" => Some("acme-from-env".into()),
        _ => None,
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

/// Every diagnostic as "line:column: message".
fn errors(text: &str) -> Vec<String> {
    match parse("wf.toml", text, &env) {
        Ok(_) => Vec::new(),
        Err(diags) => diags
            .iter()
            .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
            .collect(),
    }
}

#[track_caller]
fn assert_error(text: &str, place: &str, needle: &str) {
    let errs = errors(text);
    assert!(
        errs.iter()
            .any(|e| e.starts_with(&format!("{place}: ")) && e.contains(needle)),
        "expected `{place}: …{needle}…` among:\n{}",
        errs.join("\n")
    );
}

#[track_caller]
fn ok(text: &str) -> Workflow {
    match parse("wf.toml", text, &env) {
        Ok(wf) => wf,
        Err(d) => panic!("unexpected errors:\n{}", render(&d)),
    }
}

/// A small valid workflow; tests append stages or swap lines to break it.
const BASE: &str = r#"id = "wf"
name = "Test"
team = "acme"

[[stage]]
id = "dataset"
kind = "dataset"
next = "annotate"

[[stage]]
id = "annotate"
kind = "annotate"
next = "done"

[[stage]]
id = "done"
kind = "complete"
"#;

fn with(extra: &str) -> String {
    format!("{BASE}{extra}")
}

const ISSUE_EXAMPLE: &str = r#"id = "defects"            # slug
name = "Defect labelling"
team = "acme"             # goes into the Darwin JSON team field
workview_url_base = "https://darwin.example.com/workview/"

[[stage]]
id = "dataset"
kind = "dataset"
next = "validate"

[[stage]]
id = "validate"
name = "Validate"
kind = "webhook"
url = "http://127.0.0.1:9000/validate?source=hookops"
authorization = "Bearer ${VALIDATOR_TOKEN}"
secret = "${VALIDATOR_SECRET}"       # whsec_...
include_annotations = true
headers = { "x-team" = "acme", "X-Abc" = "${TEAM_HEADER}" }
max_attempts = 6                     # first try + 5 retries
timeout = "10s"
retry_schedule = ["1s", "5s", "30s", "2m", "10m"]
on_success = "annotate"
on_failure = "webhook-failed"

[[stage]]
id = "annotate"
kind = "annotate"
next = "route"

[[stage]]
id = "route"
kind = "logic"
rules = [
  { when = { tag = "urgent" }, to = "review" },
  { when = { property = "camera", is_any_of = ["a", "b", 3, true] }, to = "sample" },
]
else = "sample"

[[stage]]
id = "sample"
kind = "sampling"
split = [{ to = "review", percent = 20 }, { to = "export", percent = 80 }]

[[stage]]
id = "review"
kind = "review"
on_approve = "export"
on_reject = "annotate"

[[stage]]
id = "export"
kind = "webhook"
url = "${HOOK_BASE:-http://localhost:1}/export"
payload = "envelope"
event_type = "task_completed_event"
secret = ["${VALIDATOR_SECRET}", "${OLD_SECRET}"]
timeout = "250ms"
retry_schedule = ["2s"]
max_attempts = 1
pause_after_failures = 0
max_in_flight = 4
include_annotations = false
on_success = "complete"

[[stage]]
id = "webhook-failed"
name = "Webhook failed (parking)"
kind = "annotate"
next = "validate"

[[stage]]
id = "complete"
kind = "complete"

[[stage]]
id = "trash"
kind = "discard"
"#;

#[test]
fn the_issue_example_loads_with_every_field() {
    let wf = ok(ISSUE_EXAMPLE);
    assert_eq!(wf.id.as_str(), "defects");
    assert_eq!(wf.name, "Defect labelling");
    assert_eq!(wf.team, "acme");
    assert_eq!(
        wf.workview_url_base.as_deref(),
        Some("https://darwin.example.com/workview")
    );
    let ids: Vec<&str> = wf.stages.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "dataset",
            "validate",
            "annotate",
            "route",
            "sample",
            "review",
            "export",
            "webhook-failed",
            "complete",
            "trash"
        ]
    );
    assert_eq!(wf.dataset_stage().map(|s| s.id.as_str()), Some("dataset"));

    let v = wf
        .stage(&"validate".into())
        .and_then(Stage::webhook)
        .unwrap();
    assert_eq!(v.url, "http://127.0.0.1:9000/validate?source=hookops");
    assert_eq!(
        v.authorization.as_deref(),
        Some("Bearer tok-0123456789abcdef")
    );
    // File order, not key order.
    assert_eq!(
        v.headers,
        vec![
            ("x-team".to_string(), "acme".to_string()),
            ("X-Abc".to_string(), "acme-from-env".to_string())
        ]
    );
    assert_eq!(v.secrets, vec![SECRET.to_string()]);
    assert!(v.include_annotations);
    assert_eq!(v.payload, PayloadFormat::Darwin);
    assert_eq!(v.event_type, "stage.webhook");
    assert_eq!(v.max_attempts, 6);
    assert_eq!(v.timeout, Duration::from_secs(10));
    assert_eq!(v.retry_schedule, WebhookConfig::default_retry_schedule());
    assert_eq!(v.on_success.as_str(), "annotate");
    assert_eq!(
        v.on_failure.as_ref().map(StageId::as_str),
        Some("webhook-failed")
    );
    assert_eq!(wf.stages[1].name, "Validate");

    let e = wf.stage(&"export".into()).and_then(Stage::webhook).unwrap();
    assert_eq!(e.url, "http://127.0.0.1:9000/export");
    assert_eq!(e.payload, PayloadFormat::Envelope);
    assert_eq!(e.event_type, "task_completed_event");
    assert_eq!(e.secrets, vec![SECRET.to_string(), SECRET2.to_string()]);
    assert_eq!(e.timeout, Duration::from_millis(250));
    assert_eq!(e.retry_schedule, vec![Duration::from_secs(2)]);
    assert_eq!((e.max_attempts, e.pause_after_failures), (1, 0));
    assert_eq!(e.max_in_flight, Some(4));
    assert!(!e.include_annotations);
    assert_eq!(e.on_failure, None);

    let StageSpec::Logic { rules, else_to } = &wf.stages[3].spec else {
        panic!("route is a logic stage");
    };
    assert_eq!(rules[0].when, Condition::Tag("urgent".into()));
    assert_eq!(
        rules[1].when,
        Condition::Property {
            name: "camera".into(),
            is_any_of: vec!["a".into(), "b".into(), "3".into(), "true".into()]
        }
    );
    assert_eq!(else_to.as_str(), "sample");
    let StageSpec::Sampling { split } = &wf.stages[4].spec else {
        panic!("sample is a sampling stage");
    };
    assert_eq!(
        split.iter().map(|s| s.percent).collect::<Vec<_>>(),
        [20, 80]
    );
    assert_eq!(wf.stages[7].name, "Webhook failed (parking)");
    assert_eq!(wf.stages[8].name, "complete", "name defaults to the id");

    // Every expansion, every authorization, every secret; deduplicated.
    assert_eq!(
        wf.secrets,
        vec![
            "tok-0123456789abcdef".to_string(),
            "Bearer tok-0123456789abcdef".to_string(),
            "acme-from-env".to_string(),
            SECRET.to_string(),
            "http://127.0.0.1:9000".to_string(),
            SECRET2.to_string(),
        ]
    );
}

#[test]
fn webhook_defaults_are_filled_in() {
    let wf = ok(&with(
        "\n[[stage]]\nid = \"hook\"\nkind = \"webhook\"\nurl = \"https://example.com/h\"\n\
         on_success = \"done\"\n",
    ));
    let w = wf.stages[3].webhook().unwrap();
    assert_eq!(w.url, "https://example.com/h");
    assert_eq!(w.authorization, None);
    assert!(w.headers.is_empty() && w.secrets.is_empty());
    assert!(w.include_annotations);
    assert_eq!(w.payload, PayloadFormat::Darwin);
    assert_eq!(w.event_type, "stage.webhook");
    assert_eq!(w.max_attempts, 6);
    assert_eq!(w.timeout, Duration::from_secs(10));
    assert_eq!(
        w.retry_schedule,
        [1, 5, 30, 120, 600].map(Duration::from_secs).to_vec()
    );
    assert_eq!(w.pause_after_failures, 50);
    assert_eq!(w.max_in_flight, None);
    assert_eq!(w.on_failure, None);
    assert!(wf.secrets.is_empty());
    assert_eq!(wf.workview_url_base, None);
}

#[test]
fn syntax_errors_have_positions() {
    assert_error("id = \"wf\"\nname = \n", "2:8", "invalid TOML");
    assert_error("id = \"wf\"\nid = \"x\"\n", "2:1", "duplicate key `id`");
    // Several syntax errors are all reported, in order.
    let errs = errors("a = [1,\nb = 'x\nc = }\n");
    assert!(errs.len() >= 2, "{errs:?}");
    let places: Vec<(usize, usize)> = parse("f", "a = [1,\nb = 'x\nc = }\n", &env)
        .unwrap_err()
        .iter()
        .map(|d| (d.line, d.column))
        .collect();
    let mut sorted = places.clone();
    sorted.sort();
    assert_eq!(places, sorted);
}

#[test]
fn unknown_keys_suggest_the_near_miss() {
    let text = with(
        "\n[[stage]]\nid = \"hook\"\nkind = \"webhook\"\nurl = \"https://e.com\"\n\
         on_sucess = \"done\"\n",
    );
    // `on_sucess` is line 24; `on_success` is then missing (reported at the header, line 20).
    assert_error(
        &text,
        "23:1",
        "unknown key `on_sucess`; did you mean `on_success`?",
    );
    assert_error(
        &text,
        "19:1",
        "stage `hook` has no `on_success`: add `on_success = \"",
    );
    assert_error(
        &with("\n[[stage]]\nid = \"x\"\nkind = \"complete\"\ncolour = 1\n"),
        "22:1",
        "unknown key `colour`; the keys of a complete stage are: id, name, kind",
    );
    assert_error(
        &BASE.replace("team =", "teem ="),
        "3:1",
        "unknown key `teem`; did you mean `team`?",
    );
    assert_error(
        &format!("zzzz = []\n{BASE}"),
        "1:1",
        "unknown key `zzzz`; the top-level keys are",
    );
    assert_error(
        &format!("url = \"http://x\"\n{BASE}"),
        "1:1",
        "stage settings go inside a `[[stage]]` table",
    );
}

#[test]
fn keys_of_another_kind_are_named() {
    let text = BASE.replace(
        "kind = \"annotate\"\nnext = \"done\"",
        "kind = \"annotate\"\nnext = \"done\"\nurl = \"http://x\"\non_approve = \"done\"",
    );
    assert_error(
        &text,
        "14:1",
        "`url` is only valid on a webhook stage; stage `annotate` is an annotate stage: remove \
         `url`",
    );
    assert_error(
        &text,
        "15:1",
        "`on_approve` is only valid on a review stage; stage `annotate` is an annotate stage, \
         and its edge is `next`",
    );
    assert_error(
        &BASE.replace(
            "kind = \"complete\"",
            "kind = \"complete\"\nnext = \"dataset\"",
        ),
        "18:1",
        "`next` is only valid on dataset and annotate stages; stage `done` is a complete \
         stage, and it is terminal",
    );
}

#[test]
fn missing_required_keys() {
    let text = BASE.replace("id = \"wf\"\n", "");
    assert_error(
        &text,
        "1:1",
        "the workflow has no `id`: add `id = \"defects\"`",
    );
    assert_error(
        &BASE.replace("kind = \"complete\"\n", ""),
        "15:1",
        "stage `done` has no `kind`: add `kind = \"annotate\"`",
    );
    assert_error(
        &BASE.replace("id = \"done\"\n", ""),
        "15:1",
        "stage 3 (line 15) has no `id`",
    );
    assert_error(
        &with("\n[[stage]]\nid = \"r\"\nkind = \"review\"\non_reject = \"done\"\n"),
        "19:1",
        "stage `r` has no `on_approve`",
    );
    assert_error(
        &with("\n[[stage]]\nid = \"l\"\nkind = \"logic\"\nrules = [{ when = { tag = \"x\" } }]\n"),
        "22:10",
        "rule 1 of stage `l` has no `to`",
    );
    assert_error(
        &with(
            "\n[[stage]]\nid = \"l\"\nkind = \"logic\"\nrules = [{ when = { tag = \"x\" }, to = \"done\" }]\n",
        ),
        "19:1",
        "stage `l` has no `else`",
    );
    assert_error(
        "id = \"wf\"\nname = \"n\"\nteam = \"t\"\n",
        "1:1",
        "the workflow has no stages",
    );
}

#[test]
fn wrong_types() {
    assert_error(
        &BASE.replace("name = \"Test\"", "name = 5"),
        "2:8",
        "`name` must be a string, not an integer",
    );
    let hook = |line: &str| {
        with(&format!(
            "\n[[stage]]\nid = \"hook\"\nkind = \"webhook\"\nurl = \"https://e.com\"\n\
             on_success = \"done\"\n{line}\n"
        ))
    };
    assert_error(
        &hook("max_attempts = \"6\""),
        "24:16",
        "`max_attempts` must be an integer, not a string; write e.g. `max_attempts = 6`",
    );
    assert_error(
        &hook("include_annotations = \"yes\""),
        "24:23",
        "`include_annotations` must be `true` or `false`, not a string",
    );
    assert_error(
        &hook("timeout = 10"),
        "24:11",
        "`timeout` must be a duration string such as \"10s\", not an integer",
    );
    assert_error(
        &hook("headers = \"x\""),
        "24:11",
        "`headers` must be a table",
    );
    assert_error(
        &hook("headers = { a = 1 }"),
        "24:17",
        "`headers.a` must be a string, not an integer",
    );
    assert_error(
        &hook("secret = 7"),
        "24:10",
        "`secret` must be a string or a list",
    );
    assert_error(
        "id = \"wf\"\nname = \"n\"\nteam = \"t\"\n[stage]\nid = \"d\"\nkind = \"dataset\"\nnext = \"d\"\n",
        "4:1",
        "write `[[stage]]` (two brackets)",
    );
    // Mixing `[stage]` and `[[stage]]` is a TOML error; the hint is the same.
    assert_error(
        &BASE.replace("[[stage]]\nid = \"dataset\"", "[stage]\nid = \"dataset\""),
        "10:3",
        "duplicate key `stage`: write `[[stage]]` (two brackets) for every stage",
    );
}

#[test]
fn dangling_edges_list_the_defined_stages() {
    assert_error(
        &BASE.replace("next = \"done\"", "next = \"dnoe\""),
        "13:8",
        "stage `dnoe` is not defined (did you mean `done`?); defined stages are: dataset, \
         annotate, done",
    );
    assert_error(
        &BASE.replace("next = \"done\"", "next = \"elsewhere\""),
        "13:8",
        "stage `elsewhere` is not defined; defined stages are: dataset, annotate, done",
    );
    // Backward edges are fine.
    ok(&BASE.replace("next = \"done\"", "next = \"dataset\""));
}

#[test]
fn duplicate_ids_and_dataset_count() {
    assert_error(
        &with("\n[[stage]]\nid = \"annotate\"\nkind = \"complete\"\n"),
        "20:6",
        "duplicate stage id `annotate`: line 10 already defines it",
    );
    assert_error(
        &BASE.replace("kind = \"dataset\"", "kind = \"annotate\""),
        "5:1",
        "the workflow has no dataset stage",
    );
    assert_error(
        &with("\n[[stage]]\nid = \"second\"\nkind = \"dataset\"\nnext = \"done\"\n"),
        "21:8",
        "a second dataset stage: the stage at line 5 is already the dataset stage",
    );
}

#[test]
fn sampling_must_sum_to_100() {
    let text = with(
        "\n[[stage]]\nid = \"s\"\nkind = \"sampling\"\n\
         split = [{ to = \"done\", percent = 5 }, { to = \"annotate\", percent = 90 }]\n",
    );
    assert_error(&text, "22:9", "the `split` percents add up to 95, not 100");
    assert_error(
        &with(
            "\n[[stage]]\nid = \"s\"\nkind = \"sampling\"\nsplit = [{ to = \"done\", percent = 101 }]\n",
        ),
        "22:35",
        "`percent` must be from 0 to 100, not 101",
    );
    assert_error(
        &with("\n[[stage]]\nid = \"s\"\nkind = \"sampling\"\nsplit = []\n"),
        "22:9",
        "`split` is empty",
    );
}

fn hook(line: &str) -> String {
    with(&format!(
        "\n[[stage]]\nid = \"hook\"\nkind = \"webhook\"\non_success = \"done\"\n{line}\n"
    ))
}

#[test]
fn urls_must_be_http() {
    assert_error(
        &hook("url = \"ftp://example.com/x\""),
        "23:7",
        "`url` must be an http or https URL, not `ftp:`; write e.g. `url = \"https://",
    );
    assert_error(
        &hook("url = \"example.com/x\""),
        "23:7",
        "`url` is not a valid URL",
    );
    assert_error(
        &hook("url = \"${EMPTY}/x\""),
        "23:7",
        "`url` is not a valid URL (after expanding `${…}`)",
    );
    assert_error(
        &BASE.replace(
            "team = \"acme\"",
            "team = \"acme\"\nworkview_url_base = \"file:///x\"",
        ),
        "4:21",
        "`workview_url_base` must be an http or https URL",
    );
    // The query is kept exactly.
    let wf = ok(&hook("url = \"https://e.com/a?b=1&c=%20d\""));
    assert_eq!(
        wf.stages[3].webhook().unwrap().url,
        "https://e.com/a?b=1&c=%20d"
    );
}

#[test]
fn limits_and_durations() {
    let h = |line: &str| hook(&format!("url = \"http://x\"\n{line}"));
    assert_error(
        &h("max_attempts = 0"),
        "24:16",
        "`max_attempts` must be from 1 to 100, not 0",
    );
    assert_error(&h("max_attempts = 101"), "24:16", "from 1 to 100, not 101");
    assert_error(
        &h("max_attempts = 99999999999999999999"),
        "24:16",
        "`max_attempts` must be from 1 to 100",
    );
    assert_error(
        &h("max_in_flight = 0"),
        "24:17",
        "`max_in_flight` must be at least 1, not 0",
    );
    assert_error(
        &h("pause_after_failures = -1"),
        "24:24",
        "`pause_after_failures` must be at least 0",
    );
    assert_error(
        &h("timeout = \"50ms\""),
        "24:11",
        "`timeout` must be between 100ms and 5m, not 50ms",
    );
    assert_error(
        &h("timeout = \"6m\""),
        "24:11",
        "between 100ms and 5m, not 6m",
    );
    assert_error(
        &h("timeout = \"10 sekonds\""),
        "24:11",
        "`timeout`: \"10 sekonds\" is not a duration",
    );
    assert_error(
        &h("retry_schedule = []"),
        "24:18",
        "`retry_schedule` must have 1 to 20 entries, not 0",
    );
    assert_error(
        &h(&format!(
            "retry_schedule = [{}]",
            vec!["\"1s\""; 21].join(", ")
        )),
        "24:18",
        "1 to 20 entries, not 21",
    );
    assert_error(
        &h("retry_schedule = [\"1s\", \"soon\"]"),
        "24:25",
        "`retry_schedule`: \"soon\" is not a duration",
    );
    assert_error(
        &h("event_type = \"x\""),
        "24:14",
        "`event_type` only applies to `payload = \"envelope\"`",
    );
    assert_error(&h("payload = \"json\""), "24:11", "unknown payload `json`");
}

#[test]
fn bad_slugs() {
    assert_error(
        &BASE.replace("id = \"wf\"", "id = \"Defect Labelling\""),
        "1:6",
        "`Defect Labelling` is not a valid workflow id: use lowercase letters, digits, `-` and \
         `_`, starting with a letter or digit, at most 64 characters, e.g. `defect-labelling`",
    );
    let long = "a".repeat(65);
    assert_error(
        &BASE.replace("\"done\"", &format!("\"{long}\"")),
        "16:6",
        "is not a valid stage id",
    );
    assert_error(
        &BASE.replace("kind = \"complete\"", "kind = \"finished\""),
        "17:8",
        "unknown stage kind `finished`; kinds are: dataset, annotate",
    );
    assert_error(
        &BASE.replace("kind = \"complete\"", "kind = \"compelte\""),
        "17:8",
        "unknown stage kind `compelte` (did you mean `complete`?)",
    );
}

#[test]
fn loops_of_automated_stages_are_rejected() {
    let text = with(
        "\n[[stage]]\nid = \"a\"\nkind = \"webhook\"\nurl = \"http://x\"\non_success = \"b\"\n\
         \n[[stage]]\nid = \"b\"\nkind = \"logic\"\nrules = [{ when = { tag = \"t\" }, to = \"done\" }]\n\
         else = \"a\"\n",
    );
    assert_error(
        &text,
        "19:1",
        "stages a → b → a form a loop of automated stages that would never stop",
    );
    // A failure edge back to itself loops too.
    assert_error(
        &hook("url = \"http://x\"\non_failure = \"hook\""),
        "19:1",
        "stages hook → hook form a loop",
    );
    // A loop through a person's stage is fine.
    ok(&hook("url = \"http://x\"\non_failure = \"annotate\""));
    ok(&with(
        "\n[[stage]]\nid = \"s\"\nkind = \"sampling\"\n\
         split = [{ to = \"annotate\", percent = 50 }, { to = \"done\", percent = 50 }]\n",
    ));
}

#[test]
fn env_expansion() {
    // Unset without default: an error naming it, at the value.
    assert_error(
        &hook("url = \"${NOPE}/x\""),
        "23:7",
        "environment variable `NOPE` (used in `url`) is not set",
    );
    assert_error(
        &hook("url = \"http://x\"\nauthorization = \"Bearer ${TOKEN_X}\""),
        "24:17",
        "`TOKEN_X` (used in `authorization`) is not set",
    );
    assert_error(
        &hook("url = \"http://x\"\nheaders = { a = \"$oops\" }"),
        "24:17",
        "in `headers.a`: a lone `$`: write `$$` for a literal `$`",
    );
    // Defaults when unset or empty, and `$$`.
    let wf = ok(&hook(
        "url = \"${NOPE:-http://h:1}/p?x=$$1\"\nheaders = { a = \"${EMPTY:-dflt}\", b = \"${EMPTY}\" }",
    ));
    let w = wf.stages[3].webhook().unwrap();
    assert_eq!(w.url, "http://h:1/p?x=$1");
    assert_eq!(
        w.headers,
        vec![("a".into(), "dflt".into()), ("b".into(), String::new())]
    );
    // Text from the environment is secret; defaults written in the file and literal text
    // are not (anyone reading the file sees them).
    assert_eq!(wf.secrets, Vec::<String>::new());
    // `${…}` is not expanded elsewhere.
    let wf = ok(&BASE.replace("name = \"Test\"", "name = \"${X} costs $5\""));
    assert_eq!(wf.name, "${X} costs $5");
    // With no environment at all the same default still applies.
    assert!(parse("f", &hook("url = \"${NOPE:-http://h:1}\""), &no_env).is_ok());
}

#[test]
fn headers_are_checked() {
    let h = |headers: &str| hook(&format!("url = \"http://x\"\nheaders = {{ {headers} }}"));
    assert_error(
        &h("\"bad header\" = \"x\""),
        "24:13",
        "`bad header` is not a valid HTTP header name",
    );
    assert_error(
        &h("\"Webhook-Id\" = \"x\""),
        "24:13",
        "header `Webhook-Id` cannot be set in `headers`: hookops sets it on every request",
    );
    assert_error(
        &h("authorization = \"x\""),
        "24:13",
        "set it with the stage's `authorization` key instead",
    );
    assert_error(
        &h("\"X-A\" = \"1\", \"x-a\" = \"2\""),
        "24:26",
        "header `x-a` is given twice (as `X-A` too",
    );
    assert_error(
        &h("a = \"line\\nbreak\""),
        "24:17",
        "the value of header `a` is not a valid HTTP header value",
    );
}

#[test]
fn secrets_are_checked() {
    let h = |secret: &str| hook(&format!("url = \"http://x\"\nsecret = {secret}"));
    assert_error(
        &h("\"abc\""),
        "24:10",
        "`secret` does not start with `whsec_`",
    );
    assert_error(
        &h("\"whsec_!!!\""),
        "24:10",
        "is not `whsec_` followed by base64",
    );
    assert_error(&h("\"whsec_\""), "24:10", "has nothing after `whsec_`");
    assert_error(&h("[]"), "24:10", "`secret` is an empty list");
    assert_error(
        &hook("url = \"http://x\"\nauthorization = \"${EMPTY}\""),
        "24:17",
        "`authorization` is empty (after expansion)",
    );
    // Each key of a rotation list is checked at its own place.
    assert_error(
        &h(&format!("[\"{SECRET}\", \"nope\"]")),
        "24:53",
        "`secret` does not start with `whsec_`",
    );
    // A rotation list keeps order; every key is a secret; the message never shows the value.
    let wf = ok(&h(&format!("[\"{SECRET}\", \"{SECRET2}\"]")));
    assert_eq!(
        wf.stages[3].webhook().unwrap().secrets,
        vec![SECRET, SECRET2]
    );
    assert_eq!(wf.secrets, vec![SECRET, SECRET2]);
    let errs = errors(&h("\"whsec_!!!topsecret\""));
    assert!(errs.iter().all(|e| !e.contains("topsecret")), "{errs:?}");
    // Apply checks keys with the signer's decoder: what it accepts signs, what it refuses
    // would not.
    let unpadded = "whsec_abcdefghijklmnopqrstuvw";
    let wf = ok(&h(&format!("\"{unpadded}\"")));
    let key = &wf.stages[3].webhook().unwrap().secrets[0];
    assert!(crate::dispatch::sign::sign(key, "msg_1", 1, b"{}").is_ok());
    assert_error(
        &h("\"whsec_abcde\""),
        "24:10",
        "is not `whsec_` followed by base64",
    );
    assert!(crate::dispatch::sign::sign("whsec_abcde", "msg_1", 1, b"{}").is_err());
}

#[test]
fn logic_rules_are_checked() {
    let l = |rules: &str| {
        with(&format!(
            "\n[[stage]]\nid = \"l\"\nkind = \"logic\"\nelse = \"done\"\nrules = [{rules}]\n"
        ))
    };
    assert_error(
        &l("{ when = { tag = \"a\", property = \"b\", is_any_of = [\"c\"] }, to = \"done\" }"),
        "23:19",
        "either `tag` or `property`, not both",
    );
    assert_error(
        &l("{ when = { property = \"b\" }, to = \"done\" }"),
        "23:19",
        "rule 1 of stage `l` has no `is_any_of`",
    );
    assert_error(
        &l("{ when = { }, to = \"done\" }"),
        "23:19",
        "`when` tests nothing: write `when = { tag = \"urgent\" }`",
    );
    assert_error(
        &l("{ when = { tag = \"a\" }, go = \"done\" }"),
        "23:34",
        "unknown key `go`; did you mean `to`?",
    );
    assert_error(
        &l("{ when = { tag = \"a\" }, to = \"done\", target = \"done\" }"),
        "23:47",
        "unknown key `target`; a rule's keys are: when, to",
    );
    assert_error(&l(""), "23:9", "`rules` is empty");
    assert_error(
        &l("{ when = { property = \"b\", is_any_of = [] }, to = \"done\" }"),
        "23:49",
        "`is_any_of` is empty",
    );
}

#[test]
fn every_error_is_reported_sorted() {
    let text = r#"id = "Bad Id"
name = "x"
team = "t"
colour = "red"

[[stage]]
id = "dataset"
kind = "dataset"
next = "nowhere"

[[stage]]
id = "hook"
kind = "webhook"
url = "gopher://x"
max_attempts = 0
on_success = "done"
"#;
    let errs = errors(text);
    let places: Vec<&str> = errs.iter().map(|e| e.split(": ").next().unwrap()).collect();
    assert_eq!(
        places,
        ["1:6", "4:1", "9:8", "14:7", "15:16", "16:14"],
        "{errs:#?}"
    );
    assert!(errs[5].contains("stage `done` is not defined"), "{errs:#?}");
}

#[test]
fn load_file_reports_io_utf8_and_display() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let err = load_file(&missing, &env).unwrap_err();
    assert!(matches!(err, LoadError::Io { .. }));
    assert!(
        err.to_string().starts_with("cannot read workflow file "),
        "{err}"
    );

    let bad = dir.path().join("latin1.toml");
    std::fs::write(&bad, b"id = \"wf\"\nname = \"caf\xe9\"\n").unwrap();
    let err = load_file(&bad, &env).unwrap_err();
    let LoadError::Invalid(d) = &err else {
        panic!("expected Invalid, got {err}");
    };
    assert_eq!((d[0].line, d[0].column), (2, 12));
    assert!(d[0].message.contains("not valid UTF-8"), "{err}");

    let invalid = dir.path().join("two.toml");
    std::fs::write(&invalid, "id = 1\nname = 2\nteam = \"t\"\n").unwrap();
    let err = load_file(&invalid, &env).unwrap_err();
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    let file = invalid.display().to_string();
    assert!(
        lines[0].starts_with(&format!("{file}:1:1: the workflow has no stages")),
        "{text}"
    );
    assert!(
        lines[1].starts_with(&format!("{file}:1:6: `id` must be a string")),
        "{text}"
    );
    assert!(
        lines[2].starts_with(&format!("{file}:2:8: `name` must be")),
        "{text}"
    );

    let huge = dir.path().join("huge.toml");
    std::fs::write(&huge, "#".repeat(5 * 1024 * 1024)).unwrap();
    let err = load_file(&huge, &env).unwrap_err().to_string();
    assert!(err.contains(":1:1: the file is larger than 4 MiB"), "{err}");

    let good = dir.path().join("good.toml");
    std::fs::write(&good, format!("\u{feff}{BASE}")).unwrap();
    assert_eq!(load_file(&good, &env).unwrap().id.as_str(), "wf");
}

#[test]
fn columns_count_characters_and_skip_the_bom() {
    let text = "name = \"ü\"\nid = \"é\" # ünïcode\nteam = 1\n";
    assert_error(text, "2:6", "`é` is not a valid workflow id");
    assert_error(text, "3:8", "`team` must be a string");
    assert_error("\u{feff}id = 1\n", "1:6", "`id` must be a string");
}

#[test]
fn hostile_input_does_not_panic() {
    // Deep nesting is refused by the parser, not by the stack.
    let deep = format!("id = {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    assert!(!errors(&deep).is_empty());
    let deep = format!("id = {}1{}\n", "{a=".repeat(10_000), "}".repeat(10_000));
    assert!(!errors(&deep).is_empty());
    // A long chain of automated stages ending in a loop is walked without recursion.
    let n = 20_000;
    let mut text = String::from(
        "id = \"wf\"\nname = \"n\"\nteam = \"t\"\n[[stage]]\nid = \"d\"\nkind = \"dataset\"\nnext = \"s0\"\n",
    );
    for i in 0..n {
        let next = (i + 1) % n;
        text.push_str(&format!(
            "[[stage]]\nid = \"s{i}\"\nkind = \"sampling\"\nsplit = [{{ to = \"s{next}\", percent = 100 }}]\n"
        ));
    }
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{:?}", &errs[..errs.len().min(3)]);
    assert!(errs[0].contains("stages s0 → s1 → s2"), "{}", errs[0]);
    assert!(errs[0].contains("→ … → s0 (20000 stages)"), "{}", errs[0]);
    // Garbage does not panic.
    for junk in [
        "\0",
        "[[",
        "= =",
        "\u{feff}",
        "a.b.c.d = 1\n[a.b]\n",
        "\"\\u{0}\"",
    ] {
        let _ = errors(junk);
    }
}

#[test]
fn every_fixture_fails_as_its_comment_says() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/workflows");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 20,
        "only {} fixtures in {}",
        files.len(),
        dir.display()
    );
    let mut failures = Vec::new();
    for path in files {
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        // Expectations: leading `# expect: LINE:COL: text` comments; a `valid-*` file has none.
        let expected: Vec<&str> = text
            .lines()
            .map_while(|l| l.strip_prefix("# expect: "))
            .collect();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let result = load_file(&path, &env);
        if name.starts_with("valid-") {
            assert!(expected.is_empty(), "{name}: valid fixtures expect nothing");
            if let Err(e) = result {
                failures.push(format!("{name} should load:\n{e}"));
            }
            continue;
        }
        assert!(!expected.is_empty(), "{name} has no `# expect:` line");
        let diags = match result {
            Ok(_) => {
                failures.push(format!("{name} loaded but should fail with {expected:?}"));
                continue;
            }
            Err(LoadError::Invalid(diags)) => diags,
            Err(e) => panic!("{name}: {e}"),
        };
        let got: Vec<String> = diags
            .iter()
            .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
            .collect();
        // Each expectation is a prefix of one diagnostic, and every diagnostic is expected.
        let unmatched: Vec<&&str> = expected
            .iter()
            .filter(|want| !got.iter().any(|g| g.starts_with(**want)))
            .collect();
        if !unmatched.is_empty() || got.len() != expected.len() {
            failures.push(format!("{name}: expected {expected:#?}\ngot {got:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_demo_workflow_loads_with_no_environment() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/workflow.toml");
    if !path.exists() {
        return; // Written by the demo's owner; checked once it is there.
    }
    let wf = load_file(&path, &no_env).unwrap_or_else(|e| panic!("{e}"));
    assert!(wf.dataset_stage().is_some());
}

#[test]
fn rate_limits_parse_with_a_default_burst_of_one_seconds_worth() {
    let rate = |line: &str| {
        ok(&hook(&format!("url = \"http://127.0.0.1:9/\"\n{line}")))
            .stage(&"hook".into())
            .and_then(Stage::webhook)
            .and_then(|w| w.rate_limit)
    };
    let r = rate("rate_limit = \"20/s\"").unwrap();
    assert_eq!((r.count, r.period_ms, r.burst), (20, 1_000, 20));
    assert_eq!(r.to_string(), "20/s");
    let r = rate("rate_limit = \"100/min\"").unwrap();
    assert_eq!((r.count, r.period_ms, r.burst), (100, 60_000, 2));
    assert_eq!(r.to_string(), "100/min");
    let r = rate("rate_limit = \"10/h\"").unwrap();
    assert_eq!((r.count, r.period_ms, r.burst), (10, 3_600_000, 1));
    let r = rate("rate_limit = \"5/s\"\nburst = 1").unwrap();
    assert_eq!((r.count, r.burst), (5, 1));
    assert_eq!(rate(""), None);
}

#[test]
fn rate_limits_must_be_positive_and_burst_needs_a_rate() {
    let h = |line: &str| hook(&format!("url = \"http://127.0.0.1:9/\"\n{line}"));
    for bad in ["0/s", "-5/s", "2.5/s", "20", "20/day", "fast"] {
        assert_error(
            &h(&format!("rate_limit = \"{bad}\"")),
            "24:14",
            &format!(
                "`rate_limit` must be a positive whole number of requests per second, minute or hour, not `{bad}`"
            ),
        );
    }
    assert_error(
        &h("rate_limit = 20"),
        "24:14",
        "`rate_limit` must be a string",
    );
    assert_error(
        &h("burst = 0\nrate_limit = \"1/s\""),
        "24:9",
        "`burst` must be from 1 to 1000000, not 0",
    );
    assert_error(
        &h("burst = 5"),
        "24:9",
        "`burst` only applies with a `rate_limit`",
    );
    let errs = errors(&with(
        "\n[[stage]]\nid = \"x\"\nkind = \"annotate\"\nnext = \"done\"\nrate_limit = \"1/s\"\n",
    ));
    assert!(
        errs.iter()
            .any(|e| e.contains("`rate_limit` is only valid on")),
        "{errs:?}"
    );
}
