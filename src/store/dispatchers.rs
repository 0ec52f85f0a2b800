//! Dispatchers' heartbeat rows: who is dispatching, from which host and process, and which
//! of them on this host are gone (their leases may be taken at once, design §6).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::seam::Heartbeat;
use super::{Result, Store};

/// How long a dispatcher on another host may stay silent before its heartbeat row goes (once
/// it holds no lease): well beyond a beat (2 s) and a lease's margin (30 s), so a host that
/// is only slow or briefly cut off keeps its row.
pub const DEPARTED_AFTER: std::time::Duration = std::time::Duration::from_secs(120);

/// A running dispatcher, as its heartbeat row records it.
#[derive(Clone, Debug, Serialize)]
pub struct DispatcherInfo {
    pub id: String,
    pub pid: u32,
    pub host: String,
    /// The process's start time as the OS reports it, to tell a reused pid apart.
    pub process_start: String,
    pub concurrency: u32,
    pub started_at: DateTime<Utc>,
    pub last_beat: DateTime<Utc>,
}

/// The name of this host in heartbeat rows: `HOOKOPS_HOST` when set, else the kernel's
/// hostname (read from `/proc`, no libc call).
///
/// A dispatcher on "this host" whose pid is gone is dead at once, so two machines (or
/// containers) sharing a database must not share a name: where hostnames collide, give each
/// its own `HOOKOPS_HOST`. The tests use it to run dispatchers "on other hosts".
pub fn hostname() -> String {
    if let Some(host) = std::env::var("HOOKOPS_HOST")
        .ok()
        .filter(|h| !h.trim().is_empty())
    {
        return host.trim().to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The start time of a process (field 22 of `/proc/PID/stat`), or `None` when it is gone.
pub fn process_start(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19).map(str::to_string)
}

impl Store {
    /// Writes this dispatcher's heartbeat row (insert or refresh), and removes the rows of
    /// dispatchers on other hosts that are gone: silent for [`DEPARTED_AFTER`] and holding no
    /// lease (their leases were taken when they expired). A process on this host is judged
    /// by its pid instead, when its leases are taken.
    pub async fn heartbeat(&self, info: &DispatcherInfo) -> Result<()> {
        self.set_dispatch_concurrency(info.concurrency);
        let info = info.clone();
        self.write_async("dispatch", move |c| {
            c.rows().delete_departed_dispatchers(
                &info.host,
                c.now() - DEPARTED_AFTER.as_millis() as i64,
            )?;
            c.rows().upsert_heartbeat(&Heartbeat {
                id: &info.id,
                pid: info.pid,
                host: &info.host,
                process_start: &info.process_start,
                started_at: info.started_at.timestamp_millis(),
                now: c.now(),
                concurrency: info.concurrency,
            })
        })
        .await
    }

    /// Removes this dispatcher's heartbeat row (clean shutdown).
    pub async fn unregister_dispatcher(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.write_async("dispatch", move |c| c.rows().delete_dispatcher(&id))
            .await
    }

    /// Every heartbeat row, newest beat first.
    pub fn dispatchers(&self) -> Result<Vec<DispatcherInfo>> {
        self.read(|r| r.dispatchers())
    }

    /// Dispatchers on this host whose process is gone (their leases may be taken at once).
    pub fn dead_local_dispatchers(&self) -> Result<Vec<String>> {
        let host = hostname();
        Ok(self
            .dispatchers()?
            .into_iter()
            .filter(|d| d.host == host && process_start(d.pid).as_deref() != Some(&d.process_start))
            .map(|d| d.id)
            .collect())
    }
}
