//! The CLI as an operator or a script drives it (issue 3): the real `hookops` binary run as a
//! subprocess on real SQLite files in temp dirs. Each test asserts exit codes, the words an
//! operator reads, and the state left in the database (read back through the CLI's `--json`).
//!
//! The parser's unit tests cover every validation message; here a representative set is
//! checked to reach the operator with its `file:line:column` and exit code 2.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hookops");

/// A temp dir holding one database, and a way to run the binary against it.
struct Env {
    dir: tempfile::TempDir,
    db: PathBuf,
}

/// What one run printed and how it ended.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    #[track_caller]
    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        self
    }

    #[track_caller]
    fn code(self, code: i32) -> Run {
        assert_eq!(self.code, code, "expected exit {code}: {self:#?}");
        self
    }

    /// The error is one line (one sentence), not a panic or a backtrace.
    #[track_caller]
    fn one_line_error(&self) -> &str {
        let text = self.stderr.trim_end();
        assert!(
            !text.is_empty() && !text.contains('\n'),
            "expected a one-line error: {self:#?}"
        );
        assert!(!text.contains("panicked"), "{self:#?}");
        text
    }
}

fn command(env: &Env) -> Command {
    let mut c = bare_command(env);
    c.arg("--db").arg(&env.db);
    c
}

