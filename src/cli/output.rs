//! Plain-text tables and JSON printing shared by every subcommand.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::CliError;

/// Prints `value` as pretty JSON on stdout.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::failure(format!("cannot encode JSON: {e}")))?;
    outln!("{text}");
    Ok(())
}

/// A left-aligned text table; the last column is not padded.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(c.chars().count());
                }
            }
        }
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(c);
                } else {
                    let pad = widths[i].saturating_sub(c.chars().count());
                    s.push_str(c);
                    s.push_str(&" ".repeat(pad + 2));
                }
            }
            s.trim_end().to_string()
        };
        let mut result = writeln!(out, "{}", line(&self.header));
        for r in &self.rows {
            result = result.and_then(|_| writeln!(out, "{}", line(r)));
        }
        if result.is_err_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) {
            std::process::exit(0);
        }
    }
}

/// Shortens an RFC 3339 time for tables, keeping its zone: `2026-11-28 01:47:40Z` (UTC).
pub fn time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// Removes control characters and escape sequences from text that came from outside.
pub fn clean(s: &str) -> String {
    crate::sanitize::strip_controls(s)
}

/// Progress of a long bulk action (import, re-fire, cancel), on standard error and only when
/// it is a terminal: a script or a log that reads stderr gets the result and nothing else.
/// One line, rewritten in place at most ten times a second and cleared when done.
pub struct Progress {
    verb: &'static str,
    total: usize,
    on: bool,
    last: Option<Instant>,
}

impl Progress {
    /// Progress of `verb` over `total` things; off for `--json` and when stderr is not a
    /// terminal.
    pub fn new(verb: &'static str, total: usize, json: bool) -> Progress {
        Progress {
            verb,
            total,
            on: !json && std::io::stderr().is_terminal(),
            last: None,
        }
    }

    pub fn update(&mut self, done: usize) {
        if !self.on
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        let line = format!("{} {done} of {}", self.verb, self.total);
        eprint!("\r{}\x1b[K", fit_line(&line));
    }
}

/// `line` cut to the terminal's width, less one column. A status line that is rewritten in
/// place with `\r` must never wrap: `\r` goes back to the start of the last screen line
/// only, so each redraw of a wrapped one would leave a line behind (an 81-character import
/// progress line at 80 columns scrolled the terminal four times a second).
pub fn fit_line(line: &str) -> String {
    let width = ratatui::crossterm::terminal::size().map_or(80, |(w, _)| usize::from(w));
    line.chars().take(width.saturating_sub(1)).collect()
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.on && self.last.is_some() {
            eprint!("\r\x1b[K");
        }
    }
}
