//! Identifier types.
//!
//! Every name that enters the state machine is its own type and is validated when it is
//! built, whether from a string in code or from serde on the wire. A value of one of these
//! types is therefore always well formed, and the state machine never sees an empty, over-
//! long or oddly spelled name. Names are short, so they are stored inline (`CompactString`)
//! and cost no heap allocation per checkout.

use std::fmt;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// Why a string was refused as a name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("invalid {kind} {value:?}: {problem}")]
pub struct NameError {
    /// Which kind of name was being parsed, such as `feature name`.
    pub kind: String,
    /// The offending input, cut to a readable length.
    pub value: String,
    /// What is wrong with it and how to fix it.
    pub problem: String,
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $extra:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(CompactString);

        impl $name {
            /// The longest accepted name, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates `value` and wraps it.
            pub fn new(value: &str) -> Result<Self, NameError> {
                validate(value, $kind, Self::MAX_LEN, $extra)?;
                Ok(Self(CompactString::from(value)))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, NameError> {
                Self::new(&value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = NameError;
            fn try_from(value: &str) -> Result<Self, NameError> {
                Self::new(value)
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(value: &str) -> Result<Self, NameError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0.into()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0.as_str())
            }
        }
    };
}

name_type!(
    /// A licensed feature, such as `lsdyna` or `lsdyna-implicit`.
    FeatureName, "feature name", 64, ""
);
name_type!(
    /// A named share of a feature's tokens, such as `smp`, `mpp` or `crash-team`.
    PoolName, "pool name", 64, ""
);
name_type!(
    /// A user account, as the launcher reports it.
    UserName, "user name", 64, "@$"
);
name_type!(
    /// A group of users or hosts named in the policy.
    GroupName, "group name", 64, ""
);
name_type!(
    /// A host name or address, as the launcher reports it.
    HostName, "host name", 255, ":"
);
name_type!(
    /// The id a client chooses for itself; it keys the exactly-once session table.
    ClientId, "client id", 64, ":"
);
name_type!(
    /// A batch-system job id or other job label, for display and filtering.
    JobId, "job id", 128, ":@/+=[]"
);
name_type!(
    /// The license an entitlement came from (a file name, order or contract number).
    LicenseId, "license id", 128, ":@/+=#"
);

/// Checks the common name rules: 1..=max bytes of ASCII letters, digits, `-`, `_`, `.`
/// and the kind's `extra` characters, starting with a letter or digit.
fn validate(value: &str, kind: &str, max: usize, extra: &str) -> Result<(), NameError> {
    let refuse = |problem: String| {
        let shown: String = value.chars().take(80).collect();
        Err(NameError { kind: kind.to_string(), value: shown, problem })
    };
    if value.is_empty() {
        return refuse("it is empty; give at least one character".into());
    }
    if value.len() > max {
        return refuse(format!("it is {} bytes long; the limit is {max}", value.len()));
    }
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return refuse("it must start with an ASCII letter or digit".into());
    }
    if let Some(bad) = value
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "-_.".contains(c) || extra.contains(c)))
    {
        return refuse(format!(
            "character {bad:?} is not allowed; use ASCII letters, digits and -_.{extra}"
        ));
    }
    Ok(())
}

/// A checkout's id. Ids are assigned by the state machine in increasing order and never
/// reused; a queued request receives its id when it is queued and keeps it when granted.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CheckoutId(pub u64);

impl fmt::Display for CheckoutId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for CheckoutId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["lsdyna", "lsdyna-implicit", "a", "MPP_2", "v1.2"] {
            assert_eq!(FeatureName::new(ok).unwrap().as_str(), ok);
        }
        assert!(HostName::new("node-17.cluster.example").is_ok());
        assert!(UserName::new("jane@site").is_ok());
    }

    #[test]
    fn refuses_bad_names_with_a_reason() {
        let err = FeatureName::new("").unwrap_err();
        assert!(err.problem.contains("empty"), "{err}");
        let err = FeatureName::new(&"x".repeat(65)).unwrap_err();
        assert!(err.problem.contains("65 bytes"), "{err}");
        let err = FeatureName::new("-lead").unwrap_err();
        assert!(err.problem.contains("start with"), "{err}");
        let err = FeatureName::new("ls dyna").unwrap_err();
        assert!(err.problem.contains("' '"), "{err}");
        assert!(FeatureName::new("jane@site").is_err());
        assert!(FeatureName::new("lsdyna\u{e9}").is_err());
    }

    #[test]
    fn deserialization_validates() {
        let ok: FeatureName = serde_json::from_str("\"lsdyna\"").unwrap();
        assert_eq!(ok.as_str(), "lsdyna");
        let err = serde_json::from_str::<FeatureName>("\"bad name\"").unwrap_err();
        assert!(err.to_string().contains("feature name"), "{err}");
    }
}
