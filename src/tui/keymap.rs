//! The one binding table: keys, action, description, scope, and whether the action changes
//! anything. Dispatch, the footer hints, the `?` help and read-only filtering all come from it.

use std::sync::OnceLock;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// Where a binding applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everywhere outside dialogs.
    Global,
    /// Any list view.
    List,
    Workflows,
    Stages,
    Items,
    Item,
    Deliveries,
    Delivery,
    /// Read-only reports: the audit log and the health check.
    Report,
    /// Failed deliveries grouped by cause (`:failures`).
    Failures,
    /// The log pane, when it has the focus.
    Log,
}

/// What a key does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Up,
    Down,
    Top,
    Bottom,
    PageUp,
    PageDown,
    Open,
    Back,
    Command,
    Filter,
    Help,
    Quit,
    ToggleLog,
    FocusLog,
    Follow,
    PauseLog,
    Select,
    SelectAll,
    SortByName,
    Assign,
    Advance,
    Approve,
    Reject,
    Refire,
    RefireAll,
    Replay,
    Test,
    PauseStage,
    Copy,
    CopyBody,
    CopyResponse,
    CopyHeaders,
    CopyCurl,
    CopyCurlSecrets,
    Pager,
    Deliveries,
    Items,
    Cancel,
    CancelAll,
    Export,
}

/// One row of the binding table.
pub struct Binding {
    pub keys: &'static [Key],
    pub action: Action,
    pub description: &'static str,
    pub scopes: &'static [Scope],
    /// Changes something: hidden and refused in `--read-only`.
    pub dangerous: bool,
    /// Shown in the footer (the rest only in `?` help).
    pub hint: bool,
}

/// A key as the table writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Ctrl(char),
    Enter,
    Esc,
    Tab,
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
}

impl Key {
    pub fn label(self) -> String {
        match self {
            Key::Char(' ') => "space".into(),
            Key::Char(c) => c.to_string(),
            Key::Ctrl(c) => format!("ctrl-{c}"),
            Key::Enter => "enter".into(),
            Key::Esc => "esc".into(),
            Key::Tab => "tab".into(),
            Key::Up => "↑".into(),
            Key::Down => "↓".into(),
            Key::PageUp => "pgup".into(),
            Key::PageDown => "pgdn".into(),
            Key::Home => "home".into(),
            Key::End => "end".into(),
        }
    }

    pub fn matches(self, ev: &KeyEvent) -> bool {
        let ctrl = ev.modifiers.contains(KeyModifiers::CONTROL);
        match (self, ev.code) {
            (Key::Char(c), KeyCode::Char(k)) => !ctrl && c == k,
            (Key::Ctrl(c), KeyCode::Char(k)) => ctrl && c == k,
            (Key::Enter, KeyCode::Enter) => true,
            (Key::Esc, KeyCode::Esc) => true,
            (Key::Tab, KeyCode::Tab) => true,
            (Key::Up, KeyCode::Up) => true,
            (Key::Down, KeyCode::Down) => true,
            (Key::PageUp, KeyCode::PageUp) => true,
            (Key::PageDown, KeyCode::PageDown) => true,
            (Key::Home, KeyCode::Home) => true,
            (Key::End, KeyCode::End) => true,
            _ => false,
        }
    }
}

use Scope::*;

const LISTS: &[Scope] = &[List, Log];

