//! A body read strictly: a key given twice is refused where it is, a
//! byte-order mark skipped; and a batch parsed but not yet decoded, so a
//! host can count its items first.

use serde_json::Value;

use super::items::{revoke_item, share_item};
use super::{kind_of, BatchError, ItemError, Limits, RevokeItem, ShareItem};
use crate::ids::quoted;

/// A UTF-8 byte-order mark, which some clients put before JSON: RFC 8259
/// lets a parser ignore it, and this one does.
pub(super) const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Parse a JSON body strictly: a leading byte-order mark is skipped, and an
/// object that names a key twice is refused, naming the key and where it
/// is (`serde_json` would keep the last value, while a proxy or a log that
/// reads the first would see another request).
///
/// ```
/// use grantwheel::requests::wire::{strict_json, BatchError};
/// let twice = br#"[{"AccessType": 2, "DurationInMinutes": 30, "AccessType": 1}]"#;
/// assert_eq!(
///     strict_json(twice).unwrap_err().to_string(),
///     "`AccessType` appears twice in item 0: a field may be given once"
/// );
/// assert!(strict_json(b"\xEF\xBB\xBF[]").is_ok());
/// ```
///
/// # Errors
///
/// [`BatchError::NotJson`] or [`BatchError::Duplicate`].
pub fn strict_json(body: &[u8]) -> Result<Value, BatchError> {
    let body = body.strip_prefix(BOM).unwrap_or(body);
    let found = std::cell::RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let seed = value::Strict {
        path: &mut Vec::new(),
        found: &found,
    };
    let parsed = serde::de::DeserializeSeed::deserialize(seed, &mut de).and_then(|v| {
        de.end()?;
        Ok(v)
    });
    match (parsed, found.into_inner()) {
        (Ok(v), _) => Ok(v),
        (Err(_), Some((at, field))) => Err(BatchError::Duplicate { at, field }),
        (Err(e), None) => Err(BatchError::NotJson(quoted(&e.to_string()).into_owned())),
    }
}

/// The strict parser: `serde_json::Value`, built by hand so that a key
/// given twice is seen (and where).
mod value {
    use std::cell::RefCell;
    use std::fmt;

    use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
    use serde_json::{Map, Number, Value};

    /// Where in the document a value is: array positions and object keys.
    pub(super) enum Step {
        Index(usize),
        Key(String),
    }

    /// The place of a duplicate key, in words: `item 3`, `item 0, Fields`,
    /// `the body`.
    fn place(path: &[Step]) -> String {
        let mut parts = Vec::new();
        for (i, step) in path.iter().enumerate() {
            match step {
                Step::Index(n) if i == 0 => parts.push(format!("item {n}")),
                Step::Index(n) => parts.push(format!("[{n}]")),
                Step::Key(k) => parts.push(crate::ids::quoted(k).into_owned()),
            }
        }
        if parts.is_empty() {
            "the body".into()
        } else {
            parts.join(", ")
        }
    }

    pub(super) struct Strict<'a> {
        pub(super) path: &'a mut Vec<Step>,
        /// The first duplicate met: where, and the key.
        pub(super) found: &'a RefCell<Option<(String, String)>>,
    }

    impl<'de> DeserializeSeed<'de> for Strict<'_> {
        type Value = Value;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Strict<'_> {
        type Value = Value;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_owned()))
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_none<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut out = Vec::new();
            loop {
                self.path.push(Step::Index(out.len()));
                let next = seq.next_element_seed(Strict {
                    path: self.path,
                    found: self.found,
                });
                self.path.pop();
                match next? {
                    Some(v) => out.push(v),
                    None => return Ok(Value::Array(out)),
                }
            }
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut out = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    *self.found.borrow_mut() =
                        Some((place(self.path), crate::ids::quoted(&key).into_owned()));
                    return Err(de::Error::custom("a key appears twice"));
                }
                self.path.push(Step::Key(key.clone()));
                let value = map.next_value_seed(Strict {
                    path: self.path,
                    found: self.found,
                });
                self.path.pop();
                out.insert(key, value?);
            }
            Ok(Value::Object(out))
        }
    }
}

/// FNV-1a, 64 bits: a digest of an item's content for its made-up key (a
/// collision needs the same call key and place, and two bodies).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A share or revoke body, parsed but not yet decoded: its items, so that a
/// host can count them (and limit calls by it) before anything is done.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    items: Vec<Value>,
}

impl Batch {
    /// Parse a body that must be a JSON array of at most `max_items` items
    /// (strictly: see [`strict_json`]).
    ///
    /// ```
    /// use grantwheel::requests::wire::{Batch, BatchError};
    /// assert_eq!(Batch::parse(b"[{}, {}]", 10).unwrap().len(), 2);
    /// assert_eq!(
    ///     Batch::parse(b"[{}, {}, {}]", 2).unwrap_err(),
    ///     BatchError::TooLarge { count: 3, max: 2 }
    /// );
    /// ```
    ///
    /// # Errors
    ///
    /// [`BatchError`]: not JSON, a key given twice, not an array, or too many
    /// items.
    pub fn parse(body: &[u8], max_items: usize) -> Result<Batch, BatchError> {
        match strict_json(body)? {
            Value::Array(items) if items.len() > max_items => Err(BatchError::TooLarge {
                count: items.len(),
                max: max_items,
            }),
            Value::Array(items) => Ok(Batch { items }),
            other => Err(BatchError::NotArray(kind_of(&other))),
        }
    }

    /// How many items it holds.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The idempotency key of item `index` under a call's key `call`: the
    /// item's own `IdempotencyKey` if it names one, else one made of the
    /// call's key, the kind, the item's place and a digest of its content
    /// (so a retry of the same body finds its items' first requests, and
    /// another body under the same call key is another call).
    ///
    /// ```
    /// use grantwheel::requests::wire::Batch;
    /// let b = Batch::parse(br#"[{"IdempotencyKey":"k1"}, {"AccessType":1}]"#, 10).unwrap();
    /// assert_eq!(b.key(0, "share", None).as_deref(), Some("k1"));
    /// assert_eq!(b.key(1, "share", None), None);
    /// let made = b.key(1, "share", Some("call-9")).unwrap();
    /// assert!(made.starts_with("call-9/share/1/"));
    /// assert_eq!(Batch::parse(br#"[{}, {"AccessType":1}]"#, 10).unwrap().key(1, "share", Some("call-9")), Some(made));
    /// ```
    pub fn key(&self, index: usize, kind: &str, call: Option<&str>) -> Option<String> {
        let item = self.items.get(index)?;
        if let Some(Value::String(own)) = item.get("IdempotencyKey") {
            return Some(own.clone());
        }
        call.map(|call| {
            format!(
                "{call}/{kind}/{index}/{:016x}",
                fnv1a(item.to_string().as_bytes())
            )
        })
    }

    /// Decode its items as shares: one result per item, in order.
    pub fn shares(&self, limits: &Limits) -> Vec<Result<ShareItem, ItemError>> {
        self.items
            .iter()
            .enumerate()
            .map(|(i, v)| share_item(i, v, limits))
            .collect()
    }

    /// Decode its items as revokes: one result per item, in order.
    pub fn revokes(&self) -> Vec<Result<RevokeItem, ItemError>> {
        self.items
            .iter()
            .enumerate()
            .map(|(i, v)| revoke_item(i, v))
            .collect()
    }
}