/// The binary without `--db`, for tests of other database files.
fn bare_command(env: &Env) -> Command {
    let mut c = Command::new(BIN);
    // Nothing from the developer's environment leaks into a test.
    c.env_remove("HOOKOPS_DB")
        .env_remove("HOOKOPS_DB_MODE")
        .env_remove("HOOKOPS_DEMO_URL")
        .env_remove("HOOKOPS_DEMO_SECRET")
        .env_remove("HOOKOPS_DEMO_TOKEN")
        .env("USER", "tester")
        .env("HOME", env.dir.path())
        .env("XDG_DATA_HOME", env.dir.path().join("xdg"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    c
}

fn finish(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("hookops.db");
        Env { dir, db }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write file");
        p
    }

    fn run(&self, args: &[&str]) -> Run {
        finish(command(self).args(args).output().expect("run hookops"))
    }

    fn spawn(&self, args: &[&str]) -> Child {
        command(self)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hookops")
    }

    fn apply(&self, file: &Path) -> Run {
        self.run(&["workflow", "apply", s(file)])
    }

    /// Every item, read back through `item list --json --limit 0`.
    fn items(&self) -> Vec<Value> {
        let r = self.run(&["item", "list", "--json", "--limit", "0"]).ok();
        r.json().as_array().expect("an array").clone()
    }

    fn item(&self, id: &str) -> Value {
        self.run(&["item", "show", id, "--json"]).ok().json()
    }

    fn stage_of(&self, id: &str) -> String {
        self.item(id)["stage"].as_str().expect("stage").to_string()
    }

    fn audit(&self) -> Vec<Value> {
        let r = self.run(&["audit", "--json", "--limit", "1000"]).ok();
        r.json().as_array().expect("an array").clone()
    }

    /// Items per stage of a workflow, from `workflow show --json`.
    fn stage_counts(&self, workflow: &str) -> std::collections::BTreeMap<String, i64> {
        let w = self
            .run(&["workflow", "show", workflow, "--json"])
            .ok()
            .json();
        w["stage_list"]
            .as_array()
            .expect("stage_list")
            .iter()
            .map(|s| {
                (
                    s["id"].as_str().expect("id").to_string(),
                    s["items"].as_i64().expect("items"),
                )
            })
            .collect()
    }
}

/// A path as an argument (temp dirs and the repository have UTF-8 paths).
fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// dataset → (webhook) → work → done, plus `other`: imported items wait in the dataset stage
/// (its next stage is automated), so they can be assigned by hand.
const WAITING_WORKFLOW: &str = r#"
id = "flow"
name = "Flow"
team = "acme"

[[stage]]
id = "dataset"
kind = "dataset"
next = "hook"

[[stage]]
id = "hook"
kind = "webhook"
url = "http://127.0.0.1:9/hook"
on_success = "work"

[[stage]]
id = "work"
kind = "annotate"
next = "check"

[[stage]]
id = "check"
kind = "review"
on_approve = "done"
on_reject = "work"

[[stage]]
id = "other"
kind = "annotate"
next = "done"

[[stage]]
id = "done"
kind = "complete"
"#;

/// `n` plain items `{prefix}{i}`, one per line.
fn plain_items(prefix: &str, n: usize) -> String {
    let mut s = String::with_capacity(n * 40);
    for i in 0..n {
        s.push_str(&format!(
            "{{\"id\":\"{prefix}{i}\",\"name\":\"{prefix}{i}.jpg\"}}\n"
        ));
    }
    s
}

/// A database with [`WAITING_WORKFLOW`] and `n` items `it0…` waiting in `dataset`.
fn waiting_env(n: usize) -> Env {
    let env = Env::new();
    let wf = env.write("flow.toml", WAITING_WORKFLOW);
    env.apply(&wf).ok();
    let items = env.write("items.jsonl", &plain_items("it", n));
    let r = env
        .run(&["item", "import", s(&items), "--workflow", "flow"])
        .ok();
    assert!(
        !r.stderr.contains("imported"),
        "no progress on a pipe: {r:#?}"
    );
    env
}

/// Waits for `cond` up to `deadline`, polling; panics with `what` when it never holds.
fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Workflow files

const HEAD: &str = "id = \"w\"\nname = \"W\"\nteam = \"t\"\n";

/// (name, body after HEAD, expected `line:column`, words the message must contain).
const INVALID: &[(&str, &str, &str, &str)] = &[
    (
        "unknown_key",
        "colour = \"red\"\n[[stage]]\nid = \"d\"\nkind = \"dataset\"\nnext = \"c\"\n[[stage]]\nid = \"c\"\nkind = \"complete\"\n",
        "4:1",
        "unknown key `colour`",
    ),
    (
        "missing_edge",
        "[[stage]]\nid = \"d\"\nkind = \"dataset\"\n[[stage]]\nid = \"c\"\nkind = \"complete\"\n",
        "4:1",
        "has no `next`",
    ),
    (
        "dangling_edge",
        "[[stage]]\nid = \"d\"\nkind = \"dataset\"\nnext = \"nowhere\"\n[[stage]]\nid = \"c\"\nkind = \"complete\"\n",
        "7:8",
        "stage `nowhere` is not defined",
    ),
    (
        "duplicate_id",
        "[[stage]]\nid = \"d\"\nkind = \"dataset\"\nnext = \"c\"\n[[stage]]\nid = \"c\"\nkind = \"complete\"\n[[stage]]\nid = \"c\"\nkind = \"discard\"\n",
        "12:6",
        "duplicate stage id `c`",
    ),
    (
        "no_dataset",
        "[[stage]]\nid = \"a\"\nkind = \"annotate\"\nnext = \"c\"\n[[stage]]\nid = \"c\"\nkind = \"complete\"\n",
        "4:1",
        "no dataset stage",
    ),
    (
        "two_datasets",
        "[[stage]]\nid = \"d\"\nkind = \"dataset\"\nnext = \"c\"\n[[stage]]\nid = \"d2\"\nkind = \"dataset\"\nnext = \"c\"\n[[stage]]\nid = \"c\"\nkind = \"complete\"\n",
        "10:8",
        "second dataset stage",
    ),
    (
        "sampling_sum",
        "[[stage]]\nid = \"d\"\nkind = \"dataset\"\nnext = \"s\"\n[[stage]]\nid = \"s\"\nkind = \"sampling\"\nsplit = [{ to = \"c\", percent = 30 }, { to = \"c\", percent = 60 }]\n[[stage]]\nid = \"c\"\nkind = \"complete\"\n",
        "11:9",
        "add up to 90, not 100",
    ),
    (
        "non_http_url",
        "[[stage]]\nid = \"d\"\nkind = \"dataset\"\nnext = \"h\"\n[[stage]]\nid = \"h\"\nkind = \"webhook\"\nurl = \"ftp://example.com/x\"\non_success = \"c\"\n[[stage]]\nid = \"c\"\nkind = \"complete\"\n",
        "11:7",
        "must be an http or https URL",
    ),
    (
        "automated_cycle",
        "[[stage]]\nid = \"d\"\nkind = \"dataset\"\nnext = \"l\"\n[[stage]]\nid = \"l\"\nkind = \"logic\"\nrules = [{ when = { tag = \"x\" }, to = \"m\" }]\nelse = \"c\"\n[[stage]]\nid = \"m\"\nkind = \"logic\"\nrules = [{ when = { tag = \"y\" }, to = \"c\" }]\nelse = \"l\"\n[[stage]]\nid = \"c\"\nkind = \"complete\"\n",
        "8:1",
        "loop of automated stages",
    ),
    (
        "key_of_another_kind",
        "[[stage]]\nid = \"d\"\nkind = \"dataset\"\nnext = \"c\"\nurl = \"http://x\"\n[[stage]]\nid = \"c\"\nkind = \"complete\"\n",
        "8:1",
        "`url` is only valid on a webhook stage",
    ),
    (
        "out_of_range",
        "[[stage]]\nid = \"d\"\nkind = \"dataset\"\nnext = \"h\"\n[[stage]]\nid = \"h\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1/x\"\nmax_attempts = 0\non_success = \"c\"\n[[stage]]\nid = \"c\"\nkind = \"complete\"\n",
        "12:16",
        "`max_attempts` must be from 1 to 100",
    ),
    (
        "unset_env",
        "[[stage]]\nid = \"d\"\nkind = \"dataset\"\nnext = \"h\"\n[[stage]]\nid = \"h\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1/${HOOKOPS_TEST_SURELY_UNSET}\"\non_success = \"c\"\n[[stage]]\nid = \"c\"\nkind = \"complete\"\n",
        "11:7",
        "`HOOKOPS_TEST_SURELY_UNSET`",
    ),
    (
        "toml_syntax",
        "[[stage]\nid = \"d\"\n",
        "4:9",
        "invalid TOML",
    ),
];

#[test]
fn invalid_workflow_files_name_file_line_column_and_exit_2_writing_nothing() {
    let env = Env::new();
    let good = env.write("good.toml", WAITING_WORKFLOW);
    env.apply(&good).ok();
    let before = env.run(&["workflow", "list", "--json"]).ok().json();
    for (name, body, at, words) in INVALID {
        let file = env.write(&format!("{name}.toml"), &format!("{HEAD}{body}"));
        let r = env.apply(&file).code(2);
        let place = format!("{}:{at}: ", file.display());
        assert!(
            r.stderr.contains(&place),
            "{name}: expected `{place}` in the error: {r:#?}"
        );
        assert!(
            r.stderr.contains(words),
            "{name}: expected `{words}` in the error: {r:#?}"
        );
        // `--check` validates the same way.
        let c = env.run(&["workflow", "apply", "--check", s(&file)]).code(2);
        assert!(c.stderr.contains(&place), "{name} --check: {c:#?}");
    }
    // Every problem is reported at once, not just the first.
    let two = env.write(
        "two.toml",
        &format!(
            "{HEAD}[[stage]]\nid = \"d\"\nkind = \"dataset\"\nnext = \"nowhere\"\n[[stage]]\nid = \"c\"\nkind = \"complete\"\nbogus = 1\n"
        ),
    );
    let r = env.apply(&two).code(2);
    let shown = format!("{}:", two.display());
    assert_eq!(r.stderr.matches(&shown).count(), 2, "{r:#?}");
    // Nothing reached the store: the one valid workflow, at its first revision.
    let after = env.run(&["workflow", "list", "--json"]).ok().json();
    assert_eq!(before, after);
    assert_eq!(after.as_array().map(Vec::len), Some(1));
}

#[test]
fn workflow_apply_is_idempotent_and_refuses_to_drop_a_stage_with_items_unless_moved() {
    let env = waiting_env(5);
    let wf = env.path("flow.toml");
    let again = env.apply(&wf).ok();
    assert!(again.stdout.contains("unchanged"), "{again:#?}");
    let list = env.run(&["workflow", "list", "--json"]).ok().json();
    assert_eq!(list[0]["revision"], 1, "{list}");

    // Two items into `other`, then a file without `other`.
    env.run(&[
        "assign",
        "--workflow",
        "flow",
        "--stage",
        "other",
        "it0",
        "it1",
    ])
    .ok();
    let without = WAITING_WORKFLOW.replace(
        "[[stage]]\nid = \"other\"\nkind = \"annotate\"\nnext = \"done\"\n",
        "",
    );
    assert_ne!(without, WAITING_WORKFLOW);
    let smaller = env.write("smaller.toml", &without);
    let r = env.apply(&smaller).code(1);
    let msg = r.one_line_error();
    assert!(
        msg.contains("`other`") && msg.contains("--move"),
        "the refusal names the stage and the way out: {r:#?}"
    );
    assert_eq!(env.stage_of("it0"), "other");
    let list = env.run(&["workflow", "list", "--json"]).ok().json();
    assert_eq!(list[0]["revision"], 1, "a refused apply changes nothing");

    // A move to a stage that does not exist in the new file is bad input (exit 2).
    let bad = env
        .run(&["workflow", "apply", s(&smaller), "--move", "other=nowhere"])
        .code(2);
    bad.one_line_error();
    assert_eq!(env.stage_of("it0"), "other");

    let moved = env
        .run(&["workflow", "apply", s(&smaller), "--move", "other=work"])
        .ok();
    assert!(moved.stdout.contains("moved 2 item(s)"), "{moved:#?}");
    assert_eq!(env.stage_of("it0"), "work");
    assert_eq!(env.stage_of("it1"), "work");
    assert_eq!(env.stage_of("it2"), "dataset");
    let list = env.run(&["workflow", "list", "--json"]).ok().json();
    assert_eq!(list[0]["revision"], 2);
    assert!(env.apply(&smaller).ok().stdout.contains("unchanged"));
}

// ---------------------------------------------------------------------------------------------
// Import

#[test]
fn import_of_the_demo_file_takes_both_formats_and_a_rerun_imports_nothing_new() {
    let env = Env::new();
    env.apply(&repo("demo/workflow.toml")).ok();
    let file = repo("demo/items.jsonl");
    let text = std::fs::read_to_string(&file).expect("demo items");
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("demo line"))
        .collect();
    let darwin: Vec<&Value> = lines
        .iter()
        .filter(|l| l.get("version").is_some())
        .collect();
    let plain: Vec<&Value> = lines
        .iter()
        .filter(|l| l.get("version").is_none())
        .collect();
    assert!(
        !darwin.is_empty() && !plain.is_empty(),
        "the demo has both formats"
    );

    let import = [
        "item",
        "import",
        s(&file),
        "--workflow",
        "defects",
        "--json",
    ];
    let first = env.run(&import).ok().json();
    assert_eq!(first["imported"], lines.len());
    assert_eq!(first["already_present"], 0);
    let landed: i64 = first["landed"]
        .as_object()
        .expect("landed")
        .values()
        .map(|v| v.as_i64().expect("count"))
        .sum();
    assert_eq!(landed as usize, lines.len());

    // A Darwin line keeps its V7 id, name and annotations.
    let d = darwin[0];
    let id = d["item"]["source_info"]["item_id"].as_str().expect("id");
    let shown = env.item(id);
    assert_eq!(shown["name"], d["item"]["name"]);
    assert_eq!(
        shown["annotations"].as_array().map(Vec::len),
        d["annotations"].as_array().map(Vec::len)
    );
    // A plain line keeps its id and tags.
    let p = plain[0];
    let shown = env.item(p["id"].as_str().expect("plain id"));
    assert_eq!(shown["name"], p["name"]);
    assert_eq!(shown["tags"], p["tags"]);

    let again = env.run(&import).ok().json();
    assert_eq!(again["imported"], 0);
    assert_eq!(again["already_present"], lines.len());
    assert_eq!(env.items().len(), lines.len());
}

