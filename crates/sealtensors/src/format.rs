//! The safetensors container: the one place that parses and writes headers.
//!
//! SPEC §2: an 8-byte little-endian header length `N`, `N` bytes of UTF-8 JSON
//! (padded with spaces to a multiple of 8), then the data buffer. The JSON is an
//! object whose members are tensor entries `{"dtype","shape","data_offsets"}`
//! and an optional `"__metadata__"` string-to-string map. Offsets are relative
//! to the data buffer, contiguous from 0, in file order, and the data buffer
//! ends exactly at the end of the file.
//!
//! This parser is stricter than the official one: duplicate JSON keys, unknown
//! fields in a tensor entry and non-string metadata values are rejected, so the
//! meaning of a header cannot depend on which duplicate a parser keeps.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::Path;
use std::str::FromStr;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};
use crate::source::Source;

/// Largest header accepted, in bytes (SPEC §9; the official parser's bound).
pub const MAX_HEADER_LEN: u64 = 100_000_000;
/// Most tensors in one file (SPEC §9).
pub const MAX_TENSORS: usize = 1_000_000;
/// Longest tensor name, in bytes (SPEC §9).
pub const MAX_NAME_LEN: usize = 4096;
/// Most dimensions of a tensor (SPEC §9).
pub const MAX_RANK: usize = 64;
/// The `__metadata__` key of the safetensors header.
pub const METADATA_KEY: &str = "__metadata__";

/// Element types, named as in the safetensors header, declared in the order
/// the official writer uses to lay tensors out (it sorts by this order,
/// descending, then by name).
#[allow(non_camel_case_types, missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Dtype {
    BOOL,
    F4,
    F6_E2M3,
    F6_E3M2,
    U8,
    I8,
    F8_E5M2,
    F8_E4M3,
    F8_E8M0,
    F8_E4M3FNUZ,
    F8_E5M2FNUZ,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    C64,
    F64,
    I64,
    U64,
}

const DTYPES: [(Dtype, &str, usize); 22] = [
    (Dtype::BOOL, "BOOL", 8),
    (Dtype::F4, "F4", 4),
    (Dtype::F6_E2M3, "F6_E2M3", 6),
    (Dtype::F6_E3M2, "F6_E3M2", 6),
    (Dtype::U8, "U8", 8),
    (Dtype::I8, "I8", 8),
    (Dtype::F8_E5M2, "F8_E5M2", 8),
    (Dtype::F8_E4M3, "F8_E4M3", 8),
    (Dtype::F8_E8M0, "F8_E8M0", 8),
    (Dtype::F8_E4M3FNUZ, "F8_E4M3FNUZ", 8),
    (Dtype::F8_E5M2FNUZ, "F8_E5M2FNUZ", 8),
    (Dtype::I16, "I16", 16),
    (Dtype::U16, "U16", 16),
    (Dtype::F16, "F16", 16),
    (Dtype::BF16, "BF16", 16),
    (Dtype::I32, "I32", 32),
    (Dtype::U32, "U32", 32),
    (Dtype::F32, "F32", 32),
    (Dtype::C64, "C64", 64),
    (Dtype::F64, "F64", 64),
    (Dtype::I64, "I64", 64),
    (Dtype::U64, "U64", 64),
];

impl Dtype {
    /// Every dtype, in layout order.
    pub fn all() -> impl Iterator<Item = Dtype> {
        DTYPES.iter().map(|d| d.0)
    }
    /// The header spelling, e.g. `"BF16"`.
    pub fn as_str(self) -> &'static str {
        DTYPES.iter().find(|d| d.0 == self).map_or("?", |d| d.1)
    }
    /// Size of one element in bits.
    pub fn bits(self) -> usize {
        DTYPES.iter().find(|d| d.0 == self).map_or(8, |d| d.2)
    }
    /// Number of bytes taken by `shape`, or `None` on overflow or a
    /// sub-byte dtype whose total is not a whole number of bytes.
    pub fn byte_len(self, shape: &[u64]) -> Option<usize> {
        let n = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
        let bits = n.checked_mul(self.bits() as u64)?;
        if bits % 8 != 0 {
            return None;
        }
        usize::try_from(bits / 8).ok()
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Dtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        DTYPES
            .iter()
            .find(|d| d.1 == s)
            .map(|d| d.0)
            .ok_or_else(|| Error::container(format!("unknown dtype {s:?}")))
    }
}

/// One tensor entry of the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape (row-major).
    pub shape: Vec<u64>,
    /// Byte range in the data buffer.
    pub begin: usize,
    /// End of the byte range (exclusive).
    pub end: usize,
}

