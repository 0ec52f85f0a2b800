//! The delivery filter as the front ends write it: the CLI's flags, the API's query parameters
//! and request bodies, and the console's `:dl` words all become [`FilterParams`] (text, as
//! typed) and are turned into one [`DeliveryFilter`] here, so a value means the same wherever
//! it is typed and a bad one is refused with the same sentence.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{DeliveryId, DeliveryState, DeliveryTrigger, ErrorKind, EventType};
use crate::model::{ItemId, StageId, WorkflowId};
use crate::store::{DeliveryFilter, StatusMatch};

/// The filter's fields as text. Lists (`status`, `error_kind`) are comma-separated; times are
/// RFC 3339 or a duration ago (`30m`, `2h ago`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// A stage id, or `notify:N` for the notifications of `[[notify]]` entry N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// pending, in_flight, retry_scheduled, succeeded, failed or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    /// stage.webhook, webhook.test or a notification event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// route, assign, refire or test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// The last attempt's HTTP status: codes and classes, comma-separated (`5xx,408`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The last attempt's error kind, comma-separated (`timeout,connect`). With `status`, a
    /// delivery matches either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// Created at or after: RFC 3339, or a duration ago (`30m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Created before: RFC 3339, or a duration ago.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Only the re-fires of this delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refire_of: Option<String>,
    /// The last error's cause, exactly as a failure group's `message` shows it
    /// (`timed out after # s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_class: Option<String>,
    /// A substring of the delivery id, the item id or the item's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<String>,
}

/// A filter value that does not parse: which field, and why (one sentence).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}", self.sentence())]
pub struct BadFilter {
    /// The field's name as the API spells it (`error_kind`); the CLI shows `--error-kind`.
    pub field: &'static str,
    pub message: String,
}

impl BadFilter {
    /// The field and what is wrong with it; a word of the console's `:dl` that fits no
    /// field is only the message.
    pub fn sentence(&self) -> String {
        if self.field == "filter" {
            self.message.clone()
        } else {
            format!("{} {}", self.field, self.message)
        }
    }
}

fn bad(field: &'static str, message: String) -> BadFilter {
    BadFilter { field, message }
}

/// A time: RFC 3339, or a duration before `now` (`90s`, `30m`, `2h ago`).
pub fn parse_time(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    let d = s.trim().trim_end_matches("ago").trim();
    humantime::parse_duration(d)
        .ok()
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .map(|d| now - d)
        .ok_or_else(|| format!("`{s}` is neither an RFC 3339 time nor a duration like `2h`"))
}

fn one<T: std::str::FromStr>(
    field: &'static str,
    v: &Option<String>,
) -> Result<Option<T>, BadFilter>
where
    T::Err: std::fmt::Display,
{
    v.as_deref()
        .map(|s| s.trim().parse::<T>().map_err(|e| bad(field, e.to_string())))
        .transpose()
}

fn list<T: std::str::FromStr>(field: &'static str, v: &Option<String>) -> Result<Vec<T>, BadFilter>
where
    T::Err: std::fmt::Display,
{
    let Some(v) = v else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        out.push(part.parse::<T>().map_err(|e| bad(field, e.to_string()))?);
    }
    if out.is_empty() {
        return Err(bad(field, "is empty".into()));
    }
    Ok(out)
}

impl FilterParams {
    /// The text form of a typed filter (times in RFC 3339): what the API answers where a
    /// filter can be sent back, such as a failure group's.
    pub fn of(f: &DeliveryFilter) -> FilterParams {
        let list = |v: Vec<String>| (!v.is_empty()).then(|| v.join(","));
        let time = |t: &DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        FilterParams {
            workflow: f.workflow.as_ref().map(|x| x.to_string()),
            stage: f.stage.as_ref().map(|x| x.to_string()),
            state: f.state.map(|x| x.to_string()),
            item: f.item.as_ref().map(|x| x.to_string()),
            event: f.event.map(|x| x.to_string()),
            trigger: f.trigger.map(|x| x.to_string()),
            status: list(f.statuses.iter().map(|x| x.to_string()).collect()),
            error_kind: list(f.error_kinds.iter().map(|x| x.to_string()).collect()),
            since: f.since.as_ref().map(time),
            until: f.until.as_ref().map(time),
            refire_of: f.refire_of.as_ref().map(|x| x.to_string()),
            message_class: f.message_class.clone(),
            search: f.search.clone(),
        }
    }

