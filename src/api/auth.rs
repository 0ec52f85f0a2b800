//! Bearer tokens: loading (`--api-tokens FILE`, `HOOKOPS_API_TOKEN`) and checking.
//!
//! Tokens are kept only as SHA-256 digests and compared digest to digest in constant time
//! (`subtle`), every entry every time, so neither the position nor the length of a match
//! shows in the timing. No token is ever written to a log or an error message.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;

/// The operator name of the token from `HOOKOPS_API_TOKEN`.
pub const ENV_TOKEN_NAME: &str = "api";
/// Shorter tokens are refused: they could be guessed.
const MIN_TOKEN_LEN: usize = 16;

/// The accepted tokens, each with the name that audit rows record.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Arc<Vec<(String, [u8; 32])>>,
}

/// Why a token file or value was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the API token file {path}: {message}")]
    Read { path: String, message: String },
    #[error(
        "the API token file {0} is readable by every user; make it private (chmod 600) before serving with it"
    )]
    WorldReadable(String),
    #[error("{path}:{line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
    #[error("the API token file {0} holds no tokens (write lines of `name:token`)")]
    Empty(String),
    #[error(
        "HOOKOPS_API_TOKEN is shorter than {MIN_TOKEN_LEN} characters; use a long random token"
    )]
    ShortEnv,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Reads `name:token` lines (blank lines and `#` comments skipped). Refuses a file that
    /// every user may read, a line without a name or with a short token, and a name twice.
    pub fn from_file(path: &Path) -> Result<Tokens, TokenError> {
        let shown = path.display().to_string();
        let read = |e: std::io::Error| TokenError::Read {
            path: shown.clone(),
            message: e.to_string(),
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o004 != 0 {
                return Err(TokenError::WorldReadable(shown));
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        let text = std::fs::read_to_string(path).map_err(read)?;
        let mut entries: Vec<(String, [u8; 32])> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |message: &str| TokenError::Line {
                path: shown.clone(),
                line: i + 1,
                message: message.to_string(),
            };
            let Some((name, token)) = line.split_once(':') else {
                return Err(bad("expected `name:token`"));
            };
            let (name, token) = (name.trim(), token.trim());
            if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(bad("the name before `:` must be one word"));
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err(bad(&format!(
                    "the token of `{name}` is shorter than {MIN_TOKEN_LEN} characters; use a long random token"
                )));
            }
            if entries.iter().any(|(n, _)| n == name) {
                return Err(bad(&format!("the name `{name}` is given twice")));
            }
            // One token under two names would credit every action to the last of them.
            let d = digest(token);
            if let Some((other, _)) = entries.iter().find(|(_, e)| *e == d) {
                return Err(bad(&format!(
                    "`{name}` has the same token as `{other}`; give each operator their own"
                )));
            }
            entries.push((name.to_string(), d));
        }
        if entries.is_empty() {
            return Err(TokenError::Empty(shown));
        }
        Ok(Tokens {
            entries: Arc::new(entries),
        })
    }

    /// One token (from `HOOKOPS_API_TOKEN`), recorded as operator [`ENV_TOKEN_NAME`].
    pub fn single(name: &str, token: &str) -> Result<Tokens, TokenError> {
        if token.len() < MIN_TOKEN_LEN {
            return Err(TokenError::ShortEnv);
        }
        Ok(Tokens {
            entries: Arc::new(vec![(name.to_string(), digest(token))]),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The name of the token that matches, checking every entry in constant time.
    pub fn verify(&self, token: &str) -> Option<&str> {
        let d = digest(token);
        let mut found = None;
        for (name, want) in self.entries.iter() {
            if bool::from(want.ct_eq(&d)) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// The operator of an authenticated request (the token's name).
#[derive(Clone, Debug)]
pub struct Operator(pub String);

/// Middleware: every route behind it needs `Authorization: Bearer <token>`.
pub async fn require_token(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(header) = header else {
        return Err(ApiError::unauthorized(
            "this call needs an `Authorization: Bearer <token>` header",
        ));
    };
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim);
    let name = token.and_then(|t| state.tokens.verify(t));
    let Some(name) = name else {
        return Err(ApiError::unauthorized("the bearer token is not valid"));
    };
    req.extensions_mut().insert(Operator(name.to_string()));
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_by_name_and_refuses_others() {
        let t = Tokens::single("ci", "0123456789abcdef-token").unwrap();
        assert_eq!(t.verify("0123456789abcdef-token"), Some("ci"));
        assert_eq!(t.verify("0123456789abcdef-tokem"), None);
        assert_eq!(t.verify(""), None);
        assert!(Tokens::single("x", "short").is_err());
    }

    #[test]
    fn token_files_must_be_private_and_well_formed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens");
        std::fs::write(
            &p,
            "# ops\nalice:aaaaaaaaaaaaaaaaaaaa\n\nbot:bbbbbbbbbbbbbbbbbbbb\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Tokens::from_file(&p).err().unwrap().to_string();
        assert!(e.contains("readable by every user"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let t = Tokens::from_file(&p).unwrap();
        assert_eq!(t.verify("bbbbbbbbbbbbbbbbbbbb"), Some("bot"));
        std::fs::write(&p, "alice:short\n").unwrap();
        let e = Tokens::from_file(&p).err().unwrap().to_string();
        assert!(e.contains(":1:") && !e.contains("short\n"), "{e}");
        // One token under two names: refused, naming both and showing neither token.
        std::fs::write(&p, "alice:aaaaaaaaaaaaaaaaaaaa\nbob:aaaaaaaaaaaaaaaaaaaa\n").unwrap();
        let e = Tokens::from_file(&p).err().unwrap().to_string();
        assert!(
            e.contains(":2:") && e.contains("`bob`") && e.contains("`alice`"),
            "{e}"
        );
        assert!(!e.contains("aaaaaaaa"), "{e}");
    }
}