impl TensorInfo {
    /// Length of the tensor's data in bytes.
    pub fn len(&self) -> usize {
        self.end - self.begin
    }
    /// Whether the tensor has no bytes.
    pub fn is_empty(&self) -> bool {
        self.end == self.begin
    }
}

/// A parsed header: tensors in data order and the `__metadata__` map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Tensors sorted by `begin` (the order of the data buffer).
    pub tensors: Vec<TensorInfo>,
    /// The `__metadata__` map, `None` when the header has none.
    pub metadata: Option<BTreeMap<String, String>>,
    /// `N`: the length of the JSON part, padding included.
    pub header_len: u64,
}

/// Open a file and parse its header (SPEC §2), checking its total length.
pub fn read_header(path: &Path) -> Result<(File, Header)> {
    // Refused before any request is made.
    let local_only = || {
        Error::Config("this operation reads local files only; download the model first".into())
            .in_file(path)
    };
    if crate::source::is_remote(path) {
        return Err(local_only());
    }
    let (src, h) = read_header_source(path)?;
    match src {
        Source::Local(f) => Ok((f, h)),
        #[cfg(feature = "remote")]
        Source::Remote(_) => Err(local_only()),
    }
}

/// Open a local file or a remote object (a URL) and parse its header,
/// checking its total length. A remote header costs one request (the
/// speculative first read), two when the header is larger than it.
pub(crate) fn read_header_source(path: &Path) -> Result<(Source, Header)> {
    let inner = || -> Result<(Source, Header)> {
        let src = Source::open(path)?;
        let len = src.len()?;
        if len < 8 {
            return Err(Error::container(
                "the file is shorter than the 8-byte header length",
            ));
        }
        let mut prefix = [0u8; 8];
        src.read_exact_at(&mut prefix, 0, "reading the header length")?;
        if u64::from_le_bytes(prefix) > len - 8 {
            return Err(Error::container(
                "the header length in the first 8 bytes runs past the end of the file",
            ));
        }
        let n = Header::parse_len(&prefix)?;
        let mut json = vec![0u8; n as usize];
        src.read_exact_at(&mut json, 8, "reading the header")?;
        let h = Header::parse_json(&json)?;
        h.check_file_len(len)?;
        Ok((src, h))
    };
    inner().map_err(|e| e.in_file(path))
}