#[test]
fn import_of_every_v7_fixture_as_one_jsonl_counts_shared_ids_as_already_present() {
    let env = waiting_env(0);
    let dir = repo("tests/fixtures/jsonl/darwin-v2");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 34, "the V7 exports in {}", dir.display());
    let mut jsonl = String::new();
    let mut ids = std::collections::BTreeSet::new();
    for f in &files {
        let v: Value = serde_json::from_slice(&std::fs::read(f).expect("read")).expect("json");
        ids.insert(
            v["item"]["source_info"]["item_id"]
                .as_str()
                .expect("item_id")
                .to_string(),
        );
        jsonl.push_str(&serde_json::to_string(&v).expect("compact"));
        jsonl.push('\n');
    }
    let shared = files.len() - ids.len();
    assert!(shared > 0, "some exports share an item id");
    let file = env.write("v7.jsonl", &jsonl);
    let args = ["item", "import", s(&file), "--workflow", "flow", "--json"];
    let r = env.run(&args).ok();
    let report = r.json();
    assert_eq!(report["imported"], ids.len());
    assert_eq!(report["already_present"], shared);
    assert_eq!(report["invalid"], 0);
    // The split exports differ in content: each is reported, none overwritten.
    let differing = report["differing"].as_array().expect("differing").len();
    assert!(differing <= shared);
    assert_eq!(r.stderr.matches("already present").count(), differing);
    assert_eq!(env.items().len(), ids.len());
    for id in &ids {
        assert_eq!(env.stage_of(id), "dataset");
    }

    let again = env.run(&args).ok().json();
    assert_eq!(again["imported"], 0);
    assert_eq!(again["already_present"], files.len());
}

#[test]
fn invalid_lines_refuse_the_whole_file_unless_skip_invalid() {
    let env = waiting_env(0);
    let file = env.write(
        "mixed.jsonl",
        "{\"id\":\"good-1\",\"name\":\"a.jpg\"}\n\
         {\"id\":\"good-2\",\"name\":\"b.jpg\"\n\
         {\"id\":\"good-3\",\"name\":\"c.jpg\",\"tags\":3}\n\
         {\"id\":\"good-4\",\"name\":\"d.jpg\"}\n",
    );
    let args = |skip: bool| {
        let mut a: Vec<&str> = vec!["item", "import", s(&file), "--workflow", "flow"];
        if skip {
            a.push("--skip-invalid");
        }
        a
    };
    let r = env.run(&args(false)).code(2);
    let at = format!("{}:line ", file.display());
    assert!(
        r.stderr.contains(&format!("{at}2")),
        "bad line 2 named: {r:#?}"
    );
    assert!(
        r.stderr.contains(&format!("{at}3")),
        "bad line 3 named: {r:#?}"
    );
    assert!(r.stderr.contains("nothing was imported"), "{r:#?}");
    assert!(
        env.items().is_empty(),
        "a refused file writes nothing at all"
    );

    // With --skip-invalid the good lines go in; the run still reports a partial failure.
    let r = env.run(&args(true)).code(1);
    assert!(r.stdout.contains("imported 2 item(s)"), "{r:#?}");
    let ids: Vec<String> = env
        .items()
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(ids, vec!["good-1", "good-4"]);
}

/// An id that belongs to another workflow is a line error (design §6): named with its file and
/// line, it refuses the file like any other bad line, and `--skip-invalid` skips it.
#[test]
fn an_id_of_another_workflow_is_a_line_error_that_skip_invalid_skips() {
    let env = waiting_env(1);
    let second = env.write(
        "second.toml",
        &WAITING_WORKFLOW.replace("\"flow\"", "\"second\""),
    );
    env.apply(&second).ok();
    let file = env.write(
        "mixed.jsonl",
        "{\"id\":\"new-1\",\"name\":\"a.jpg\"}\n\
         {\"id\":\"it0\",\"name\":\"it0.jpg\"}\n\
         {\"id\":\"new-2\",\"name\":\"b.jpg\"}\n",
    );
    let import = |skip: bool| {
        let mut a = vec!["item", "import", s(&file), "--workflow", "second"];
        if skip {
            a.push("--skip-invalid");
        }
        env.run(&a)
    };
    let r = import(false).code(2);
    assert!(
        r.stderr.contains(&format!(
            "{}:line 2: item id `it0` already exists in workflow `flow`",
            file.display()
        )),
        "{r:#?}"
    );
    assert!(r.stderr.contains("nothing was imported"), "{r:#?}");
    assert_eq!(env.items().len(), 1, "a refused file writes nothing");

    let r = import(true).code(1);
    assert!(r.stdout.contains("imported 2 item(s)"), "{r:#?}");
    let mut ids: Vec<(String, String)> = env
        .items()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().into(),
                i["workflow"].as_str().unwrap().into(),
            )
        })
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [("it0", "flow"), ("new-1", "second"), ("new-2", "second")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
}

// ---------------------------------------------------------------------------------------------
// Streaming import (issue 22)

/// Rows in the `items` table, read directly (listing 200,000 items through the CLI would cost
/// more than the import it checks).
fn item_count(env: &Env) -> i64 {
    let c = rusqlite::Connection::open(&env.db).expect("open db");
    c.query_row("SELECT count(*) FROM items", [], |r| r.get(0))
        .expect("count items")
}

/// `item import FILE --workflow flow --json` plus `extra` arguments.
fn import_json<'a>(file: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["item", "import", s(file), "--workflow", "flow", "--json"];
    a.extend_from_slice(extra);
    a
}

