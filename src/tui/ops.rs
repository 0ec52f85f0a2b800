//! The console's day-two pieces: the `:health` table, exporting the deliveries view, and the
//! flash line of a cancel. The store does the work; this only words and draws it.

use ratatui::layout::Constraint;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Row};

use super::state::{Level, Msg};
use super::theme::Theme;
use crate::store::{CheckStatus, DeliveryFilter, HealthReport, Store};

/// Rows of the health view: one per check (glyph and word, so colour is never the only signal).
pub(crate) fn health_table(
    r: &HealthReport,
    shown: &[usize],
    theme: &Theme,
) -> (Vec<&'static str>, Vec<Row<'static>>, Vec<Constraint>) {
    let rows = shown
        .iter()
        .filter_map(|i| r.checks.get(*i))
        .map(|c| {
            let (glyph, style) = match c.status {
                CheckStatus::Ok => ("✓ ok", theme.good),
                CheckStatus::Warn => ("! warn", theme.warn),
                CheckStatus::Fail => ("✗ FAIL", theme.bad),
                CheckStatus::Skipped => ("- skip", theme.dim),
            };
            let mut detail = crate::sanitize::strip_controls(&c.detail);
            if c.repairable {
                detail.push_str("  [hookops check --repair]");
            }
            Row::new(vec![
                Cell::from(Span::styled(glyph, style)),
                Cell::from(c.name),
                Cell::from(Line::from(detail)),
            ])
        })
        .collect();
    let title = if r.ok {
        "CHECK"
    } else {
        "CHECK (something is wrong)"
    };
    (
        vec!["STATUS", title, "DETAIL"],
        rows,
        vec![
            Constraint::Length(7),
            Constraint::Length(20),
            Constraint::Min(20),
        ],
    )
}

/// The health view's title suffix: the file and its size.
pub(crate) fn health_title(r: &HealthReport) -> String {
    format!(
        " · {} ({})",
        crate::sanitize::strip_controls(&r.path.display().to_string()),
        crate::store::human_bytes(r.size_bytes)
    )
}

/// Writes the deliveries matching `filter` to a new 0600 file in the current directory.
pub(crate) fn export(s: &Store, filter: &DeliveryFilter) -> Msg {
    let name = format!(
        "hookops-export-{}.jsonl",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f")
    );
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let file = match o.open(&name) {
        Ok(f) => f,
        Err(e) => {
            return Msg::Done {
                text: format!("cannot create {name}: {e}"),
                level: Level::Error,
            };
        }
    };
    let mut out = std::io::BufWriter::new(file);
    match s.export_deliveries(filter, None, &mut out) {
        Ok(n) => Msg::Done {
            text: format!("exported {n} deliveries to ./{name}"),
            level: Level::Info,
        },
        Err(e) => Msg::Done {
            text: e.to_string(),
            level: Level::Error,
        },
    }
}
