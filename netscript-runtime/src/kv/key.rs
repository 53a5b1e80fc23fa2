use std::fmt;

/// One part of a [`Key`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyPart {
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// A UTF-8 string.
    String(String),
    /// A signed integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

/// A tuple key such as `("executions", id)`.
///
/// Keys order part by part; parts of different types order Bytes < String < Int < Bool.
/// [`Key::encode`] keeps that order byte for byte, and the encoding of a prefix of a key is
/// a byte prefix of the key's encoding.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Key(Vec<KeyPart>);

/// A byte string that is not a valid key encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key encoding at byte {offset}: {reason}")]
pub struct KeyDecodeError {
    /// Where decoding stopped.
    pub offset: usize,
    /// Why.
    pub reason: &'static str,
}

const BYTES: u8 = 0x01;
const STRING: u8 = 0x02;
const INT: u8 = 0x21;
const FALSE: u8 = 0x26;
const TRUE: u8 = 0x27;

impl Key {
    /// A key of these parts.
    pub fn new(parts: Vec<KeyPart>) -> Self {
        Key(parts)
    }

    /// The parts.
    pub fn parts(&self) -> &[KeyPart] {
        &self.0
    }

    /// This key with one more part.
    pub fn with(mut self, part: impl Into<KeyPart>) -> Self {
        self.0.push(part.into());
        self
    }

    /// Whether `prefix`'s parts start this key's parts.
    pub fn starts_with(&self, prefix: &Key) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// The order-preserving byte encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * self.0.len());
        for part in &self.0 {
            match part {
                KeyPart::Bytes(b) => escaped(&mut out, BYTES, b),
                KeyPart::String(s) => escaped(&mut out, STRING, s.as_bytes()),
                KeyPart::Int(i) => {
                    out.push(INT);
                    out.extend_from_slice(&((*i as u64) ^ (1 << 63)).to_be_bytes());
                }
                KeyPart::Bool(false) => out.push(FALSE),
                KeyPart::Bool(true) => out.push(TRUE),
            }
        }
        out
    }

    /// Decodes [`Key::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Result<Key, KeyDecodeError> {
        let mut parts = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let tag = bytes[i];
            i += 1;
            match tag {
                BYTES | STRING => {
                    let mut buf = Vec::new();
                    loop {
                        match bytes.get(i) {
                            None => return Err(KeyDecodeError { offset: i, reason: "unterminated part" }),
                            Some(0) if bytes.get(i + 1) == Some(&0xff) => {
                                buf.push(0);
                                i += 2;
                            }
                            Some(0) => {
                                i += 1;
                                break;
                            }
                            Some(&b) => {
                                buf.push(b);
                                i += 1;
                            }
                        }
                    }
                    parts.push(if tag == BYTES {
                        KeyPart::Bytes(buf)
                    } else {
                        KeyPart::String(
                            String::from_utf8(buf)
                                .map_err(|_| KeyDecodeError { offset: i, reason: "string part is not UTF-8" })?,
                        )
                    });
                }
                INT => {
                    let raw: [u8; 8] = bytes
                        .get(i..i + 8)
                        .and_then(|s| s.try_into().ok())
                        .ok_or(KeyDecodeError { offset: i, reason: "truncated integer" })?;
                    parts.push(KeyPart::Int((u64::from_be_bytes(raw) ^ (1 << 63)) as i64));
                    i += 8;
                }
                FALSE => parts.push(KeyPart::Bool(false)),
                TRUE => parts.push(KeyPart::Bool(true)),
                _ => return Err(KeyDecodeError { offset: i - 1, reason: "unknown part tag" }),
            }
        }
        Ok(Key(parts))
    }
}

fn escaped(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.push(0);
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, part) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match part {
                KeyPart::Bytes(b) => {
                    f.write_str("0x")?;
                    for byte in b {
                        write!(f, "{byte:02x}")?;
                    }
                }
                KeyPart::String(s) => write!(f, "{s:?}")?,
                KeyPart::Int(i) => write!(f, "{i}")?,
                KeyPart::Bool(b) => write!(f, "{b}")?,
            }
        }
        f.write_str("]")
    }
}

