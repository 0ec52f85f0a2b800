//! Colours and the monochrome theme. Colour is never the only signal: every state also has a
//! glyph, and the selection is reverse video plus a marker, which survives `NO_COLOR`.

use ratatui::style::{Color, Modifier, Style};

/// The styles every view draws with.
#[derive(Clone, Debug)]
pub struct Theme {
    pub normal: Style,
    pub dim: Style,
    pub title: Style,
    pub header: Style,
    pub key: Style,
    pub focus: Style,
    pub selected: Style,
    pub good: Style,
    pub warn: Style,
    pub bad: Style,
    /// JSON in the payload viewer: keys, strings, numbers, `true`/`false`/`null`.
    pub json_key: Style,
    pub json_str: Style,
    pub json_num: Style,
    pub json_lit: Style,
}

impl Theme {
    pub fn colour() -> Theme {
        Theme {
            normal: Style::default(),
            dim: Style::default().fg(Color::DarkGray),
            title: Style::default()
                .fg(Color::Cyan)
                .add_modifier(Modifier::BOLD),
            header: Style::default().add_modifier(Modifier::BOLD),
            key: Style::default().fg(Color::Cyan),
            focus: Style::default().fg(Color::Cyan),
            selected: Style::default().add_modifier(Modifier::REVERSED),
            good: Style::default().fg(Color::Green),
            warn: Style::default().fg(Color::Yellow),
            bad: Style::default().fg(Color::Red),
            json_key: Style::default().fg(Color::Cyan),
            json_str: Style::default().fg(Color::Green),
            json_num: Style::default().fg(Color::Magenta),
            json_lit: Style::default().fg(Color::Yellow),
        }
    }

    pub fn mono() -> Theme {
        Theme {
            normal: Style::default(),
            dim: Style::default(),
            title: Style::default().add_modifier(Modifier::BOLD),
            header: Style::default().add_modifier(Modifier::BOLD),
            key: Style::default().add_modifier(Modifier::BOLD),
            focus: Style::default().add_modifier(Modifier::BOLD),
            selected: Style::default().add_modifier(Modifier::REVERSED),
            good: Style::default(),
            warn: Style::default().add_modifier(Modifier::BOLD),
            bad: Style::default().add_modifier(Modifier::BOLD),
            json_key: Style::default(),
            json_str: Style::default(),
            json_num: Style::default(),
            json_lit: Style::default(),
        }
    }

    /// `NO_COLOR` (any non-empty value) selects the monochrome theme.
    pub fn from_env() -> Theme {
        if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
            Theme::mono()
        } else {
            Theme::colour()
        }
    }
}
