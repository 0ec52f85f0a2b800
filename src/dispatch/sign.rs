//! Standard Webhooks signatures (<https://www.standardwebhooks.com>).
//!
//! A signing key is written `whsec_<base64>`; the signed content is `{id}.{timestamp}.{body}`;
//! a signature is `v1,<base64 HMAC-SHA256>`; a header carries one signature per key, separated
//! by spaces, so a key can be rotated without a gap (receivers accept any one that verifies).
//! Pure functions: the caller supplies the delivery id, the attempt's timestamp and the frozen
//! body bytes.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as BASE64, STANDARD_PAD_INDIFFERENT};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The prefix Standard Webhooks puts in front of a base64 signing key.
pub const SECRET_PREFIX: &str = "whsec_";

/// The version tag of the only signature scheme the spec defines for symmetric keys.
pub const SIGNATURE_VERSION: &str = "v1";

/// Why a signing key cannot be used. The key itself is never part of the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The part after `whsec_` is not valid base64.
    #[error("the webhook secret is not valid base64 after `whsec_` (expected `whsec_<base64>`)")]
    InvalidBase64,
    /// The key decodes to no bytes.
    #[error("the webhook secret is empty (expected `whsec_<base64>`)")]
    Empty,
    /// The HMAC implementation refused the key length (not possible for HMAC-SHA256).
    #[error("the webhook secret cannot be used as an HMAC-SHA256 key")]
    KeyLength,
}

/// Decodes a `whsec_<base64>` key to its bytes. Like the reference libraries, a key without
/// the prefix is taken as bare base64. Padding may be left out (`workflow apply` checks keys
/// with this same function, so a key it accepts always signs).
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, SignError> {
    let b64 = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret).trim();
    if b64.is_empty() {
        return Err(SignError::Empty);
    }
    let key = STANDARD_PAD_INDIFFERENT
        .decode(b64)
        .map_err(|_| SignError::InvalidBase64)?;
    if key.is_empty() {
        return Err(SignError::Empty);
    }
    Ok(key)
}

fn mac_for(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> Result<HmacSha256, SignError> {
    // HMAC accepts keys of any length, so this error cannot happen with SHA-256.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).map_err(|_| SignError::KeyLength)?;
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(mac)
}

/// Signs one message: `v1,<base64 HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")>`.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> Result<String, SignError> {
    let key = decode_secret(secret)?;
    let tag = mac_for(&key, msg_id, timestamp, body)?
        .finalize()
        .into_bytes();
    Ok(format!("{SIGNATURE_VERSION},{}", BASE64.encode(tag)))
}

/// The `webhook-signature` header value: one signature per key, space-separated, in the given
/// order. `None` when there are no keys (the request goes unsigned and the header is omitted).
pub fn signature_header(
    secrets: &[String],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<Option<String>, SignError> {
    if secrets.is_empty() {
        return Ok(None);
    }
    let sigs = secrets
        .iter()
        .map(|s| sign(s, msg_id, timestamp, body))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(sigs.join(" ")))
}

/// Whether any `v1` signature in `header_value` was made with `secret` over this message.
/// Comparison is constant-time. The timestamp tolerance check is the receiver's job and is not
/// done here. An unusable key verifies nothing.
pub fn verify(secret: &str, msg_id: &str, timestamp: i64, body: &[u8], header_value: &str) -> bool {
    let Ok(key) = decode_secret(secret) else {
        return false;
    };
    verify_key(&key, msg_id, timestamp, body, header_value)
}

/// [`verify`] with a key already decoded by [`decode_secret`] (a receiver decodes its keys
/// once, not per request).
pub fn verify_key(
    key: &[u8],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    header_value: &str,
) -> bool {
    header_value.split_ascii_whitespace().any(|entry| {
        let Some((version, sig)) = entry.split_once(',') else {
            return false;
        };
        if version != SIGNATURE_VERSION {
            return false;
        }
        let Ok(tag) = BASE64.decode(sig) else {
            return false;
        };
        mac_for(key, msg_id, timestamp, body).is_ok_and(|mac| mac.verify_slice(&tag).is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The spec repository's `test_sign_function` vector.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn a_key_without_its_padding_is_the_same_key() {
        let padded = "whsec_abcdefghijklmnopqrstuvw=";
        let unpadded = "whsec_abcdefghijklmnopqrstuvw";
        assert_eq!(
            decode_secret(unpadded).unwrap(),
            decode_secret(padded).unwrap()
        );
        assert_eq!(
            sign(unpadded, MSG_ID, TS, BODY).unwrap(),
            sign(padded, MSG_ID, TS, BODY).unwrap()
        );
    }

    #[test]
    fn matches_the_published_vector() {
        assert_eq!(sign(SECRET, MSG_ID, TS, BODY).unwrap(), EXPECTED);
        // Bare base64 (no prefix) is the same key.
        assert_eq!(
            sign("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", MSG_ID, TS, BODY).unwrap(),
            EXPECTED
        );
        assert!(verify(SECRET, MSG_ID, TS, BODY, EXPECTED));
    }

    #[test]
    fn any_change_breaks_the_signature() {
        assert!(!verify(SECRET, "msg_other", TS, BODY, EXPECTED));
        assert!(!verify(SECRET, MSG_ID, TS + 1, BODY, EXPECTED));
        assert!(!verify(
            SECRET,
            MSG_ID,
            TS,
            br#"{"test": 2432232315}"#,
            EXPECTED
        ));
        assert!(!verify(
            "whsec_AAAAAAAAAAAAAAAAAAAAAAAA",
            MSG_ID,
            TS,
            BODY,
            EXPECTED
        ));
        assert!(!verify(
            SECRET,
            MSG_ID,
            TS,
            BODY,
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        ));
        assert!(!verify(SECRET, MSG_ID, TS, BODY, "v1,not base64!"));
        assert!(!verify(SECRET, MSG_ID, TS, BODY, ""));
    }

    #[test]
    fn two_secrets_give_two_signatures_each_verifiable_alone() {
        let other = format!(
            "{SECRET_PREFIX}{}",
            BASE64.encode(b"a second key for rotation")
        );
        let secrets = vec![SECRET.to_string(), other.clone()];
        let header = signature_header(&secrets, MSG_ID, TS, BODY)
            .unwrap()
            .unwrap();
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2, "{header}");
        assert_eq!(parts[0], EXPECTED);
        assert!(parts[1].starts_with("v1,") && parts[1] != EXPECTED);
        assert!(verify(SECRET, MSG_ID, TS, BODY, &header));
        assert!(verify(&other, MSG_ID, TS, BODY, &header));
        assert!(!verify(
            "whsec_AAAAAAAAAAAAAAAAAAAAAAAA",
            MSG_ID,
            TS,
            BODY,
            &header
        ));
    }

    #[test]
    fn no_secrets_no_header_and_bad_keys_are_errors() {
        assert_eq!(signature_header(&[], MSG_ID, TS, BODY).unwrap(), None);
        assert_eq!(sign("whsec_", MSG_ID, TS, BODY), Err(SignError::Empty));
        assert_eq!(
            sign("whsec_not*base64", MSG_ID, TS, BODY),
            Err(SignError::InvalidBase64)
        );
        let bad = vec![SECRET.to_string(), "whsec_%%%".to_string()];
        assert_eq!(
            signature_header(&bad, MSG_ID, TS, BODY),
            Err(SignError::InvalidBase64)
        );
        // The error never repeats the key.
        assert!(!SignError::InvalidBase64.to_string().contains("%%%"));
    }
}