    /// The typed filter; durations are taken back from `now`.
    pub fn to_filter(&self, now: DateTime<Utc>) -> Result<DeliveryFilter, BadFilter> {
        let time = |field: &'static str, v: &Option<String>| {
            v.as_deref()
                .map(|s| parse_time(s, now).map_err(|m| bad(field, m)))
                .transpose()
        };
        let text = |field: &'static str, v: &Option<String>| match v.as_deref().map(str::trim) {
            Some("") => Err(bad(field, "is empty".into())),
            other => Ok(other.map(str::to_string)),
        };
        let f = DeliveryFilter {
            workflow: text("workflow", &self.workflow)?.map(WorkflowId::new),
            stage: text("stage", &self.stage)?.map(StageId::new),
            state: one::<DeliveryState>("state", &self.state)?,
            item: text("item", &self.item)?.map(ItemId::new),
            event: one::<EventType>("event", &self.event)?,
            trigger: one::<DeliveryTrigger>("trigger", &self.trigger)?,
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            error_kinds: list::<ErrorKind>("error_kind", &self.error_kind)?,
            statuses: list::<StatusMatch>("status", &self.status)?,
            refire_of: text("refire_of", &self.refire_of)?.map(DeliveryId::new),
            // Exactly as given: a cause is compared whole, spaces included.
            message_class: match self.message_class.as_deref() {
                Some("") => return Err(bad("message_class", "is empty".into())),
                other => other.map(str::to_string),
            },
            search: self.search.clone().filter(|q| !q.is_empty()),
        };
        if let (Some(s), Some(u)) = (f.since, f.until)
            && u <= s
        {
            return Err(bad(
                "until",
                format!("({u}) is not after since ({s}): the window is empty"),
            ));
        }
        Ok(f)
    }

    /// Reads the console's `:dl` words: `key=value` for any field (`stage=export`,
    /// `since=30m`), or a bare state (`failed`), error kind (`timeout`), status or class
    /// (`503`, `5xx`). Several statuses or kinds add up.
    pub fn from_words<'a>(words: impl Iterator<Item = &'a str>) -> Result<FilterParams, BadFilter> {
        let mut p = FilterParams::default();
        let add = |slot: &mut Option<String>, v: &str| {
            *slot = Some(match slot.take() {
                Some(old) => format!("{old},{v}"),
                None => v.to_string(),
            });
        };
        for w in words {
            if let Some((k, v)) = w.split_once('=') {
                match k.replace('-', "_").as_str() {
                    "workflow" | "wf" => p.workflow = Some(v.into()),
                    "stage" => p.stage = Some(v.into()),
                    "state" => p.state = Some(v.into()),
                    "item" => p.item = Some(v.into()),
                    "event" => p.event = Some(v.into()),
                    "trigger" => p.trigger = Some(v.into()),
                    "status" => add(&mut p.status, v),
                    "error_kind" | "kind" => add(&mut p.error_kind, v),
                    "since" => p.since = Some(v.into()),
                    "until" => p.until = Some(v.into()),
                    "refire_of" => p.refire_of = Some(v.into()),
                    "message_class" | "cause" => p.message_class = Some(v.into()),
                    "search" => p.search = Some(v.into()),
                    other => {
                        return Err(bad(
                            "filter",
                            format!(
                                "`{other}` is not a filter (workflow, stage, state, item, event, trigger, status, error_kind, since, until, refire_of, message_class, search)"
                            ),
                        ));
                    }
                }
            } else if w.parse::<DeliveryState>().is_ok() {
                p.state = Some(w.into());
            } else if w.parse::<ErrorKind>().is_ok() {
                add(&mut p.error_kind, w);
            } else if w.parse::<StatusMatch>().is_ok() {
                add(&mut p.status, w);
            } else {
                return Err(bad(
                    "filter",
                    format!(
                        "unknown delivery state `{w}`: not an error kind (timeout, …) or a status (503, 5xx) either; other fields go as key=value"
                    ),
                ));
            }
        }
        Ok(p)
    }
}