/// Every line is checked before anything is written: a bad *last* line refuses the whole file
/// (the lines before it were read and checked first, and still nothing went in), and with
/// `--skip-invalid` the counts add up.
#[test]
fn a_bad_last_line_refuses_the_file_before_anything_is_written_and_skip_invalid_counts() {
    const N: usize = 5000;
    let env = waiting_env(0);
    let mut text = plain_items("s", N);
    text.push_str("{\"id\":\"last\",\"name\":\"last.jpg\",\"tags\":[1]}\n");
    let file = env.write("bad-last.jsonl", &text);
    let imports = |env: &Env| {
        env.audit()
            .iter()
            .filter(|a| a["action"] == "import")
            .count()
    };
    let audited = imports(&env);
    let r = env.run(&import_json(&file, &[])).code(2);
    assert!(
        r.stderr.contains(&format!(
            "{}:line {}, column 32: `tags` must be an array of strings",
            file.display(),
            N + 1
        )),
        "{r:#?}"
    );
    assert!(r.stderr.contains("nothing was imported"), "{r:#?}");
    assert_eq!(item_count(&env), 0, "a refused file writes nothing at all");
    assert_eq!(imports(&env), audited, "and audits no import");

    // Another bad line in the middle and an id of another workflow: all three are counted
    // and skipped, the rest goes in.
    let second = env.write(
        "second.toml",
        &WAITING_WORKFLOW.replace("\"flow\"", "\"second\""),
    );
    env.apply(&second).ok();
    let other = env.write("other.jsonl", "{\"id\":\"theirs\",\"name\":\"t.jpg\"}\n");
    env.run(&["item", "import", s(&other), "--workflow", "second"])
        .ok();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[2500] = "{\"id\":\"mid\",\"name\":".into();
    lines[3000] = "{\"id\":\"theirs\",\"name\":\"t.jpg\"}".into();
    let file = env.write("mixed.jsonl", &(lines.join("\n") + "\n"));
    let r = env.run(&import_json(&file, &["--skip-invalid"])).code(1);
    let at = |n: usize| format!("{}:line {n}", file.display());
    assert!(r.stderr.contains(&at(2501)), "{r:#?}");
    assert!(
        r.stderr.contains(&format!(
            "{}: item id `theirs` already exists in workflow `second`",
            at(3001)
        )),
        "{r:#?}"
    );
    let j = r.json();
    assert_eq!(
        (&j["imported"], &j["already_present"], &j["invalid"]),
        (&Value::from(N - 2), &Value::from(0), &Value::from(3)),
        "{j}"
    );
    assert_eq!(item_count(&env), (N - 2 + 1) as i64);
    // Once more: nothing new, everything good already present, the same three refused.
    let j = env
        .run(&import_json(&file, &["--skip-invalid"]))
        .code(1)
        .json();
    assert_eq!(
        (&j["imported"], &j["already_present"], &j["invalid"]),
        (&Value::from(0), &Value::from(N - 2), &Value::from(3)),
        "{j}"
    );
}

/// An id of another workflow met past the first batch of the check is still a line error that
/// refuses the file before anything is written.
#[test]
fn an_id_of_another_workflow_deep_in_a_big_file_refuses_it_before_writing() {
    let env = waiting_env(0);
    let second = env.write(
        "second.toml",
        &WAITING_WORKFLOW.replace("\"flow\"", "\"second\""),
    );
    env.apply(&second).ok();
    let other = env.write("other.jsonl", "{\"id\":\"s4321\",\"name\":\"x.jpg\"}\n");
    env.run(&["item", "import", s(&other), "--workflow", "second"])
        .ok();
    let file = env.write("big.jsonl", &plain_items("s", 9000));
    let r = env.run(&import_json(&file, &[])).code(2);
    assert!(
        r.stderr.contains(&format!(
            "{}:line 4322: item id `s4321` already exists in workflow `second`",
            file.display()
        )),
        "{r:#?}"
    );
    assert_eq!(item_count(&env), 1, "only the other workflow's item");
}