/// Every binding of the console, in help order.
pub const BINDINGS: &[Binding] = &[
    Binding {
        keys: &[Key::Char('k'), Key::Up],
        action: Action::Up,
        description: "up",
        scopes: &[Global],
        dangerous: false,
        hint: false,
    },
    Binding {
        keys: &[Key::Char('j'), Key::Down],
        action: Action::Down,
        description: "down",
        scopes: &[Global],
        dangerous: false,
        hint: false,
    },
    Binding {
        keys: &[Key::Char('g'), Key::Home],
        action: Action::Top,
        description: "first row",
        scopes: &[Global],
        dangerous: false,
        hint: false,
    },
    Binding {
        keys: &[Key::Char('G'), Key::End],
        action: Action::Bottom,
        description: "last row",
        scopes: &[Global],
        dangerous: false,
        hint: false,
    },
    Binding {
        keys: &[Key::PageUp, Key::Ctrl('u')],
        action: Action::PageUp,
        description: "page up",
        scopes: &[Global],
        dangerous: false,
        hint: false,
    },
    Binding {
        keys: &[Key::PageDown, Key::Ctrl('d')],
        action: Action::PageDown,
        description: "page down",
        scopes: &[Global],
        dangerous: false,
        hint: false,
    },
    Binding {
        keys: &[Key::Enter],
        action: Action::Open,
        description: "open",
        scopes: &[Workflows, Stages, Items, Item, Deliveries, Failures, Log],
        dangerous: false,
        hint: true,
    },
    Binding {
        keys: &[Key::Esc],
        action: Action::Back,
        description: "back",
        scopes: &[Global],
        dangerous: false,
        hint: true,
    },
    Binding {
        keys: &[Key::Char('/')],
        action: Action::Filter,
        description: "filter",
        scopes: LISTS,
        dangerous: false,
        hint: true,
    },
    Binding {
        keys: &[Key::Char(' ')],
        action: Action::Select,
        description: "select",
        scopes: &[Items, Deliveries],
        dangerous: false,
        hint: true,
    },
    Binding {
        keys: &[Key::Char('*')],
        action: Action::SelectAll,
        description: "select all shown",
        scopes: &[Items, Deliveries],
        dangerous: false,
        hint: false,
    },
    Binding {
        keys: &[Key::Char('s')],
        action: Action::SortByName,
        description: "sort by name / waiting",
        scopes: &[Items],
        dangerous: false,
        hint: false,
    },
    Binding {
        keys: &[Key::Char('a')],
        action: Action::Assign,
        description: "assign to stage",
        scopes: &[Stages, Items, Item],
        dangerous: true,
        hint: true,
    },
    Binding {
        keys: &[Key::Char('v')],
        action: Action::Advance,
        description: "advance (annotate done)",
        scopes: &[Items, Item],
        dangerous: true,
        hint: false,
    },
    Binding {
        keys: &[Key::Char('o')],
        action: Action::Approve,
        description: "approve review",
        scopes: &[Items, Item],
        dangerous: true,
        hint: false,
    },
    Binding {
        keys: &[Key::Char('x')],
        action: Action::Reject,
        description: "reject review",
        scopes: &[Items, Item],
        dangerous: true,
        hint: false,
    },
    Binding {
        keys: &[Key::Char('r')],
        action: Action::Refire,
        description: "re-fire (failures: the whole group)",
        scopes: &[Item, Deliveries, Delivery, Failures, Log],
        dangerous: true,
        hint: true,
    },
    Binding {
        keys: &[Key::Char('F')],
        action: Action::RefireAll,
        description: "re-fire all failed matching",
        scopes: &[Stages, Deliveries],
        dangerous: true,
        hint: true,
    },
    Binding {
        keys: &[Key::Char('R')],
        action: Action::Replay,
        description: "replay (same bytes, item stays; failures: group)",
        scopes: &[Item, Deliveries, Delivery, Failures, Log],
        dangerous: true,
        hint: false,
    },
    Binding {
        keys: &[Key::Char('c')],
        action: Action::Cancel,
        description: "cancel (item routes on failure; failures: its retries)",
        scopes: &[Deliveries, Delivery, Failures],
        dangerous: true,
        hint: false,
    },
    Binding {
        keys: &[Key::Char('C')],
        action: Action::CancelAll,
        description: "cancel all open matching",
        scopes: &[Deliveries],
        dangerous: true,
        hint: false,
    },
    Binding {
        keys: &[Key::Char('e')],
        action: Action::Export,
        description: "export matching as JSON Lines",
        scopes: &[Deliveries],
        dangerous: false,
        hint: false,
    },
    Binding {
        keys: &[Key::Char('t')],
        action: Action::Test,
        description: "test webhook",
        scopes: &[Stages],
        dangerous: true,
        hint: true,
    },
    Binding {
        keys: &[Key::Char('p')],
        action: Action::PauseStage,
        description: "pause / resume stage",
        scopes: &[Stages],
        dangerous: true,
        hint: true,
    },
    Binding {
        keys: &[Key::Char('d')],
        action: Action::Deliveries,
        description: "deliveries",
        scopes: &[Workflows, Stages, Items, Item],
        dangerous: false,
        hint: true,
    },
    Binding {
        keys: &[Key::Char('i')],
        action: Action::Items,
        description: "items",
        scopes: &[Workflows, Stages],
        dangerous: false,
        hint: false,
    },
    Binding {
        keys: &[Key::Char('y')],
        action: Action::Copy,
        description: "copy id",
        scopes: &[Items, Item, Deliveries, Delivery, Log],
        dangerous: false,
        hint: false,
    },
    Binding {
        keys: &[Key::Char('b')],
        action: Action::CopyBody,
        description: "copy the request body",
        scopes: &[Delivery],
        dangerous: false,
        hint: false,
    },
    Binding {
        keys: &[Key::Char('B')],
        action: Action::CopyResponse,
        description: "copy the newest response body",
        scopes: &[Delivery],
        dangerous: false,
        hint: false,
    },
    Binding {
        keys: &[Key::Char('h')],
        action: Action::CopyHeaders,
        description: "copy the request headers (secrets masked)",
        scopes: &[Delivery],
        dangerous: false,
        hint: false,
    },
    Binding {
        keys: &[Key::Char('u')],
        action: Action::CopyCurl,
        description: "copy as curl (secrets masked)",
        scopes: &[Delivery],
        dangerous: false,
        hint: true,
    },
    Binding {
        keys: &[Key::Char('U')],
        action: Action::CopyCurlSecrets,
        description: "copy as curl with the real secrets",
        scopes: &[Delivery],
        // Not read-only: it hands out the credentials to send as this stage.
        dangerous: true,
        hint: false,
    },
    Binding {
        keys: &[Key::Char('o')],
        action: Action::Pager,
        description: "open in $PAGER",
        scopes: &[Delivery],
        dangerous: false,
        hint: true,
    },
    Binding {
        keys: &[Key::Char('l')],
        action: Action::ToggleLog,
        description: "log pane",
        scopes: &[Global],
        dangerous: false,
        hint: true,
    },
    Binding {
        keys: &[Key::Tab],
        action: Action::FocusLog,
        description: "focus log pane",
        scopes: &[Global],
        dangerous: false,
        hint: false,
    },
    Binding {
        keys: &[Key::Char('f')],
        action: Action::Follow,
        description: "follow newest",
        scopes: &[Log],
        dangerous: false,
        hint: true,
    },
    Binding {
        keys: &[Key::Char('P')],
        action: Action::PauseLog,
        description: "pause / resume the stream",
        scopes: &[Log],
        dangerous: false,
        hint: true,
    },
    Binding {
        keys: &[Key::Char(':')],
        action: Action::Command,
        description: "command (:items :deliveries failed timeout :audit :health :q)",
        scopes: &[Global],
        dangerous: false,
        hint: true,
    },
    Binding {
        keys: &[Key::Char('?')],
        action: Action::Help,
        description: "help",
        scopes: &[Global],
        dangerous: false,
        hint: true,
    },
    Binding {
        keys: &[Key::Char('q'), Key::Ctrl('c')],
        action: Action::Quit,
        description: "quit",
        scopes: &[Global],
        dangerous: false,
        hint: true,
    },
];