macro_rules! part_from {
    ($($t:ty => $e:expr),* $(,)?) => {$(
        impl From<$t> for KeyPart {
            fn from(v: $t) -> Self {
                #[allow(clippy::redundant_closure_call)]
                ($e)(v)
            }
        }
    )*};
}

part_from! {
    &str => |v: &str| KeyPart::String(v.to_owned()),
    String => KeyPart::String,
    &String => |v: &String| KeyPart::String(v.clone()),
    i64 => KeyPart::Int,
    i32 => |v: i32| KeyPart::Int(v.into()),
    u32 => |v: u32| KeyPart::Int(v.into()),
    bool => KeyPart::Bool,
    Vec<u8> => KeyPart::Bytes,
    &[u8] => |v: &[u8]| KeyPart::Bytes(v.to_vec()),
    crate::queue::MessageId => |v: crate::queue::MessageId| KeyPart::Bytes(v.as_bytes().to_vec()),
}

impl<A: Into<KeyPart>> From<(A,)> for Key {
    fn from((a,): (A,)) -> Self {
        Key(vec![a.into()])
    }
}

impl<A: Into<KeyPart>, B: Into<KeyPart>> From<(A, B)> for Key {
    fn from((a, b): (A, B)) -> Self {
        Key(vec![a.into(), b.into()])
    }
}

impl<A: Into<KeyPart>, B: Into<KeyPart>, C: Into<KeyPart>> From<(A, B, C)> for Key {
    fn from((a, b, c): (A, B, C)) -> Self {
        Key(vec![a.into(), b.into(), c.into()])
    }
}

impl<A: Into<KeyPart>, B: Into<KeyPart>, C: Into<KeyPart>, D: Into<KeyPart>> From<(A, B, C, D)> for Key {
    fn from((a, b, c, d): (A, B, C, D)) -> Self {
        Key(vec![a.into(), b.into(), c.into(), d.into()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Key> {
        vec![
            Key::from((vec![0u8, 1],)),
            Key::from((vec![0u8],)),
            Key::from(("a",)),
            Key::from(("a", "b")),
            Key::from(("a\0b",)),
            Key::from(("a", -5i64)),
            Key::from(("a", i64::MIN)),
            Key::from(("a", i64::MAX)),
            Key::from(("a", 7i64, true)),
            Key::from(("b", false)),
            Key::from(("ab",)),
            Key::default(),
        ]
    }

    #[test]
    fn encoding_round_trips() {
        for key in sample() {
            assert_eq!(Key::decode(&key.encode()).unwrap(), key, "{key}");
        }
    }

    #[test]
    fn byte_order_is_tuple_order() {
        fn cmp_parts(a: &Key, b: &Key) -> std::cmp::Ordering {
            fn rank(p: &KeyPart) -> u8 {
                match p {
                    KeyPart::Bytes(_) => 0,
                    KeyPart::String(_) => 1,
                    KeyPart::Int(_) => 2,
                    KeyPart::Bool(_) => 3,
                }
            }
            for (x, y) in a.parts().iter().zip(b.parts()) {
                let o = match (x, y) {
                    (KeyPart::Bytes(x), KeyPart::Bytes(y)) => x.cmp(y),
                    (KeyPart::String(x), KeyPart::String(y)) => x.cmp(y),
                    (KeyPart::Int(x), KeyPart::Int(y)) => x.cmp(y),
                    (KeyPart::Bool(x), KeyPart::Bool(y)) => x.cmp(y),
                    _ => rank(x).cmp(&rank(y)),
                };
                if o.is_ne() {
                    return o;
                }
            }
            a.parts().len().cmp(&b.parts().len())
        }
        let keys = sample();
        for a in &keys {
            for b in &keys {
                assert_eq!(a.encode().cmp(&b.encode()), cmp_parts(a, b), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn prefix_encoding_is_byte_prefix() {
        let key = Key::from(("executions", 42i64, "x"));
        let prefix = Key::from(("executions",));
        assert!(key.encode().starts_with(&prefix.encode()));
        assert!(!Key::from(("executionsX",)).encode().starts_with(&prefix.encode()));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Key::decode(&[0x99]).is_err());
        assert!(Key::decode(&[STRING, b'a']).is_err());
        assert!(Key::decode(&[INT, 1, 2]).is_err());
    }
}
