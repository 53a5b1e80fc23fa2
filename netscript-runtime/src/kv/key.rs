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
/// A key is kept as its order-preserving byte encoding ([`Key::as_bytes`]), so comparing,
/// hashing and storing one never re-encodes it, and building one from a tuple allocates once.
/// The encoding of a prefix of a key is a byte prefix of the key's encoding, and each part's
/// encoding delimits itself, so a byte prefix that is a whole key is a prefix of parts.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(Vec<u8>);

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

/// A value that can be one part of a [`Key`], written straight into the key's encoding:
/// strings, byte strings, integers, booleans, message ids and [`KeyPart`]s.
pub trait IntoKeyPart {
    /// Appends this part's encoding to `out`.
    fn encode_part(self, out: &mut Vec<u8>);
}

impl Key {
    /// A key of these parts.
    pub fn new(parts: Vec<KeyPart>) -> Self {
        let mut out = Vec::with_capacity(16 * parts.len());
        for part in parts {
            part.encode_part(&mut out);
        }
        Key(out)
    }

    /// The parts, decoded from the encoding.
    pub fn parts(&self) -> Vec<KeyPart> {
        // Every way to make a key checks or writes a valid encoding.
        decode_parts(&self.0).unwrap_or_default()
    }

    /// This key with one more part.
    pub fn with(mut self, part: impl IntoKeyPart) -> Self {
        part.encode_part(&mut self.0);
        self
    }

    /// Whether `prefix`'s parts start this key's parts.
    pub fn starts_with(&self, prefix: &Key) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// The order-preserving byte encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The encoding, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// A copy of the encoding ([`as_bytes`](Self::as_bytes) borrows it).
    pub fn encode(&self) -> Vec<u8> {
        self.0.clone()
    }

    /// The key whose encoding is `bytes`, checked.
    pub fn decode(bytes: &[u8]) -> Result<Key, KeyDecodeError> {
        decode_parts(bytes)?;
        Ok(Key(bytes.to_vec()))
    }
}

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

/// The parts that `bytes` encodes.
fn decode_parts(bytes: &[u8]) -> Result<Vec<KeyPart>, KeyDecodeError> {
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
    Ok(parts)
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
        for (i, part) in self.parts().iter().enumerate() {
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

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key{self}")
    }
}

fn int(out: &mut Vec<u8>, i: i64) {
    out.push(INT);
    out.extend_from_slice(&((i as u64) ^ (1 << 63)).to_be_bytes());
}

impl IntoKeyPart for KeyPart {
    fn encode_part(self, out: &mut Vec<u8>) {
        (&self).encode_part(out);
    }
}

impl IntoKeyPart for &KeyPart {
    fn encode_part(self, out: &mut Vec<u8>) {
        match self {
            KeyPart::Bytes(b) => escaped(out, BYTES, b),
            KeyPart::String(s) => escaped(out, STRING, s.as_bytes()),
            KeyPart::Int(i) => int(out, *i),
            KeyPart::Bool(false) => out.push(FALSE),
            KeyPart::Bool(true) => out.push(TRUE),
        }
    }
}

macro_rules! encode_part {
    ($($t:ty => $e:expr),* $(,)?) => {$(
        impl IntoKeyPart for $t {
            fn encode_part(self, out: &mut Vec<u8>) {
                #[allow(clippy::redundant_closure_call)]
                ($e)(self, out)
            }
        }
    )*};
}

encode_part! {
    &str => |v: &str, out| escaped(out, STRING, v.as_bytes()),
    String => |v: String, out| escaped(out, STRING, v.as_bytes()),
    &String => |v: &String, out| escaped(out, STRING, v.as_bytes()),
    i64 => |v: i64, out| int(out, v),
    i32 => |v: i32, out| int(out, v.into()),
    u32 => |v: u32, out| int(out, v.into()),
    bool => |v: bool, out: &mut Vec<u8>| out.push(if v { TRUE } else { FALSE }),
    Vec<u8> => |v: Vec<u8>, out| escaped(out, BYTES, &v),
    &[u8] => |v: &[u8], out| escaped(out, BYTES, v),
    crate::queue::MessageId => |v: crate::queue::MessageId, out| escaped(out, BYTES, v.as_bytes()),
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

impl<A: IntoKeyPart> From<(A,)> for Key {
    fn from((a,): (A,)) -> Self {
        Key::default().with(a)
    }
}

impl<A: IntoKeyPart, B: IntoKeyPart> From<(A, B)> for Key {
    fn from((a, b): (A, B)) -> Self {
        let mut out = Vec::with_capacity(32);
        a.encode_part(&mut out);
        b.encode_part(&mut out);
        Key(out)
    }
}

impl<A: IntoKeyPart, B: IntoKeyPart, C: IntoKeyPart> From<(A, B, C)> for Key {
    fn from((a, b, c): (A, B, C)) -> Self {
        let mut out = Vec::with_capacity(48);
        a.encode_part(&mut out);
        b.encode_part(&mut out);
        c.encode_part(&mut out);
        Key(out)
    }
}

impl<A: IntoKeyPart, B: IntoKeyPart, C: IntoKeyPart, D: IntoKeyPart> From<(A, B, C, D)> for Key {
    fn from((a, b, c, d): (A, B, C, D)) -> Self {
        let mut out = Vec::with_capacity(64);
        a.encode_part(&mut out);
        b.encode_part(&mut out);
        c.encode_part(&mut out);
        d.encode_part(&mut out);
        Key(out)
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
            for (x, y) in a.parts().iter().zip(b.parts().iter()) {
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
    fn tuples_encode_as_their_parts_do() {
        let id = crate::queue::MessageId::new();
        let built = Key::from(("executions", id, 7i64, true));
        let parts = Key::new(vec![
            KeyPart::String("executions".into()),
            KeyPart::Bytes(id.as_bytes().to_vec()),
            KeyPart::Int(7),
            KeyPart::Bool(true),
        ]);
        assert_eq!(built, parts);
        assert_eq!(built.parts(), parts.parts());
        assert_eq!(Key::from(("executions",)).with(id).with(7i64).with(true), built);
        assert!(built.starts_with(&Key::from(("executions", id))));
        assert!(!built.starts_with(&Key::from(("executions", id, 8i64))));
        // Ord on keys is the byte order, which is the tuple order.
        assert!(Key::from(("a", 1i64)) < Key::from(("a", 2i64)));
        assert!(Key::from(("a", -1i64)) < Key::from(("a", 0i64)));
        assert!(Key::from(("a",)) < Key::from(("a", false)));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Key::decode(&[0x99]).is_err());
        assert!(Key::decode(&[STRING, b'a']).is_err());
        assert!(Key::decode(&[INT, 1, 2]).is_err());
    }
}