/// Keys the operator rebound in the config file, per action (set once at start-up).
static OVERRIDES: OnceLock<Vec<(Action, Vec<Key>)>> = OnceLock::new();

/// The keys of a binding, after the operator's overrides.
pub fn keys_of(b: &Binding) -> Vec<Key> {
    OVERRIDES
        .get()
        .and_then(|o| o.iter().find(|(a, _)| *a == b.action))
        .map(|(_, k)| k.clone())
        .unwrap_or_else(|| b.keys.to_vec())
}

/// An action's name in the config file: `refire_all` for `Action::RefireAll`.
pub fn action_name(a: Action) -> String {
    let mut out = String::new();
    for (i, c) in format!("{a:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Parses a key as the config file writes it: `a`, `A`, `ctrl-r`, `enter`, `esc`, `tab`,
/// `space`, `up`, `down`, `pgup`, `pgdn`, `home`, `end`.
pub fn parse_key(s: &str) -> Option<Key> {
    let named = match s {
        "enter" => Some(Key::Enter),
        "esc" => Some(Key::Esc),
        "tab" => Some(Key::Tab),
        "space" => Some(Key::Char(' ')),
        "up" => Some(Key::Up),
        "down" => Some(Key::Down),
        "pgup" => Some(Key::PageUp),
        "pgdn" => Some(Key::PageDown),
        "home" => Some(Key::Home),
        "end" => Some(Key::End),
        _ => None,
    };
    if named.is_some() {
        return named;
    }
    let mut chars = s.chars();
    match (s.strip_prefix("ctrl-"), chars.next(), chars.next()) {
        (Some(rest), _, _) => {
            let mut r = rest.chars();
            match (r.next(), r.next()) {
                (Some(c), None) if c.is_ascii_lowercase() => Some(Key::Ctrl(c)),
                _ => None,
            }
        }
        (None, Some(c), None) if !c.is_control() => Some(Key::Char(c)),
        _ => None,
    }
}

/// Reads key overrides from a config file's `[keys]` table (`assign = "A"`, or a list of
/// keys). Every problem becomes a warning; the defaults stay for anything not understood.
/// Without the file, nothing changes.
pub fn load_overrides(path: &std::path::Path) -> Vec<String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return vec![],
        Err(e) => {
            return vec![format!(
                "{}: cannot read it ({e}); using the default keys",
                path.display()
            )];
        }
    };
    let (overrides, warnings) = parse_overrides(&text, &path.display().to_string());
    let _ = OVERRIDES.set(overrides);
    warnings
}

