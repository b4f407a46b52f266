//! Human-friendly units used in configuration: durations (`250ms`, `5s`, `1h`) and
//! sizes (`64MiB`, `1GiB`, or plain bytes).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A duration written as a humantime string, e.g. `250ms`, `5s`, `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }
    pub const fn from_secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| format!("`{s}` is not a duration ({e}); write it like 250ms, 5s or 1h"))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 250ms, 5s or 1h")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "`{v}` has no unit; write it like {v}s or {v}ms"
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "`{v}` is not a duration; write it like 5s"
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "`{v}` is not a duration; write it like 1500ms"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A size in bytes, written as plain bytes (`65536`) or with a unit
/// (`64KiB`, `64MiB`, `1GiB`; decimal `KB`, `MB`, `GB` are also accepted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn kib(n: u64) -> Self {
        Self(n * 1024)
    }
    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }
    pub const fn gib(n: u64) -> Self {
        Self(n << 30)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        for (unit, size) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || format!("`{s}` is not a size; write it like 65536, 64KiB, 64MiB or 1GiB");
        let too_large = || format!("`{s}` is too large: more than 2^64 bytes");
        let n: u64 = num
            .parse()
            .map_err(|e: std::num::ParseIntError| match e.kind() {
                std::num::IntErrorKind::PosOverflow => too_large(),
                _ => bad(),
            })?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "Ki" => 1 << 10,
            "MiB" | "Mi" => 1 << 20,
            "GiB" | "Gi" => 1 << 30,
            "KB" | "kB" | "K" | "k" => 1_000,
            "MB" | "M" => 1_000_000,
            "GB" | "G" => 1_000_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(too_large)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 65536, 64KiB or 64MiB")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("`{v}` is negative; a size must be positive")))
            }
        }
        d.deserialize_any(V)
    }
}

/// Durations in a resource are kept to the form both the loader and Kubernetes' CEL
/// `duration()` read: digits and a unit, largest unit first (`250ms`, `5s`, `1h30m`). The
/// digit counts are bounded so the longest duration the pattern admits (about 146 years)
/// fits Go's `time.Duration` (292 years), which CEL's `duration()` converts to: an
/// unbounded count let `99999999999999999999h` past the schema and broke every reader.
pub const DURATION_PATTERN: &str =
    "^([0-9]{1,5}h)?([0-9]{1,7}m)?([0-9]{1,9}s)?([0-9]{1,12}ms)?([0-9]{1,15}us)?([0-9]{1,18}ns)?$";

/// The longest duration string [`DURATION_PATTERN`] admits; also bounds the cost the API
/// server estimates for the CEL rules that read durations.
pub const DURATION_MAX_LENGTH: u64 = 75;

/// A size as a string: digits and an optional unit, with at most about 10^15 bytes in any
/// unit (so it always fits the loader's u64).
pub const SIZE_PATTERN: &str = "^([0-9]{1,15} ?B?|[0-9]{1,12} ?(KiB|Ki|KB|kB|K|k)|[0-9]{1,9} ?(MiB|Mi|MB|M)|[0-9]{1,6} ?(GiB|Gi|GB|G))$";

/// The largest size as a plain integer: 10^15 bytes, beside [`SIZE_PATTERN`]'s bound.
pub const SIZE_MAX: u64 = 1_000_000_000_000_000;

impl schemars::JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "minLength": 2,
            "maxLength": DURATION_MAX_LENGTH,
        })
    }
}

impl schemars::JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }

    fn inline_schema() -> bool {
        true
    }

    /// Bytes as an integer, or a string with a unit: Kubernetes' int-or-string. The
    /// checks sit beside each other, not in an `anyOf`: `minimum` only binds integers and
    /// `pattern` only strings, and in an `anyOf` the `minimum` branch would let any
    /// string through.
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "x-kubernetes-int-or-string": true,
            "minimum": 0,
            "maximum": SIZE_MAX,
            "pattern": SIZE_PATTERN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_patterns_accept_exactly_what_the_parsers_read() {
        let duration = schema_check::<HumanDuration>();
        for ok in ["250ms", "5s", "1h", "1h30m", "10m", "100us", "7ns"] {
            assert!(duration(ok), "{ok}");
            assert!(ok.parse::<HumanDuration>().is_ok(), "{ok}");
        }
        for bad in [
            "5",
            "1.5s",
            "5 s",
            "-1s",
            "5sec",
            "",
            "99999999999999999999h",
            "5s1h",
        ] {
            assert!(!duration(bad), "{bad}");
        }
        // The longest the pattern admits still parses, in the loader and as a Go duration.
        let longest = "99999h9999999m999999999s999999999999ms999999999999999us999999999999999999ns";
        assert!(duration(longest));
        assert_eq!(longest.len() as u64, DURATION_MAX_LENGTH);
        let parsed = longest.parse::<HumanDuration>().expect("parses");
        assert!(parsed.0.as_nanos() < i64::MAX as u128, "fits time.Duration");
        let size = schema_check::<ByteSize>();
        for ok in ["64MiB", "1GiB", "65536", "10 KB", "512Ki"] {
            assert!(size(ok), "{ok}");
            assert!(ok.parse::<ByteSize>().is_ok(), "{ok}");
        }
        for bad in [
            "64 furlongs",
            "MiB",
            "-1",
            "99999999999999999999GiB",
            "9999999GiB",
        ] {
            assert!(!size(bad), "{bad}");
        }
        for longest in [
            "999999999999999",
            "999999999999KiB",
            "999999999MiB",
            "999999GiB",
        ] {
            assert!(size(longest), "{longest}");
            assert!(longest.parse::<ByteSize>().is_ok(), "{longest}");
        }
    }

    /// The type's schema, as a JSON-schema validator (the API server's dialect) checks it
    /// on a string value.
    fn schema_check<T: schemars::JsonSchema>() -> impl Fn(&str) -> bool {
        let schema = serde_json::to_value(schemars::schema_for!(T)).expect("a schema");
        let v = jsonschema::validator_for(&schema).expect("valid schema");
        move |s| v.is_valid(&serde_json::json!(s))
    }

    #[test]
    fn sizes_accept_binary_units_and_plain_bytes() {
        assert_eq!("64MiB".parse::<ByteSize>(), Ok(ByteSize(64 << 20)));
        assert_eq!("1GiB".parse::<ByteSize>(), Ok(ByteSize(1 << 30)));
        assert_eq!("65536".parse::<ByteSize>(), Ok(ByteSize(65536)));
        assert_eq!("10 KB".parse::<ByteSize>(), Ok(ByteSize(10_000)));
        assert!("64 furlongs".parse::<ByteSize>().is_err());
        assert!("MiB".parse::<ByteSize>().is_err());
        let err = "99999999999999GiB".parse::<ByteSize>().unwrap_err();
        assert!(err.contains("too large"), "{err}");
        let err = "99999999999999999999GiB".parse::<ByteSize>().unwrap_err();
        assert!(err.contains("too large"), "{err}");
    }

    #[test]
    fn sizes_print_in_the_largest_exact_unit() {
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }

    #[test]
    fn durations_are_humantime_strings_and_bare_numbers_are_refused() {
        let d: HumanDuration = serde_yaml::from_str("250ms").unwrap();
        assert_eq!(d.0, Duration::from_millis(250));
        let err = serde_yaml::from_str::<HumanDuration>("5").unwrap_err();
        assert!(err.to_string().contains("5s"), "{err}");
    }
}
