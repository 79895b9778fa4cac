//! Idempotent issuing: what an `Idempotency-Key` may be, how a request is fingerprinted (so a
//! key reused for different inputs is caught), and how a key's state is stored: either in
//! flight (claimed by a request still running) or done (the reply to replay byte for byte).

use bytes::Bytes;
use sha2::{Digest, Sha256};

pub const MAX_KEY_LEN: usize = 255;
/// Hex characters of a fingerprint (128 bits of SHA-256).
const FINGERPRINT_LEN: usize = 32;

/// An `Idempotency-Key` value: 1 to 255 printable ASCII characters. A caller's own, scoped to
/// its tenant where it is kept ([`crate::domain::Principal::scope_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key `value` is, or why it is none.
    pub fn parse(value: String) -> Result<IdempotencyKey, &'static str> {
        if value.is_empty() || value.len() > MAX_KEY_LEN {
            return Err("must be 1 to 255 characters");
        }
        if !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err("must be printable ASCII");
        }
        Ok(IdempotencyKey(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The fingerprint of a request: which operation, and its validated inputs in canonical form.
pub fn fingerprint(operation: &str, canonical_inputs: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(operation.as_bytes());
    hash.update([0]);
    hash.update(canonical_inputs);
    let digest = hash.finalize();
    hex::encode(&digest[..FINGERPRINT_LEN / 2])
}

/// The reply a key replays.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedReply {
    pub fingerprint: String,
    pub status: u16,
    pub body: Bytes,
}

/// What a key holds.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyState {
    /// A request with this fingerprint is running; `token` tells its claim apart.
    InFlight {
        fingerprint: String,
        token: String,
    },
    Done(SavedReply),
}

impl KeyState {
    pub fn fingerprint(&self) -> &str {
        match self {
            KeyState::InFlight { fingerprint, .. } => fingerprint,
            KeyState::Done(reply) => &reply.fingerprint,
        }
    }

    /// `P<fingerprint><token>` or `D<fingerprint><status, 3 digits><body>`.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            KeyState::InFlight { fingerprint, token } => {
                [b"P", fingerprint.as_bytes(), token.as_bytes()].concat()
            }
            KeyState::Done(reply) => {
                let status = format!("{:03}", reply.status.min(999));
                [
                    b"D",
                    reply.fingerprint.as_bytes(),
                    status.as_bytes(),
                    &reply.body,
                ]
                .concat()
            }
        }
    }

    pub fn decode(stored: &[u8]) -> Option<KeyState> {
        let (&kind, rest) = stored.split_first()?;
        let fingerprint = std::str::from_utf8(rest.get(..FINGERPRINT_LEN)?)
            .ok()?
            .to_owned();
        let rest = &rest[FINGERPRINT_LEN..];
        match kind {
            b'P' => Some(KeyState::InFlight {
                fingerprint,
                token: std::str::from_utf8(rest).ok()?.to_owned(),
            }),
            b'D' => {
                let status = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
                Some(KeyState::Done(SavedReply {
                    fingerprint,
                    status,
                    body: Bytes::copy_from_slice(&rest[3..]),
                }))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_1_to_255_printable_ascii() {
        let key = |value: &str| IdempotencyKey::parse(value.to_owned());
        assert_eq!(key("order-42 retry").unwrap().as_str(), "order-42 retry");
        assert!(key(&"k".repeat(255)).is_ok());
        assert!(key(&"k".repeat(256)).is_err());
        assert!(key("").is_err());
        assert!(key("tab\there").is_err());
        assert!(key("caf\u{e9}").is_err());
    }

    #[test]
    fn fingerprints_tell_operations_and_inputs_apart() {
        let a = fingerprint("issue", b"{}");
        assert_eq!(a.len(), 32);
        assert_eq!(a, fingerprint("issue", b"{}"));
        assert_ne!(a, fingerprint("batch", b"{}"));
        assert_ne!(a, fingerprint("issue", b"{\"weight\":1.0}"));
    }

    #[test]
    fn states_round_trip_byte_for_byte() {
        let fp = fingerprint("issue", b"{}");
        let done = KeyState::Done(SavedReply {
            fingerprint: fp.clone(),
            status: 201,
            body: Bytes::from_static(b"{\"records\":[]}\n\x00\xff"),
        });
        assert_eq!(KeyState::decode(&done.encode()), Some(done));
        let in_flight = KeyState::InFlight {
            fingerprint: fp,
            token: "t-1".into(),
        };
        assert_eq!(KeyState::decode(&in_flight.encode()), Some(in_flight));
        assert_eq!(KeyState::decode(b"Xshort"), None);
        assert_eq!(KeyState::decode(b""), None);
    }
}