/// `item import -` reads standard input (spooled, then read twice like a file); errors name
/// it `stdin`.
#[test]
fn import_from_standard_input() {
    use std::io::Write as _;
    let env = waiting_env(0);
    let run = |text: String, extra: &[&str]| -> Run {
        let mut c = command(&env);
        c.args(["item", "import", "-", "--workflow", "flow", "--json"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(text.as_bytes());
        });
        let out = child.wait_with_output().expect("wait");
        writer.join().expect("writer");
        finish(out)
    };
    let j = run(plain_items("in", 3000), &[]).ok().json();
    assert_eq!(j["imported"], 3000, "{j}");
    assert_eq!(item_count(&env), 3000);
    let j = run(plain_items("in", 3001), &[]).ok().json();
    assert_eq!(
        (&j["imported"], &j["already_present"]),
        (&Value::from(1), &Value::from(3000))
    );

    let r = run(format!("{}{{\"name\": 5}}\n", plain_items("new", 10)), &[]).code(2);
    assert!(
        r.stderr
            .contains("stdin:line 11, column 2: `name` must be a string"),
        "{r:#?}"
    );
    assert_eq!(
        item_count(&env),
        3001,
        "nothing of the refused input went in"
    );
    // No spool file is left beside the database.
    let left: Vec<_> = std::fs::read_dir(env.dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| {
            !n.to_string_lossy().starts_with("hookops.db")
                && !n.to_string_lossy().ends_with(".toml")
                && !n.to_string_lossy().ends_with(".jsonl")
                && n != "xdg"
        })
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Ctrl-C stops the import between batches and says how far it got; running it again adds
/// exactly the rest. Deterministic without timing: once the import has committed something,
/// this test freezes it (SIGSTOP), queues SIGINT while it is frozen, and lets it go on
/// (SIGCONT), so the signal lands part way through whatever the machine's speed. (Holding the
/// write lock instead does not work: SQLite's busy wait is not fair, and an import that takes
/// the lock back at once can starve the test's `BEGIN IMMEDIATE` until it has finished.)
#[test]
fn ctrl_c_stops_between_batches_and_a_rerun_imports_exactly_the_rest() {
    const N: usize = 40_000;
    let env = waiting_env(0);
    let file = env.write("many.jsonl", &plain_items("c", N));
    let child = env.spawn(&import_json(&file, &[]));
    let pid = child.id();
    wait_for("the import to commit", Duration::from_secs(120), || {
        item_count(&env) > 0
    });
    let signal = |name: &str| {
        let sent = Command::new("kill")
            .args([name, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill {name}");
    };
    let status = || std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    signal("-STOP");
    wait_for("the import to stop", Duration::from_secs(30), || {
        status()
            .lines()
            .any(|l| l.starts_with("State:") && l.split_whitespace().nth(1) == Some("T"))
    });
    let frozen_at = item_count(&env);
    assert!(
        frozen_at < N as i64,
        "the import finished before it could be frozen"
    );
    // A stopped process keeps SIGINT pending; it is delivered when SIGCONT wakes it.
    signal("-INT");
    signal("-CONT");
    let r = finish(child.wait_with_output().expect("wait")).code(1);
    let before = item_count(&env);
    assert!(
        r.stderr.contains("interrupted after") && r.stderr.contains("run the same import again"),
        "{r:#?}"
    );
    assert!(
        before > 0 && before < N as i64,
        "stopped part way: {before}"
    );
    let j = r.json();
    assert_eq!(j["finished"], false);
    assert_eq!(j["imported"], before, "it says how far it got");
    let audit = env.audit();
    let row = audit
        .iter()
        .find(|a| a["action"] == "import")
        .expect("the interrupted import is audited");
    assert_eq!(row["count"], before);

    let j = env.run(&import_json(&file, &[])).ok().json();
    assert_eq!(j["imported"], N as i64 - before, "{j}");
    assert_eq!(j["already_present"], before, "{j}");
    assert_eq!(item_count(&env), N as i64);
}

/// Peak memory does not grow with the file: 200,000 lines of ~0.7 KB (140 MB, of which 120 MB
/// are one string per line, so holding the items alone would pass the bound) import in a
/// process whose peak RSS, read by `wait4` for that child alone, stays under 100 MiB.
#[test]
fn a_200k_line_import_stays_within_bounded_memory() {
    use std::io::{Read as _, Write as _};
    const N: usize = 200_000;
    const BOUND: u64 = 100 * 1024 * 1024;
    let env = waiting_env(0);
    let file = env.path("big.jsonl");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file).expect("create"));
        let note = "x".repeat(600);
        for i in 0..N {
            writeln!(
                out,
                "{{\"id\":\"m{i}\",\"name\":\"m{i}.jpg\",\"properties\":{{\"note\":\"{note}\"}},\"annotations\":[{{\"name\":\"tag\",\"tag\":{{}}}}]}}"
            )
            .expect("write");
        }
    }
    let size = std::fs::metadata(&file).expect("size").len();
    assert!(
        size > BOUND && N as u64 * 600 > BOUND,
        "the strings alone are over the bound ({size} bytes of file)"
    );
    // Reaped by `wait4` below, which also reads its peak RSS; std's `wait` cannot give that.
    #[allow(clippy::zombie_processes)]
    let mut child = command(&env)
        .args(["item", "import", s(&file), "--workflow", "flow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: wait4 on our own child, with pointers to locals that outlive the call. `child`
    // is not waited for again afterwards (it is only dropped).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(rc, pid, "wait4");
    let (stdout, stderr) = (out.join().expect("stdout"), err.join().expect("stderr"));
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{stderr}"
    );
    let j: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(j["imported"], N, "{j}");
    assert_eq!(item_count(&env), N as i64);
    let peak = ru.ru_maxrss as u64 * 1024;
    assert!(
        peak < BOUND,
        "peak RSS {} MB for a {} MB file",
        peak / 1_000_000,
        size / 1_000_000
    );
}

// ---------------------------------------------------------------------------------------------
// Moves

/// 100,000 items moved by one `assign --from-stage` while another process writes: the other
/// write lands between the bulk move's chunks. Proof by order, not by timing: the single
/// item's move is recorded after the first bulk item moved and before the last one did.
#[test]
fn bulk_assign_of_100k_items_lets_another_process_write_in_between() {
    const N: usize = 100_000;
    let env = waiting_env(0);
    let file = env.write("big.jsonl", &plain_items("b", N));
    let r = env
        .run(&["item", "import", s(&file), "--workflow", "flow"])
        .ok();
    assert!(
        r.stdout.contains(&format!("imported {N} item(s)")),
        "{r:#?}"
    );
    // Progress is for a terminal; stderr here is a pipe.
    assert!(!r.stderr.contains("imported"), "{r:#?}");
    // The single item sits outside the bulk move's source stage.
    let one = env.write("one.jsonl", "{\"id\":\"single\",\"name\":\"s.jpg\"}\n");
    env.run(&["item", "import", s(&one), "--workflow", "flow"])
        .ok();
    env.run(&["assign", "--workflow", "flow", "--stage", "other", "single"])
        .ok();

    let bulk = env.spawn(&[
        "assign",
        "--workflow",
        "flow",
        "--stage",
        "work",
        "--from-stage",
        "dataset",
        "--operator",
        "bulk-op",
    ]);
    // Wait until the bulk move has committed its first chunk.
    wait_for(
        "the bulk assign to start moving",
        Duration::from_secs(120),
        || env.stage_counts("flow").get("work").copied().unwrap_or(0) > 0,
    );
    let single = env
        .run(&[
            "item",
            "advance",
            "single",
            "--expect-stage",
            "other",
            "--operator",
            "other-op",
        ])
        .ok();
    assert!(single.stdout.contains("advanced 1 item(s)"), "{single:#?}");

    let out = bulk.wait_with_output().expect("bulk assign");
    let bulk = finish(out).ok();
    assert!(
        bulk.stdout.contains(&format!("assigned {N} item(s)")),
        "{bulk:#?}"
    );
    let counts = env.stage_counts("flow");
    assert_eq!(counts["work"], N as i64);
    assert_eq!(counts["dataset"], 0);
    assert_eq!(counts["done"], 1);

    let moved_at = |id: &str, to: &str| -> String {
        let d = env.item(id);
        let h = d["history"].as_array().expect("history");
        h.iter()
            .rev()
            .find(|e| e["to"] == to)
            .and_then(|e| e["at"].as_str())
            .unwrap_or_else(|| panic!("{id} never entered {to}: {d}"))
            .to_string()
    };
    let first = chrono::DateTime::parse_from_rfc3339(&moved_at("b0", "work")).expect("time");
    let last = chrono::DateTime::parse_from_rfc3339(&moved_at(&format!("b{}", N - 1), "work"))
        .expect("time");
    let between = chrono::DateTime::parse_from_rfc3339(&moved_at("single", "done")).expect("time");
    assert!(
        first <= between && between < last,
        "the other process's write ({between}) landed inside the bulk move ({first} … {last})"
    );

    let audit = env.audit();
    let row = audit
        .iter()
        .find(|a| a["operator"] == "bulk-op")
        .expect("an audit row for the bulk assign");
    assert_eq!(row["action"], "assign");
    assert_eq!(row["count"], N as i64);
}

/// Issue 18: `assign --from-stage --dry-run` lists what would move, oldest first, and moves
/// nothing; the real assign's audit row names the front end and every item it moved; stage
/// pause and item advance are audited the same way.
#[test]
fn assign_dry_run_lists_and_moves_nothing_and_the_audit_names_the_ids_and_the_cli() {
    let env = waiting_env(3);
    let rows_before = env.audit().len();
    let args = [
        "assign",
        "--workflow",
        "flow",
        "--stage",
        "work",
        "--from-stage",
        "dataset",
    ];
    let plan = env
        .run(&[&args[..], &["--dry-run", "--json"]].concat())
        .ok()
        .json();
    assert_eq!(plan["matched"], 3, "{plan}");
    assert_eq!(plan["ids"], serde_json::json!(["it0", "it1", "it2"]));
    let text = env
        .run(&[&args[..], &["--dry-run", "--limit", "2"]].concat())
        .ok();
    assert_eq!(
        text.stdout,
        "would assign 2 item(s) to flow/work\nit0\nit1\n"
    );
    assert_eq!(env.stage_of("it0"), "dataset", "a dry run moves nothing");
    assert_eq!(env.audit().len(), rows_before, "nor audits anything");

    env.run(&args).ok();
    assert_eq!(env.stage_of("it2"), "work");
    env.run(&["item", "advance", "it1"]).ok();
    env.run(&["stage", "pause", "--workflow", "flow", "hook"])
        .ok();
    let audit = env.audit();
    let row = |action: &str| {
        audit
            .iter()
            .find(|a| a["action"] == action)
            .unwrap_or_else(|| panic!("no {action} row: {audit:?}"))
            .clone()
    };
    for action in ["assign", "advance", "pause"] {
        let r = row(action);
        assert_eq!(
            (&r["via"], &r["outcome"]),
            (&serde_json::json!("cli"), &serde_json::json!("done")),
            "{r}"
        );
    }
    let assign = row("assign");
    assert_eq!(assign["filter"], "--from-stage dataset");
    let shown = env
        .run(&["audit", "show", &assign["id"].to_string(), "--json"])
        .ok()
        .json();
    assert_eq!(
        shown["ids"],
        serde_json::json!(["it0", "it1", "it2"]),
        "{shown}"
    );
    assert_eq!(row("advance")["target"], "item it1");
}

#[test]
fn stale_actions_are_refused_saying_where_the_item_is_now() {
    let env = waiting_env(3);
    env.run(&["assign", "--workflow", "flow", "--stage", "work", "it0"])
        .ok();
    let version = env.item("it0")["version"].clone();

    // The script believed it0 was still in dataset.
    let r = env
        .run(&[
            "assign",
            "--workflow",
            "flow",
            "--stage",
            "other",
            "it0",
            "--expect-stage",
            "dataset",
        ])
        .code(1);
    assert!(
        r.stderr.contains("is now in stage `work`"),
        "says where the item is: {r:#?}"
    );
    assert_eq!(env.stage_of("it0"), "work");
    assert_eq!(env.item("it0")["version"], version, "nothing was written");

    let r = env
        .run(&["item", "advance", "it0", "--expect-stage", "dataset"])
        .code(1);
    assert!(r.stderr.contains("is now in stage `work`"), "{r:#?}");
    assert_eq!(env.stage_of("it0"), "work");

    // A bulk action partly refused moves the rest and says so (exit 1).
    let r = env
        .run(&[
            "assign",
            "--workflow",
            "flow",
            "--stage",
            "other",
            "it0",
            "it1",
            "--expect-stage",
            "dataset",
        ])
        .code(1);
    assert!(r.stdout.contains("assigned 1 item(s)"), "{r:#?}");
    assert!(r.stderr.contains("1 of 2"), "{r:#?}");
    assert_eq!(env.stage_of("it1"), "other");

    // The expected stage holds: accepted.
    env.run(&["item", "advance", "it0", "--expect-stage", "work"])
        .ok();
    assert_eq!(env.stage_of("it0"), "check");

    // A review needs its outcome.
    let r = env.run(&["item", "advance", "it0"]).code(1);
    assert!(r.stderr.contains("--outcome"), "{r:#?}");
    assert_eq!(env.stage_of("it0"), "check");
    env.run(&["item", "advance", "it0", "--outcome", "reject"])
        .ok();
    assert_eq!(env.stage_of("it0"), "work");
    env.run(&["item", "advance", "it0"]).ok();
    env.run(&["item", "advance", "it0", "--outcome", "approve"])
        .ok();
    let it = env.item("it0");
    assert_eq!(it["stage"], "done");
    assert_eq!(it["state"], "done");
}

// ---------------------------------------------------------------------------------------------
// The database file

#[cfg(unix)]
#[test]
fn a_new_database_is_0600_or_the_mode_asked_for() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .expect("database file")
            .permissions()
            .mode()
            & 0o777
    };
    let env = Env::new();
    let wf = env.write("flow.toml", WAITING_WORKFLOW);
    let r = env.apply(&wf).ok();
    assert_eq!(mode(&env.db), 0o600);
    // A command that creates the file says so.
    assert!(
        r.stderr.contains("created a new database") && r.stderr.contains("0600"),
        "{r:#?}"
    );
    let again = env.apply(&wf).ok();
    assert!(!again.stderr.contains("created"), "{again:#?}");

    let team = env.path("team.db");
    let r = finish(
        bare_command(&env)
            .arg("--db")
            .arg(&team)
            .args(["--db-mode", "0660", "workflow", "apply", s(&wf)])
            .output()
            .expect("run"),
    )
    .ok();
    assert_eq!(mode(&team), 0o660, "{r:#?}");

    let by_env = env.path("env.db");
    finish(
        bare_command(&env)
            .arg("--db")
            .arg(&by_env)
            .env("HOOKOPS_DB_MODE", "0640")
            .args(["workflow", "apply", s(&wf)])
            .output()
            .expect("run"),
    )
    .ok();
    assert_eq!(mode(&by_env), 0o640);

    // An existing file keeps its mode.
    std::fs::set_permissions(&env.db, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    env.run(&["--db-mode", "0600", "workflow", "list"]).ok();
    assert_eq!(mode(&env.db), 0o640);

    let bad = env.run(&["--db-mode", "999", "workflow", "list"]).code(2);
    assert!(bad.stderr.contains("999"), "{bad:#?}");
    // Modes with bits for other users are refused with the reason, creating nothing.
    for world in ["0666", "0644", "0604"] {
        let path = env.path(&format!("world-{world}.db"));
        let r = finish(
            bare_command(&env)
                .arg("--db")
                .arg(&path)
                .args(["--db-mode", world, "workflow", "apply", s(&wf)])
                .output()
                .expect("run"),
        )
        .code(2);
        assert!(
            r.stderr.contains(world) && r.stderr.contains("other users"),
            "{world}: {r:#?}"
        );
        assert!(!path.exists(), "{world}: nothing created");
    }
}