impl Header {
    /// Offset of the data buffer from the start of the file.
    pub fn data_start(&self) -> u64 {
        8 + self.header_len
    }
    /// Length of the data buffer.
    pub fn data_len(&self) -> usize {
        self.tensors.last().map_or(0, |t| t.end)
    }
    /// Index of a tensor by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.tensors.iter().position(|t| t.name == name)
    }

    /// Parse the header of a whole file held in memory (checks the total length).
    pub fn parse_buffer(buf: &[u8]) -> Result<Header> {
        let n = Self::parse_len(buf.get(..8).ok_or_else(|| {
            Error::container("the file is shorter than the 8-byte header length")
        })?)?;
        let stop = 8usize
            .checked_add(usize::try_from(n).map_err(|_| Error::container("header too long"))?)
            .ok_or_else(|| Error::container("header length overflows"))?;
        let json = buf
            .get(8..stop)
            .ok_or_else(|| Error::container("the header runs past the end of the file"))?;
        let h = Self::parse_json(json)?;
        h.check_file_len(buf.len() as u64)?;
        Ok(h)
    }

    /// Decode and bound the 8-byte length prefix.
    pub fn parse_len(prefix: &[u8]) -> Result<u64> {
        let arr: [u8; 8] = prefix
            .try_into()
            .map_err(|_| Error::container("the length prefix is not 8 bytes"))?;
        let n = u64::from_le_bytes(arr);
        if n > MAX_HEADER_LEN {
            return Err(Error::LimitExceeded {
                what: "header length",
                got: n,
                max: MAX_HEADER_LEN,
            });
        }
        Ok(n)
    }

    /// Check that the data buffer ends exactly at the end of the file.
    pub fn check_file_len(&self, file_len: u64) -> Result<()> {
        // Checked: hostile offsets can sum past 2^64 (a wrapped sum could
        // otherwise match the file length).
        let want = self.data_start().checked_add(self.data_len() as u64);
        if want != Some(file_len) {
            let want = want.map_or("more than 2^64".to_string(), |w| w.to_string());
            return Err(Error::container(format!(
                "the header describes {want} bytes but the file has {file_len} (truncated or extended)"
            )));
        }
        Ok(())
    }

    /// Parse the JSON part (exactly `N` bytes, padding included).
    pub fn parse_json(json: &[u8]) -> Result<Header> {
        let text = std::str::from_utf8(json)
            .map_err(|_| Error::container("the header is not valid UTF-8"))?;
        let raw: RawHeader = serde_json::from_str(text)
            .map_err(|e| Error::container(format!("the header is not valid JSON: {e}")))?;
        let mut tensors = Vec::with_capacity(raw.tensors.len());
        for (name, entry) in raw.tensors {
            if name.len() > MAX_NAME_LEN {
                return Err(Error::LimitExceeded {
                    what: "tensor name length",
                    got: name.len() as u64,
                    max: MAX_NAME_LEN as u64,
                });
            }
            if entry.shape.len() > MAX_RANK {
                return Err(Error::LimitExceeded {
                    what: "tensor rank",
                    got: entry.shape.len() as u64,
                    max: MAX_RANK as u64,
                });
            }
            let dtype: Dtype = entry.dtype.parse()?;
            let (b, e) = entry.data_offsets;
            let begin = usize::try_from(b).map_err(|_| Error::container("offset too large"))?;
            let end = usize::try_from(e).map_err(|_| Error::container("offset too large"))?;
            let expected = dtype.byte_len(&entry.shape).ok_or_else(|| {
                Error::container(format!(
                    "tensor {name:?}: shape size overflows or is not whole bytes"
                ))
            })?;
            if end < begin || end - begin != expected {
                return Err(Error::container(format!(
                    "tensor {name:?}: data_offsets [{b}, {e}] do not match dtype {dtype} and shape {:?}",
                    entry.shape
                )));
            }
            tensors.push(TensorInfo {
                name,
                dtype,
                shape: entry.shape,
                begin,
                end,
            });
        }
        // Stable: ties (empty tensors at one offset) keep their JSON order,
        // so a plain file is written back byte for byte (SPEC §2.1 item 6).
        tensors.sort_by_key(|t| (t.begin, t.end));
        let mut at = 0usize;
        for t in &tensors {
            if t.begin != at {
                return Err(Error::container(format!(
                    "tensor {:?}: data_offsets start at {} but the previous tensor ends at {at} (gap or overlap)",
                    t.name, t.begin
                )));
            }
            at = t.end;
        }
        Ok(Header {
            tensors,
            metadata: raw.metadata,
            header_len: json.len() as u64,
        })
    }

    /// Serialise the JSON part as the official safetensors writer does:
    /// `__metadata__` first (its keys sorted), then tensors in data order,
    /// compact, padded with spaces to a multiple of 8.
    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = self.to_json_unpadded();
        let padded = bytes.len().next_multiple_of(8);
        bytes.resize(padded, b' ');
        bytes
    }

    /// [`to_json`](Self::to_json) without the padding.
    pub fn to_json_unpadded(&self) -> Vec<u8> {
        let mut out = String::with_capacity(64 + self.tensors.len() * 96);
        out.push('{');
        let mut first = true;
        if let Some(meta) = &self.metadata {
            out.push_str("\"__metadata__\":");
            out.push_str(&json_str_map(meta));
            first = false;
        }
        for t in &self.tensors {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&json_string(&t.name));
            out.push_str(":{\"dtype\":");
            out.push_str(&json_string(t.dtype.as_str()));
            out.push_str(",\"shape\":[");
            let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
            out.push_str(&dims.join(","));
            out.push_str(&format!("],\"data_offsets\":[{},{}]}}", t.begin, t.end));
        }
        out.push('}');
        out.into_bytes()
    }

    /// The 8-byte prefix and the JSON part.
    pub fn to_bytes(&self) -> Vec<u8> {
        let json = self.to_json();
        let mut out = Vec::with_capacity(8 + json.len());
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        out
    }
}

/// Lay tensors out as the official writer does: by dtype descending, then by
/// name (byte order). Returns offsets assigned from 0.
pub fn official_layout(mut specs: Vec<(String, Dtype, Vec<u64>)>) -> Result<Vec<TensorInfo>> {
    specs.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut at = 0usize;
    let mut out = Vec::with_capacity(specs.len());
    // Sorted by dtype first, so a name given twice with two dtypes is not
    // adjacent: a set finds it either way.
    let mut seen = std::collections::HashSet::with_capacity(specs.len());
    for (name, _, _) in &specs {
        if !seen.insert(name.as_str()) {
            return Err(Error::ApiMisuse(format!("tensor {name:?} given twice")));
        }
    }
    for (name, dtype, shape) in specs {
        let len = dtype.byte_len(&shape).ok_or_else(|| {
            Error::ApiMisuse(format!("tensor {name:?}: shape {shape:?} overflows"))
        })?;
        let end = at
            .checked_add(len)
            .ok_or_else(|| Error::ApiMisuse("total size overflows".into()))?;
        out.push(TensorInfo {
            name,
            dtype,
            shape,
            begin: at,
            end,
        });
        at = end;
    }
    Ok(out)
}

