//! What the delivery benchmarks share: the receiver subprocess, the keep-alive baseline, the
//! generated workflow and items, and CPU figures read from /proc.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_hookops");

/// A `hookops receiver` subprocess, killed on drop.
pub struct ReceiverProcess {
    pub child: Child,
    pub base: String,
}

impl ReceiverProcess {
    pub fn start(record: Option<&Path>) -> ReceiverProcess {
        ReceiverProcess::scripted(record, None)
    }

    pub fn scripted(record: Option<&Path>, script: Option<&str>) -> ReceiverProcess {
        let mut cmd = Command::new(BIN);
        cmd.args(["receiver", "--port", "0", "--quiet"]);
        if let Some(s) = script {
            cmd.args(["--script", s]);
        }
        if let Some(p) = record {
            cmd.arg("--record").arg(p);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the hookops binary starts");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("receiver prints where it listens");
        // "hookops receiver listening on http://127.0.0.1:PORT · …"
        let base = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("unexpected receiver banner: {line}"))
            .to_string();
        ReceiverProcess { child, base }
    }
}

impl Drop for ReceiverProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn hookops(db: &Path, args: &[&str]) {
    let out = Command::new(BIN)
        .arg("--db")
        .arg(db)
        .args(["--operator", "bench"])
        .args(args)
        .output()
        .expect("the hookops binary runs");
    assert!(
        out.status.success(),
        "hookops {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn workflow_toml(id: &str, url: &str) -> String {
    format!(
        r#"id = "{id}"
name = "Benchmark {id}"
team = "bench"

[[stage]]
id = "dataset"
name = "Dataset"
kind = "dataset"
next = "hook"

[[stage]]
id = "hook"
name = "Hook"
kind = "webhook"
url = "{url}"
include_annotations = true
on_success = "complete"

[[stage]]
id = "complete"
name = "Complete"
kind = "complete"
"#
    )
}

/// Items whose Darwin body comes to ~2 KiB: seven boxes and a polygon.
pub fn items_jsonl(prefix: &str, n: usize) -> String {
    let mut s = String::with_capacity(n * 1500);
    for i in 0..n {
        let f = i as f64;
        let ann = |k: usize, name: &str| {
            format!(
                r#"{{"name": "{name}", "slot_names": ["0"], "bounding_box": {{"x": {:.4}, "y": {:.4}, "w": {:.4}, "h": {:.4}}}, "properties": []}}"#,
                100.0 + f + k as f64,
                200.5 + f,
                64.25 + k as f64,
                48.75
            )
        };
        s.push_str(&format!(
            r#"{{"id": "{prefix}-{i:06}", "name": "weld_{i:06}.jpg", "path": "/line-3/2024-09-07", "tags": ["night-shift", "bench"], "properties": {{"camera": "cam-south-1", "line": 3}}, "annotations": [{}, {}, {}, {}, {}, {}, {}, {{"name": "crack", "slot_names": ["0"], "properties": [], "polygon": {{"paths": [[{{"x": 1630.8456, "y": 237.9172}}, {{"x": 1585.3297, "y": 249.2353}}, {{"x": 1412.0545, "y": 181.3502}}, {{"x": 1483.2359, "y": 189.8918}}]]}}}}]}}"#,
            ann(0, "spatter"),
            ann(1, "porosity"),
            ann(2, "undercut"),
            ann(3, "spatter"),
            ann(4, "porosity"),
            ann(5, "crack"),
            ann(6, "undercut"),
        ));
        s.push('\n');
    }
    s
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The same pool settings as the engine's sender (src/dispatch/http.rs).
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .expect("client builds")
}

/// Plain keep-alive POSTs of `bodies` with `concurrency` tasks: requests per second.
pub async fn baseline(url: &str, bodies: Arc<Vec<Vec<u8>>>, concurrency: usize) -> f64 {
    let client = client();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, next, bodies, url) = (
            client.clone(),
            next.clone(),
            bodies.clone(),
            url.to_string(),
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let resp = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .expect("baseline POST");
                assert!(resp.status().is_success());
                let _ = resp.bytes().await.expect("baseline response body");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    bodies.len() as f64 / started.elapsed().as_secs_f64()
}

/// Follows the recording receiver's JSON lines.
pub struct RecordTail {
    pub file: std::fs::File,
    pub pending: String,
}

impl RecordTail {
    /// Waits for the next recorded request: (webhook-id, arrival time in µs since the epoch).
    pub fn next(&mut self, deadline: Instant) -> (String, i64) {
        loop {
            if let Some(nl) = self.pending.find('\n') {
                let line: String = self.pending.drain(..=nl).collect();
                let v: serde_json::Value = serde_json::from_str(&line).expect("record line");
                let id = v["webhook_id"].as_str().unwrap_or_default().to_string();
                let at = chrono::DateTime::parse_from_rfc3339(v["at"].as_str().expect("at"))
                    .expect("rfc3339 time")
                    .timestamp_micros();
                return (id, at);
            }
            let mut buf = String::new();
            self.file.read_to_string(&mut buf).expect("record file");
            self.pending.push_str(&buf);
            if buf.is_empty() {
                assert!(Instant::now() < deadline, "no request arrived within 10 s");
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// CPU time (user + system) of a whole process, from /proc (10 ms ticks).
pub fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ticks: u64 = stat
        .rfind(')')
        .map(|close| {
            stat[close + 1..]
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// CPU time (user + system) of this process's threads whose name starts with `prefix`, from
/// /proc (10 ms ticks): less noisy than wall time on a shared machine.
pub fn thread_cpu(prefix: &str) -> Duration {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        // utime and stime are fields 14 and 15; fields after the name start at field 3.
        ticks += stat[close + 1..]
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|v| v.parse::<u64>().ok())
            .sum::<u64>();
    }
    Duration::from_millis(ticks * 10)
}

/// This process's peak resident set (VmHWM), in MB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}