#[test]
fn a_dash_reads_the_workflow_and_the_items_from_standard_input() {
    let env = Env::new();
    let piped = |args: &[&str], input: &str| -> Run {
        let mut child = command(&env)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        std::io::Write::write_all(&mut stdin, input.as_bytes()).expect("write stdin");
        drop(stdin);
        finish(child.wait_with_output().expect("wait"))
    };
    let r = piped(&["workflow", "apply", "-"], WAITING_WORKFLOW).ok();
    assert!(r.stdout.contains("workflow flow created"), "{r:#?}");
    let r = piped(
        &["item", "import", "-", "--workflow", "flow"],
        &plain_items("in", 3),
    )
    .ok();
    assert!(r.stdout.contains("imported 3 item(s)"), "{r:#?}");
    assert_eq!(env.items().len(), 3);
    // Diagnostics name standard input.
    let r = piped(
        &["workflow", "apply", "-", "--check"],
        "id = \"x\"\nbogus = 1\n",
    )
    .code(2);
    assert!(r.stderr.contains("<stdin>:"), "{r:#?}");
}

#[test]
fn a_mistyped_db_creates_nothing_and_says_so() {
    let env = waiting_env(1);
    let typo = env.path("hookpos.db");
    let reads: &[&[&str]] = &[
        &["item", "list"],
        &["item", "show", "it0"],
        &["deliveries"],
        &["deliveries", "export"],
        &["delivery", "show", "msg_x"],
        &["workflow", "list"],
        &["workflow", "show", "flow"],
        &["audit"],
        &["check"],
        &["backup", "copy.db"],
        &["policy", "show"],
        &["prune", "--older-than", "30d", "--dry-run"],
        // Actions on a database that is not there have nothing to act on either.
        &["assign", "--workflow", "flow", "--stage", "work", "it0"],
        &["refire", "--failed", "--workflow", "flow", "--yes"],
        &["stage", "pause", "--workflow", "flow", "hook"],
        &["item", "import", "items.jsonl", "--workflow", "flow"],
        // The console without --create.
        &[],
    ];
    for args in reads {
        let r = finish(
            bare_command(&env)
                .current_dir(env.dir.path())
                .arg("--db")
                .arg(&typo)
                .args(*args)
                .output()
                .expect("run"),
        )
        .code(1);
        let msg = r.one_line_error();
        assert!(
            msg.contains("no database at") && msg.contains("hookpos.db"),
            "{args:?}: {r:#?}"
        );
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }
    // $HOOKOPS_DB mistyped: the same.
    let r = finish(
        bare_command(&env)
            .env("HOOKOPS_DB", &typo)
            .args(["item", "list"])
            .output()
            .expect("run"),
    )
    .code(1);
    assert!(r.one_line_error().contains("no database at"), "{r:#?}");
    assert!(!typo.exists());
    // The real database still answers.
    assert_eq!(env.items().len(), 1);
}