/// Whether a recorded attempt belongs to what `f` selects, for follow mode (`deliveries
/// --follow`, `GET /v1/attempts?follow=true`), which reads the attempt log in its own order
/// and cannot page by delivery: workflow, stage, item and event are the delivery's; state is
/// the delivery's after this attempt; status and error kind are this attempt's; since and
/// until bound this attempt's start. `trigger`, `refire_of` and `message_class` are not in the log: a follower
/// refuses them ([`follow_refusal`]).
pub fn matches_attempt(f: &DeliveryFilter, e: &crate::model::AttemptEvent) -> bool {
    f.workflow.as_ref().is_none_or(|w| *w == e.workflow)
        && f.stage.as_ref().is_none_or(|s| *s == e.stage)
        && f.item
            .as_ref()
            .is_none_or(|i| e.item_id.as_ref() == Some(i))
        && f.event.is_none_or(|x| x == e.event)
        && f.state.is_none_or(|x| x == e.state)
        && f.since.is_none_or(|t| e.at >= t)
        && f.until.is_none_or(|t| e.at < t)
        && f.search.as_deref().is_none_or(|q| {
            let q = q.to_ascii_lowercase();
            [
                Some(e.delivery_id.as_str()),
                e.item_id.as_ref().map(|i| i.as_str()),
                e.item_name.as_deref(),
            ]
            .into_iter()
            .flatten()
            .any(|t| t.to_ascii_lowercase().contains(&q))
        })
        && ((f.statuses.is_empty() && f.error_kinds.is_empty())
            || e.status
                .is_some_and(|s| f.statuses.iter().any(|m| m.matches(s)))
            || e.error_kind.is_some_and(|k| f.error_kinds.contains(&k)))
}

/// Why a filter cannot be followed, if it cannot.
pub fn follow_refusal(f: &DeliveryFilter) -> Option<BadFilter> {
    if f.trigger.is_some() {
        return Some(bad(
            "trigger",
            "cannot be followed: the attempt log does not carry it".into(),
        ));
    }
    if f.refire_of.is_some() {
        return Some(bad(
            "refire_of",
            "cannot be followed: the attempt log does not carry it".into(),
        ));
    }
    if f.message_class.is_some() {
        return Some(bad(
            "message_class",
            "cannot be followed: it is kept on the delivery, not on each attempt".into(),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-12-07T02:40:00Z".parse().unwrap()
    }

    #[test]
    fn statuses_take_codes_classes_and_lists() {
        let p = FilterParams {
            status: Some("5xx, 408".into()),
            error_kind: Some("timeout".into()),
            ..Default::default()
        };
        let f = p.to_filter(now()).unwrap();
        assert_eq!(f.statuses, [StatusMatch::Class(5), StatusMatch::Code(408)]);
        assert_eq!(f.error_kinds, [ErrorKind::Timeout]);
        assert!(StatusMatch::Class(5).matches(503) && !StatusMatch::Class(5).matches(600));
        for wrong in ["5x", "6xx", "99", "1000", "50x", "55xx", ""] {
            let p = FilterParams {
                status: Some(wrong.into()),
                ..Default::default()
            };
            let e = p.to_filter(now()).unwrap_err();
            assert_eq!(e.field, "status", "{wrong}");
        }
    }

    #[test]
    fn times_are_rfc3339_or_a_duration_ago_and_the_window_must_not_be_empty() {
        let p = FilterParams {
            since: Some("30m".into()),
            until: Some("2026-12-07T02:40:00Z".into()),
            ..Default::default()
        };
        let f = p.to_filter(now()).unwrap();
        assert_eq!(f.since.unwrap().to_rfc3339(), "2026-12-07T02:10:00+00:00");
        let p = FilterParams {
            since: Some("1h ago".into()),
            until: Some("2h ago".into()),
            ..Default::default()
        };
        assert_eq!(p.to_filter(now()).unwrap_err().field, "until");
        let p = FilterParams {
            since: Some("yesterday-ish".into()),
            ..Default::default()
        };
        assert_eq!(p.to_filter(now()).unwrap_err().field, "since");
    }

    #[test]
    fn console_words_become_the_same_params() {
        let p = FilterParams::from_words(
            "failed 5xx timeout 408 stage=export since=30m".split_whitespace(),
        )
        .unwrap();
        assert_eq!(p.state.as_deref(), Some("failed"));
        assert_eq!(p.status.as_deref(), Some("5xx,408"));
        assert_eq!(p.error_kind.as_deref(), Some("timeout"));
        assert_eq!(p.stage.as_deref(), Some("export"));
        assert!(FilterParams::from_words(["nonsense"].into_iter()).is_err());
        assert!(FilterParams::from_words(["colour=red"].into_iter()).is_err());
    }
}
