//! Delivery policies stored in the database (the `settings` table), so they bind every
//! dispatcher that opens the file: a console, `serve`, or one started elsewhere. A flag of one
//! process can only tighten them ([`Policies::tightened`]).

use std::str::FromStr;

use serde::Serialize;

use super::{Result, Store, StoreError, audit};

/// Default maximum request body (design §6).
pub const DEFAULT_MAX_BODY: usize = 8 * 1024 * 1024;

/// The policies a dispatcher applies at send time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Policies {
    /// Refuse webhook URLs that resolve to private, loopback, link-local or metadata addresses.
    pub deny_private_targets: bool,
    /// Request bodies larger than this fail with a `policy` error instead of being sent.
    pub max_body_bytes: usize,
}

impl Default for Policies {
    fn default() -> Self {
        Policies {
            deny_private_targets: false,
            max_body_bytes: DEFAULT_MAX_BODY,
        }
    }
}

impl Policies {
    /// These policies made stricter by one process's flags (never looser).
    pub fn tightened(self, deny_private_targets: bool, max_body_bytes: usize) -> Policies {
        Policies {
            deny_private_targets: self.deny_private_targets || deny_private_targets,
            max_body_bytes: self.max_body_bytes.min(max_body_bytes),
        }
    }

    /// One line for `check`, the console header and `policy show`.
    pub fn summary(&self) -> String {
        format!(
            "deny_private_targets {}, max_body_bytes {}",
            if self.deny_private_targets {
                "on"
            } else {
                "off"
            },
            self.max_body_bytes
        )
    }
}

/// A policy's name, as `hookops policy set NAME VALUE` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKey {
    DenyPrivateTargets,
    MaxBodyBytes,
}

impl PolicyKey {
    pub const ALL: [PolicyKey; 2] = [PolicyKey::DenyPrivateTargets, PolicyKey::MaxBodyBytes];

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKey::DenyPrivateTargets => "deny_private_targets",
            PolicyKey::MaxBodyBytes => "max_body_bytes",
        }
    }
}

impl FromStr for PolicyKey {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        PolicyKey::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                StoreError::Invalid(format!(
                    "unknown policy `{s}`; the policies are deny_private_targets and max_body_bytes"
                ))
            })
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Some(true),
        "false" | "off" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// Checks and normalises a value for `key`.
fn normalise(key: PolicyKey, value: &str) -> Result<String> {
    match key {
        PolicyKey::DenyPrivateTargets => parse_bool(value)
            .map(|b| b.to_string())
            .ok_or_else(|| {
                StoreError::Invalid(format!(
                    "`{value}` is not a value for deny_private_targets; write true or false"
                ))
            }),
        PolicyKey::MaxBodyBytes => value
            .parse::<usize>()
            .ok()
            .filter(|n| (1024..=1 << 30).contains(n))
            .map(|n| n.to_string())
            .ok_or_else(|| {
                StoreError::Invalid(format!(
                    "`{value}` is not a value for max_body_bytes; write a number of bytes from 1024 to 1073741824"
                ))
            }),
    }
}

fn setting_key(key: PolicyKey) -> String {
    format!("policy.{}", key.as_str())
}

/// The policies stored in the database.
pub(super) fn read_policies(r: &dyn super::seam::Reads) -> Result<Policies> {
    let mut p = Policies::default();
    for (k, v) in r.settings("policy.")? {
        match k
            .strip_prefix("policy.")
            .and_then(|k| k.parse::<PolicyKey>().ok())
        {
            Some(PolicyKey::DenyPrivateTargets) => {
                p.deny_private_targets = parse_bool(&v).unwrap_or(false)
            }
            Some(PolicyKey::MaxBodyBytes) => {
                p.max_body_bytes = v.parse().unwrap_or(DEFAULT_MAX_BODY)
            }
            None => {}
        }
    }
    Ok(p)
}

impl Store {
    /// The policies stored in the database (defaults for those never set).
    pub fn policies(&self) -> Result<Policies> {
        self.read(read_policies)
    }

    /// Stores a policy for every dispatcher of this database (they pick it up within a few
    /// seconds). Audited.
    pub fn set_policy(&self, key: PolicyKey, value: &str, operator: &str) -> Result<Policies> {
        let value = normalise(key, value)?;
        let op = operator.to_string();
        self.write("policy set", move |c| {
            c.rows().put_setting(&setting_key(key), &value)?;
            let target = format!("{}={value}", key.as_str());
            audit(c, &op, "policy", &target, None, 1)
        })?;
        self.policies()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_only_tightens() {
        let db = Policies {
            deny_private_targets: true,
            max_body_bytes: 1000,
        };
        assert_eq!(db.tightened(false, 5000), db);
        let open = Policies::default();
        let t = open.tightened(true, 10);
        assert!(t.deny_private_targets);
        assert_eq!(t.max_body_bytes, 10);
    }

    #[test]
    fn values_are_checked() {
        assert_eq!(
            normalise(PolicyKey::DenyPrivateTargets, "ON").unwrap(),
            "true"
        );
        assert!(normalise(PolicyKey::DenyPrivateTargets, "maybe").is_err());
        assert!(normalise(PolicyKey::MaxBodyBytes, "12").is_err());
        assert_eq!(normalise(PolicyKey::MaxBodyBytes, "4096").unwrap(), "4096");
        assert!("nope".parse::<PolicyKey>().is_err());
    }
}