#[test]
fn read_only_refuses_every_write_and_leaves_the_file_unchanged() {
    let env = waiting_env(3);
    let wal = PathBuf::from(format!("{}-wal", env.db.display()));
    let before = (bytes(&env.db), bytes(&wal));
    let items = env.path("items.jsonl");
    let wf = env.path("flow.toml");
    let writes: Vec<Vec<&str>> = vec![
        vec!["assign", "--workflow", "flow", "--stage", "work", "it0"],
        vec!["item", "advance", "it0"],
        vec!["item", "import", s(&items), "--workflow", "flow"],
        vec!["workflow", "apply", s(&wf)],
    ];
    for args in writes {
        let mut all: Vec<&str> = vec!["--read-only"];
        all.extend(args.iter().copied());
        let r = env.run(&all).code(1);
        assert!(
            r.one_line_error().contains("read-only"),
            "{args:?} is refused as read-only: {r:#?}"
        );
    }
    // Reads work read-only.
    let list = env
        .run(&["--read-only", "item", "list", "--json"])
        .ok()
        .json();
    assert_eq!(list.as_array().map(Vec::len), Some(3));
    assert_eq!(
        (bytes(&env.db), bytes(&wal)),
        before,
        "the database is byte for byte unchanged"
    );
    assert_eq!(env.stage_of("it0"), "dataset");
    assert_eq!(
        env.audit().len(),
        2,
        "no audit rows either: apply and import only"
    );

    // Read-only never creates a database.
    let missing = env.path("missing.db");
    let r = finish(
        bare_command(&env)
            .arg("--db")
            .arg(&missing)
            .args(["--read-only", "workflow", "list"])
            .output()
            .expect("run"),
    )
    .code(1);
    r.one_line_error();
    assert!(!missing.exists());
}