/// Whether the config file says `mouse = true` (as `--mouse` does). A missing or unreadable
/// file says no; [`load_overrides`] reports what is wrong with it.
pub fn mouse_in_config(path: &std::path::Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
        .and_then(|t| t.get("mouse").and_then(|v| v.as_bool()))
        .unwrap_or(false)
}

/// The pure part of [`load_overrides`].
pub fn parse_overrides(text: &str, file: &str) -> (Vec<(Action, Vec<Key>)>, Vec<String>) {
    let mut warnings = Vec::new();
    let table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            let msg = e.message().to_string();
            return (
                vec![],
                vec![format!("{file}: {msg}; using the default keys")],
            );
        }
    };
    let mut out: Vec<(Action, Vec<Key>)> = Vec::new();
    for (k, v) in table.iter().filter(|(k, _)| k.as_str() != "keys") {
        if k == "mouse" {
            if !v.is_bool() {
                warnings.push(format!("{file}: `mouse` takes true or false; ignored"));
            }
            continue;
        }
        warnings.push(format!(
            "{file}: unknown section `{k}` ignored (only [keys] and `mouse` are read)"
        ));
    }
    let Some(keys) = table.get("keys").and_then(|v| v.as_table()) else {
        return (out, warnings);
    };
    for (name, value) in keys {
        let Some(b) = BINDINGS.iter().find(|b| action_name(b.action) == *name) else {
            warnings.push(format!(
                "{file}: [keys] `{name}` is not an action; see `?` in the console for names"
            ));
            continue;
        };
        let specs: Vec<&str> = match value {
            toml::Value::String(s) => vec![s.as_str()],
            toml::Value::Array(a) => a.iter().filter_map(|v| v.as_str()).collect(),
            _ => vec![],
        };
        let parsed: Vec<Option<Key>> = specs.iter().map(|s| parse_key(s)).collect();
        if specs.is_empty() || parsed.iter().any(Option::is_none) {
            warnings.push(format!(
                "{file}: [keys] `{name}` = {value}: write a key like \"a\", \"ctrl-r\" or \"enter\"; kept the default"
            ));
            continue;
        }
        let keys: Vec<Key> = parsed.into_iter().flatten().collect();
        // A key already used by another action in a shared scope would make one unreachable.
        let clash = BINDINGS.iter().find(|other| {
            other.action != b.action
                && other
                    .scopes
                    .iter()
                    .any(|s| *s == Global || b.scopes.contains(s) || b.scopes.contains(&Global))
                && out
                    .iter()
                    .find(|(a, _)| *a == other.action)
                    .map(|(_, k)| k.clone())
                    .unwrap_or_else(|| other.keys.to_vec())
                    .iter()
                    .any(|k| keys.contains(k))
        });
        if let Some(other) = clash {
            warnings.push(format!(
                "{file}: [keys] `{name}` would take a key of `{}`; kept the default",
                action_name(other.action)
            ));
            continue;
        }
        out.push((b.action, keys));
    }
    (out, warnings)
}