/// JSON string literal as serde_json writes it (SPEC §2.2).
pub(crate) fn json_string(s: &str) -> String {
    // serde_json's string serialisation cannot fail for a `str`.
    serde_json::to_string(s).unwrap_or_default()
}

fn json_str_map(m: &BTreeMap<String, String>) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&json_string(k));
        out.push(':');
        out.push_str(&json_string(v));
    }
    out.push('}');
    out
}

// ---- strict deserialisation ---------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

struct RawHeader {
    tensors: Vec<(String, RawEntry)>,
    metadata: Option<BTreeMap<String, String>>,
}

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHeader;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a safetensors header object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<RawHeader, A::Error> {
                let mut seen = std::collections::HashSet::new();
                let mut tensors = Vec::new();
                let mut metadata = None;
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(de::Error::custom(format!("duplicate key {key:?}")));
                    }
                    if key == METADATA_KEY {
                        let m: UniqueMapOf<String> = map.next_value()?;
                        metadata = Some(m.0);
                    } else {
                        if tensors.len() >= MAX_TENSORS {
                            return Err(de::Error::custom(format!(
                                "more than {MAX_TENSORS} tensors"
                            )));
                        }
                        let e: RawEntry = map.next_value()?;
                        tensors.push((key, e));
                    }
                }
                Ok(RawHeader { tensors, metadata })
            }
        }
        d.deserialize_map(V)
    }
}

/// A JSON object that rejects duplicate keys.
pub(crate) struct UniqueMapOf<V>(pub BTreeMap<String, V>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMapOf<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Vis<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Vis<V> {
            type Value = UniqueMapOf<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object without duplicate keys")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<UniqueMapOf<V>, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(k) = map.next_key::<String>()? {
                    let v: V = map.next_value()?;
                    if out.insert(k.clone(), v).is_some() {
                        return Err(de::Error::custom(format!("duplicate key {k:?}")));
                    }
                }
                Ok(UniqueMapOf(out))
            }
        }
        d.deserialize_map(Vis(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_attack_duplicate_keys_rejected() {
        let j = br#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
        assert!(matches!(
            Header::parse_json(j),
            Err(Error::InvalidContainer(_))
        ));
        let j = br#"{"__metadata__":{"k":"1","k":"2"}}"#;
        assert!(Header::parse_json(j).is_err());
    }

    #[test]
    fn validation_overflow_rejected() {
        let j = br#"{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#;
        assert!(Header::parse_json(j).is_err());
    }

    #[test]
    fn unknown_fields_and_dtypes_rejected() {
        let j = br#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1}}"#;
        assert!(Header::parse_json(j).is_err());
        let j = br#"{"a":{"dtype":"Q8","shape":[1],"data_offsets":[0,1]}}"#;
        assert!(Header::parse_json(j).is_err());
    }

    #[test]
    fn gaps_and_overlaps_rejected() {
        let j = br#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#;
        assert!(Header::parse_json(j).is_err());
        let j = br#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}"#;
        assert!(Header::parse_json(j).is_err());
    }

    #[test]
    fn round_trip_and_layout() {
        let t = official_layout(vec![
            ("b".into(), Dtype::U8, vec![3]),
            ("a".into(), Dtype::F32, vec![2, 2]),
            ("c".into(), Dtype::F32, vec![0]),
        ])
        .unwrap();
        assert_eq!(t[0].name, "a");
        assert_eq!(t[1].name, "c");
        assert_eq!(t[2].name, "b");
        let h = Header {
            tensors: t,
            metadata: Some([("k".to_string(), "v\"\n".to_string())].into()),
            header_len: 0,
        };
        let bytes = h.to_json();
        assert_eq!(bytes.len() % 8, 0);
        let p = Header::parse_json(&bytes).unwrap();
        assert_eq!(p.tensors, h.tensors);
        assert_eq!(p.metadata, h.metadata);
    }

    #[test]
    fn huge_length_prefix_rejected() {
        let mut buf = u64::MAX.to_le_bytes().to_vec();
        buf.extend_from_slice(b"{}");
        assert!(matches!(
            Header::parse_buffer(&buf),
            Err(Error::LimitExceeded { .. })
        ));
    }
}