#[test]
fn a_foreign_sqlite_file_is_refused_and_left_alone() {
    let env = Env::new();
    {
        let c = rusqlite::Connection::open(&env.db).expect("foreign db");
        c.execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');")
            .expect("foreign schema");
    }
    let before = bytes(&env.db);
    let wf = env.write("flow.toml", WAITING_WORKFLOW);
    for r in [env.run(&["workflow", "list"]), env.apply(&wf)] {
        let r = r.code(1);
        let msg = r.one_line_error();
        assert!(
            msg.contains("another program") && msg.contains(&env.db.display().to_string()),
            "{r:#?}"
        );
    }
    assert_eq!(
        bytes(&env.db),
        before,
        "the other program's file is untouched"
    );
    let c = rusqlite::Connection::open(&env.db).expect("reopen");
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("tables");
    assert_eq!(tables, vec!["notes"]);
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_and_left_alone() {
    let env = Env::new();
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for (name, bytes) in [
        ("garbage.db", garbage),
        (
            "notes.txt",
            b"these are my notes, not a database\n".repeat(200),
        ),
    ] {
        let path = env.path(name);
        std::fs::write(&path, &bytes).expect("write");
        let r = finish(
            bare_command(&env)
                .arg("--db")
                .arg(&path)
                .args(["workflow", "list"])
                .output()
                .expect("run"),
        )
        .code(1);
        let msg = r.one_line_error();
        assert!(
            msg.contains("not an SQLite database") && msg.contains(name),
            "{r:#?}"
        );
        assert_eq!(
            std::fs::read(&path).expect("read"),
            bytes,
            "{name} untouched"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Errors, usage and output

#[test]
fn unknown_ids_exit_1_with_one_sentence() {
    let env = waiting_env(1);
    let items = env.path("items.jsonl");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["item", "show", "nope"], "`nope`"),
        (vec!["workflow", "show", "nope"], "`nope`"),
        (
            vec!["item", "import", s(&items), "--workflow", "nope"],
            "`nope`",
        ),
        (
            vec!["assign", "--workflow", "nope", "--stage", "work", "it0"],
            "`nope`",
        ),
        (
            vec!["assign", "--workflow", "flow", "--stage", "nostage", "it0"],
            "nostage",
        ),
        (
            vec![
                "assign",
                "--workflow",
                "flow",
                "--stage",
                "work",
                "--from-stage",
                "nostage",
            ],
            "nostage",
        ),
        // Bulk actions over a scope that does not exist say so, not "nothing matches".
        (
            vec!["refire", "--failed", "--workflow", "nope", "--yes"],
            "`nope`",
        ),
        (
            vec![
                "refire",
                "--failed",
                "--workflow",
                "flow",
                "--stage",
                "nostage",
                "--yes",
            ],
            "nostage",
        ),
        (
            vec!["delivery", "cancel", "--workflow", "nope", "--yes"],
            "`nope`",
        ),
        // An action the stage cannot take is a refusal, not bad usage.
        (
            vec!["stage", "pause", "--workflow", "flow", "work"],
            "only webhook stages can be paused",
        ),
        (
            vec!["stage", "resume", "--workflow", "flow", "dataset"],
            "only webhook stages can be paused",
        ),
        (
            vec!["test-webhook", "--workflow", "flow", "--stage", "work"],
            "only webhook stages can be tested",
        ),
    ];
    for (args, words) in cases {
        let r = env.run(&args).code(1);
        assert!(r.one_line_error().contains(words), "{args:?}: {r:#?}");
    }
    // Items named in an action: refused one by one, the run fails as a whole.
    for args in [
        vec!["item", "advance", "nope"],
        vec!["assign", "--workflow", "flow", "--stage", "work", "nope"],
    ] {
        let r = env.run(&args).code(1);
        assert!(r.stderr.contains("no item with id `nope`"), "{r:#?}");
    }
    assert_eq!(env.stage_of("it0"), "dataset");
}

#[test]
fn bad_usage_exits_2() {
    let env = waiting_env(1);
    let cases: &[&[&str]] = &[
        &["frobnicate"],
        &["item", "import"],
        &["item", "import", "x.jsonl"],
        &["item", "list", "--limit", "lots"],
        &["item", "list", "--state", "sleeping"],
        &["item", "advance", "it0", "--outcome", "maybe"],
        &["item", "advance"],
        &["assign", "--stage", "work", "it0"],
        &["assign", "--workflow", "flow", "--stage", "work"],
        &[
            "assign",
            "--workflow",
            "flow",
            "--stage",
            "work",
            "--from-stage",
            "dataset",
            "it0",
        ],
        &["workflow", "apply"],
        &["workflow", "apply", "flow.toml", "--move", "nonsense"],
        // A mutation's --stage needs --workflow (design §6).
        &["refire", "--failed", "--stage", "hook", "--yes"],
        &["delivery", "cancel", "--stage", "hook", "--yes"],
        // A bulk action's --limit 0 would mean all or nothing: refused.
        &[
            "assign",
            "--workflow",
            "flow",
            "--stage",
            "work",
            "--from-stage",
            "dataset",
            "--limit",
            "0",
        ],
        &[
            "refire",
            "--failed",
            "--workflow",
            "flow",
            "--limit",
            "0",
            "--yes",
        ],
        &[
            "delivery",
            "cancel",
            "--workflow",
            "flow",
            "--limit",
            "0",
            "--yes",
        ],
        &["workflow", "apply", "/definitely/not/here.toml"],
        &[
            "item",
            "import",
            "/definitely/not/here.jsonl",
            "--workflow",
            "flow",
        ],
    ];
    for args in cases {
        let r = env.run(args).code(2);
        assert!(!r.stderr.trim().is_empty(), "{args:?} says why: {r:#?}");
        assert!(!r.stderr.contains("panicked"), "{r:#?}");
    }
    assert_eq!(env.stage_of("it0"), "dataset");
    // `--help` is not an error.
    for args in [
        &["--help"][..],
        &["assign", "--help"],
        &["item", "import", "--help"],
    ] {
        env.run(args).ok();
    }
}

#[test]
fn json_outputs_carry_the_documented_fields() {
    let env = waiting_env(3);
    let is_str = |v: &Value, key: &str| {
        assert!(v[key].is_string(), "`{key}` is a string in {v}");
    };
    let list = env.run(&["item", "list", "--json"]).ok().json();
    let rows = list.as_array().expect("item list is an array");
    assert_eq!(rows.len(), 3);
    for r in rows {
        for key in ["id", "name", "workflow", "stage", "state"] {
            is_str(r, key);
        }
        assert_eq!(r["workflow"], "flow");
        assert_eq!(r["stage"], "dataset");
        assert_eq!(r["state"], "waiting");
    }
    let one = env.item("it1");
    for key in ["id", "name", "workflow", "stage", "state"] {
        is_str(&one, key);
    }
    assert_eq!(one["id"], "it1");
    assert!(one["history"].is_array() && one["deliveries"].is_array());

    let moved = env
        .run(&[
            "assign",
            "--workflow",
            "flow",
            "--stage",
            "work",
            "it1",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(moved["moved"], 1);
    let adv = env.run(&["item", "advance", "it1", "--json"]).ok().json();
    assert_eq!(adv["moved"], 1);

    let wfs = env.run(&["workflow", "list", "--json"]).ok().json();
    let w = &wfs.as_array().expect("workflow list is an array")[0];
    is_str(w, "id");
    is_str(w, "name");
    assert_eq!(w["items"], 3);
    let shown = env.run(&["workflow", "show", "flow", "--json"]).ok().json();
    assert_eq!(shown["id"], "flow");
    let stages = shown["stage_list"].as_array().expect("stage_list");
    assert_eq!(stages.len(), 6);
    for s in stages {
        is_str(s, "id");
        is_str(s, "kind");
    }
    let audit = env.audit();
    assert!(
        audit
            .iter()
            .all(|a| a["operator"].is_string() && a["action"].is_string())
    );

    // Filters narrow the listing.
    let work = env
        .run(&["item", "list", "--json", "--stage", "check"])
        .ok()
        .json();
    assert_eq!(work.as_array().map(Vec::len), Some(1));
    let search = env
        .run(&["item", "list", "--json", "--search", "it2"])
        .ok()
        .json();
    assert_eq!(search[0]["id"], "it2");
}

#[test]
fn every_mutating_command_writes_an_audit_row_with_its_operator() {
    let env = Env::new();
    let wf = env.write("flow.toml", WAITING_WORKFLOW);
    let items = env.write("items.jsonl", &plain_items("it", 4));
    let as_alice = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--operator", "alice"]);
        env.run(&all).ok()
    };
    as_alice(&["workflow", "apply", s(&wf)]);
    as_alice(&["item", "import", s(&items), "--workflow", "flow"]);
    as_alice(&[
        "assign",
        "--workflow",
        "flow",
        "--stage",
        "work",
        "--from-stage",
        "dataset",
    ]);
    as_alice(&["item", "advance", "it0", "it1"]);
    as_alice(&["item", "advance", "it0", "--outcome", "approve"]);
    as_alice(&["item", "advance", "it1", "--outcome", "reject"]);
    // Without --operator, $USER.
    env.run(&["assign", "--workflow", "flow", "--stage", "other", "it2"])
        .ok();

    let audit = env.audit();
    let find = |action: &str, operator: &str| {
        audit
            .iter()
            .find(|a| a["action"] == action && a["operator"] == operator)
            .unwrap_or_else(|| panic!("no `{action}` row by {operator} in {audit:#?}"))
    };
    find("apply", "alice");
    assert_eq!(find("import", "alice")["count"], 4);
    assert_eq!(find("assign", "alice")["count"], 4);
    assert_eq!(find("advance", "alice")["count"], 2);
    assert_eq!(find("approve", "alice")["count"], 1);
    assert_eq!(find("reject", "alice")["count"], 1);
    assert_eq!(find("assign", "tester")["count"], 1);
    // Newest first.
    assert_eq!(audit[0]["operator"], "tester");
    // `--limit 0` is all of it, as in the listings; the default shows the newest 50.
    let all = env.run(&["audit", "--json", "--limit", "0"]).ok().json();
    assert_eq!(all.as_array().expect("an array").len(), audit.len());
    // The item's history names the operator too.
    let h = env.item("it0")["history"].clone();
    assert!(
        h.as_array()
            .expect("history")
            .iter()
            .any(|e| e["cause"] == "approve" && e["operator"] == "alice"),
        "{h}"
    );
    // Times in tables carry their zone: `2026-11-28 01:47:40Z`.
    for args in [&["audit"][..], &["item", "list"]] {
        let text = env.run(args).ok().stdout;
        // Every `dddd-dd-dd dd:dd:dd` and the character after it.
        let shape = b"dddd-dd-dd dd:dd:dd";
        let times: Vec<&[u8]> = text
            .as_bytes()
            .windows(shape.len() + 1)
            .filter(|w| {
                w.iter().zip(shape).all(|(c, s)| match s {
                    b'd' => c.is_ascii_digit(),
                    s => c == s,
                })
            })
            .collect();
        assert!(!times.is_empty(), "{args:?}: {text}");
        for t in times {
            assert_eq!(
                t.last(),
                Some(&b'Z'),
                "{args:?}: no zone after a time: {text}"
            );
        }
    }
}

#[test]
fn item_list_shows_1000_rows_by_default_and_says_how_many_more() {
    let env = waiting_env(1005);
    let r = env.run(&["item", "list", "--json"]).ok();
    assert_eq!(r.json().as_array().map(Vec::len), Some(1000));
    assert!(r.stderr.contains("5 more item(s)"), "{r:#?}");

    let r = env.run(&["item", "list"]).ok();
    assert_eq!(r.stdout.lines().count(), 1001, "a header and 1000 rows");
    assert!(r.stderr.contains("5 more item(s)"), "{r:#?}");

    let r = env.run(&["item", "list", "--limit", "3", "--json"]).ok();
    assert_eq!(r.json().as_array().map(Vec::len), Some(3));
    assert!(r.stderr.contains("1002 more item(s)"), "{r:#?}");

    let r = env.run(&["item", "list", "--limit", "0", "--json"]).ok();
    assert_eq!(r.json().as_array().map(Vec::len), Some(1005));
    assert!(r.stderr.trim().is_empty(), "nothing was cut: {r:#?}");

    // Oldest first: import order.
    let first = env
        .run(&["item", "list", "--limit", "2", "--json"])
        .ok()
        .json();
    assert_eq!(first[0]["id"], "it0");
    assert_eq!(first[1]["id"], "it1");
}

/// `hookops item list --json | head` must end quietly when the reader goes away.
#[test]
fn a_closed_stdout_ends_a_listing_quietly() {
    let env = waiting_env(1005);
    let mut child = env.spawn(&["item", "list", "--json", "--limit", "0"]);
    // Far more than a pipe buffer is printed, so the writes meet the closed pipe.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let r = finish(out);
    assert!(!r.stderr.contains("panicked"), "{r:#?}");
    assert_ne!(r.code, 101, "{r:#?}");
}

#[test]
fn the_database_path_is_hookops_db_else_the_xdg_data_dir() {
    let env = Env::new();
    let wf = env.write("flow.toml", WAITING_WORKFLOW);
    let run = |hookops_db: Option<&Path>| {
        let mut c = Command::new(BIN);
        c.env("HOME", env.dir.path())
            .env("XDG_DATA_HOME", env.dir.path().join("xdg"))
            .env_remove("HOOKOPS_DB_MODE")
            .env_remove("HOOKOPS_DB")
            .args(["workflow", "apply", s(&wf)]);
        if let Some(p) = hookops_db {
            c.env("HOOKOPS_DB", p);
        }
        let r = finish(c.output().expect("run")).ok();
        assert!(r.stdout.contains("workflow flow created"), "{r:#?}");
    };
    let from_env = env.path("from-env.db");
    run(Some(&from_env));
    assert!(from_env.exists());
    run(None);
    assert!(env.path("xdg/hookops/hookops.db").exists());
}
