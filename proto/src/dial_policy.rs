//! Which phone numbers the bridge may dial on the operator's account (`TRANSFER_ALLOW`,
//! `DIAL_ALLOW`): toll fraud is a caller talking a model into dialling a premium number, so the
//! number a transfer or an outbound call goes to must be on a list the operator wrote.
//!
//! A list is comma-separated rules: an E.164 number (`+15551234567`) matches itself, a prefix
//! ending in `*` (`+44203*`) matches numbers that start with it. The empty list allows nothing.

use std::fmt;
use std::str::FromStr;

/// E.164: `+`, then at most 15 digits.
const E164_MAX_DIGITS: usize = 15;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllowListError {
    #[error("{0:?} is not an E.164 number (+ then up to 15 digits) or a prefix ending in *")]
    BadRule(String),
    #[error("{0:?} would allow every number: a prefix needs at least one digit")]
    TooBroad(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Exact(String),
    Prefix(String),
}

/// The numbers the operator allows; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NumberAllowList {
    rules: Vec<Rule>,
}

/// True for `+` followed by 1..=15 ASCII digits.
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else { return false };
    (1..=E164_MAX_DIGITS).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

impl NumberAllowList {
    /// Allows nothing.
    pub fn none() -> NumberAllowList {
        NumberAllowList::default()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `number` may be dialled. Only a well-formed E.164 number can match: anything
    /// else (SIP URIs, letters, spaces, a `*` of its own) is refused.
    pub fn allows(&self, number: &str) -> bool {
        is_e164(number)
            && self.rules.iter().any(|r| match r {
                Rule::Exact(n) => n == number,
                Rule::Prefix(p) => number.starts_with(p.as_str()),
            })
    }
}

impl FromStr for NumberAllowList {
    type Err = AllowListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut rules = Vec::new();
        for raw in s.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let rule = match raw.strip_suffix('*') {
                Some(prefix) => {
                    let digits = prefix.strip_prefix('+').ok_or_else(|| AllowListError::BadRule(raw.into()))?;
                    if digits.is_empty() {
                        return Err(AllowListError::TooBroad(raw.into()));
                    }
                    if digits.len() > E164_MAX_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(AllowListError::BadRule(raw.into()));
                    }
                    Rule::Prefix(prefix.to_owned())
                }
                None if is_e164(raw) => Rule::Exact(raw.to_owned()),
                None => return Err(AllowListError::BadRule(raw.into())),
            };
            rules.push(rule);
        }
        Ok(NumberAllowList { rules })
    }
}

impl fmt::Display for NumberAllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Rule::Exact(n) => f.write_str(n)?,
                Rule::Prefix(p) => write!(f, "{p}*")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_prefix_rules() {
        let l: NumberAllowList = "+15551234567, +44203*".parse().unwrap();
        assert!(l.allows("+15551234567"));
        assert!(!l.allows("+15551234568"));
        assert!(!l.allows("+1555123456"), "an exact rule is not a prefix");
        assert!(l.allows("+442031234567"));
        assert!(!l.allows("+442041234567"));
        assert_eq!(l.to_string(), "+15551234567,+44203*");
    }

    #[test]
    fn empty_allows_nothing() {
        let l: NumberAllowList = "".parse().unwrap();
        assert!(l.is_empty());
        assert!(!l.allows("+15551234567"));
        assert!(!NumberAllowList::none().allows("+1"));
        assert!(" , ".parse::<NumberAllowList>().unwrap().is_empty());
    }

    #[test]
    fn only_well_formed_numbers_match() {
        let l: NumberAllowList = "+1*".parse().unwrap();
        for bad in ["+1555 1234", "+1555-1234", "15551234567", "+1", "+1555123456789012", "sip:+1555@x", "+1*", ""] {
            if bad == "+1" {
                assert!(l.allows(bad), "+1 itself starts with +1");
                continue;
            }
            assert!(!l.allows(bad), "{bad:?}");
        }
    }

    #[test]
    fn bad_rules_are_errors() {
        assert_eq!("*".parse::<NumberAllowList>(), Err(AllowListError::BadRule("*".into())));
        assert_eq!("+*".parse::<NumberAllowList>(), Err(AllowListError::TooBroad("+*".into())));
        assert!(matches!("5551234".parse::<NumberAllowList>(), Err(AllowListError::BadRule(_))));
        assert!(matches!("+1a*".parse::<NumberAllowList>(), Err(AllowListError::BadRule(_))));
        assert!(matches!("+1234567890123456".parse::<NumberAllowList>(), Err(AllowListError::BadRule(_))));
    }
}
