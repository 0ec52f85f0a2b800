//! `${NAME}` expansion for the few workflow values that may come from the environment.
//!
//! Forms: `${NAME}` (the variable; an error when unset), `${NAME:-default}` (the default when the
//! variable is unset or empty) and `$$` (a literal `$`). Any other `$` is an error, so a typo
//! such as `$TOKEN` or `${TOKEN` is reported instead of being sent to a receiver verbatim.
//! Expansion is a single pass: substituted text is never expanded again. Error messages name
//! variables but never include their values or defaults (either may be a secret).

/// The result of expanding one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expanded {
    /// The value with every reference replaced.
    pub text: String,
    /// The text each reference was replaced by, in order (for `Workflow::secrets`).
    pub substituted: Vec<String>,
}

/// One problem found while expanding a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExpandError {
    /// `${NAME}` without a default, and `NAME` is not set.
    Unset(String),
    /// Malformed syntax; the message says what to write instead.
    Syntax(String),
}

/// Expands `raw` with variables from `env`, collecting every problem rather than the first.
pub(crate) fn expand(
    raw: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Expanded, Vec<ExpandError>> {
    let mut text = String::with_capacity(raw.len());
    let mut substituted = Vec::new();
    let mut errors = Vec::new();
    let mut rest = raw;
    while let Some(pos) = rest.find('$') {
        text.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            text.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(close) = body.find('}') else {
                errors.push(ExpandError::Syntax(
                    "`${` is not closed: write `${NAME}`, or `$$` for a literal `$`".to_string(),
                ));
                rest = "";
                break;
            };
            let inner = &body[..close];
            rest = &body[close + 1..];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if !is_var_name(name) {
                errors.push(ExpandError::Syntax(format!(
                    "`${{{}…}}` is not a variable reference: write `${{NAME}}` or \
                     `${{NAME:-default}}` with a name of letters, digits and `_`, \
                     or `$$` for a literal `$`",
                    super::parse::excerpt(name.split([':', '-']).next().unwrap_or(""))
                )));
                continue;
            }
            let value = env(name).filter(|v| !(v.is_empty() && default.is_some()));
            match (value, default) {
                (Some(v), _) => {
                    text.push_str(&v);
                    substituted.push(v);
                }
                // A default is written in the file for anyone to read, so it is not a secret
                // (the demo's `${HOOKOPS_DEMO_URL:-http://127.0.0.1:9000}` stays readable).
                // `authorization` and `secret` values are secrets whatever they came from.
                (None, Some(d)) => text.push_str(d),
                (None, None) => errors.push(ExpandError::Unset(name.to_string())),
            }
        } else {
            errors.push(ExpandError::Syntax(
                "a lone `$`: write `$$` for a literal `$`, or `${NAME}` for an environment \
                 variable"
                    .to_string(),
            ));
            rest = after;
        }
    }
    text.push_str(rest);
    if errors.is_empty() {
        Ok(Expanded { text, substituted })
    } else {
        Err(errors)
    }
}

fn is_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cr3t".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn ok(raw: &str) -> Expanded {
        expand(raw, &env).unwrap()
    }

    #[test]
    fn set_unset_default_and_dollar() {
        let e = ok("Bearer ${TOKEN}");
        assert_eq!(e.text, "Bearer s3cr3t");
        assert_eq!(e.substituted, vec!["s3cr3t".to_string()]);
        assert_eq!(ok("${MISSING:-http://x}/a").text, "http://x/a");
        assert_eq!(ok("${EMPTY:-d}").text, "d");
        assert_eq!(ok("${EMPTY}").text, "");
        assert_eq!(ok("${TOKEN:-d}").text, "s3cr3t");
        assert_eq!(ok("a$$b$$").text, "a$b$");
        assert_eq!(ok("$${TOKEN}").text, "${TOKEN}");
        assert_eq!(ok("no refs").substituted, Vec::<String>::new());
        assert_eq!(ok("${MISSING:-}").text, "");
    }

    #[test]
    fn errors_are_all_reported() {
        let errs = expand("${A} ${B} $x ${", &env).unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert_eq!(errs[0], ExpandError::Unset("A".into()));
        assert_eq!(errs[1], ExpandError::Unset("B".into()));
        assert!(matches!(&errs[2], ExpandError::Syntax(m) if m.contains("lone `$`")));
        assert!(matches!(&errs[3], ExpandError::Syntax(m) if m.contains("not closed")));
        let errs = expand("${1A}", &env).unwrap_err();
        assert!(matches!(&errs[0], ExpandError::Syntax(m) if m.contains("not a variable")));
        let errs = expand("${A-default}", &env).unwrap_err();
        assert!(matches!(&errs[0], ExpandError::Syntax(m) if m.contains("${NAME:-default}")));
    }
}