fn in_scope(b: &Binding, scope: Scope, focus_log: bool) -> bool {
    b.scopes.iter().any(|s| match s {
        Global => true,
        List => !focus_log && scope != Item && scope != Delivery,
        Log => focus_log,
        other => !focus_log && *other == scope,
    })
}

/// The action a key press means in `scope`, honouring read-only.
pub fn lookup(
    ev: &KeyEvent,
    scope: Scope,
    focus_log: bool,
    read_only: bool,
) -> Option<&'static Binding> {
    BINDINGS.iter().find(|b| {
        in_scope(b, scope, focus_log)
            && keys_of(b).iter().any(|k| k.matches(ev))
            && !(read_only && b.dangerous)
    })
}

/// The bindings that apply in `scope`, for hints and help.
pub fn active(
    scope: Scope,
    focus_log: bool,
    read_only: bool,
) -> impl Iterator<Item = &'static Binding> {
    BINDINGS
        .iter()
        .filter(move |b| in_scope(b, scope, focus_log) && !(read_only && b.dangerous))
}

/// Any binding for this key that is refused only because of read-only (to say so).
pub fn refused_read_only(ev: &KeyEvent, scope: Scope, focus_log: bool) -> Option<&'static Binding> {
    BINDINGS.iter().find(|b| {
        b.dangerous && in_scope(b, scope, focus_log) && keys_of(b).iter().any(|k| k.matches(ev))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    #[test]
    fn no_key_is_bound_twice_in_one_scope() {
        let scopes = [Workflows, Stages, Items, Item, Deliveries, Delivery];
        for scope in scopes {
            for focus in [false, true] {
                let mut seen: Vec<String> = Vec::new();
                for b in active(scope, focus, false) {
                    for k in b.keys {
                        let label = k.label();
                        assert!(
                            !seen.contains(&label),
                            "{label} twice in {scope:?} (log {focus})"
                        );
                        seen.push(label);
                    }
                }
            }
        }
    }

    #[test]
    fn read_only_hides_dangerous_actions() {
        assert_eq!(
            lookup(&key('a'), Items, false, false).map(|b| b.action),
            Some(Action::Assign)
        );
        assert!(lookup(&key('a'), Items, false, true).is_none());
        assert!(refused_read_only(&key('a'), Items, false).is_some());
        assert!(active(Deliveries, false, true).all(|b| !b.dangerous));
    }

    #[test]
    fn config_overrides_are_checked() {
        let (o, w) = parse_overrides(
            "[keys]\nassign = \"A\"\nrefire = [\"r\", \"ctrl-r\"]\n",
            "k.toml",
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            o,
            vec![
                (Action::Assign, vec![Key::Char('A')]),
                (Action::Refire, vec![Key::Char('r'), Key::Ctrl('r')])
            ]
        );
        let (o, w) = parse_overrides(
            "[keys]\nnope = \"z\"\nassign = 3\nquit = \"j\"\n[colors]\n",
            "k.toml",
        );
        assert!(o.is_empty(), "{o:?}");
        assert_eq!(w.len(), 4, "{w:?}");
        assert!(w.iter().any(|m| m.contains("`nope` is not an action")));
        assert!(w.iter().any(|m| m.contains("would take a key of `down`")));
        let (_, w) = parse_overrides("[keys", "k.toml");
        assert!(w[0].starts_with("k.toml: "), "{w:?}");
        assert_eq!(action_name(Action::RefireAll), "refire_all");
    }

    #[test]
    fn avoids_terminal_multiplexer_keys() {
        for b in BINDINGS {
            for k in b.keys {
                if let Key::Ctrl(c) = k {
                    assert!(
                        !"absqhjkl".contains(*c),
                        "ctrl-{c} belongs to tmux/screen/flow control"
                    );
                }
            }
        }
    }
}
