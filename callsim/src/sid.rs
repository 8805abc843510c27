//! Twilio-shaped identifiers: two letters and 32 lowercase hex digits (protocols.md §3).

use rand::Rng;

/// `prefix` + 32 random hex digits, e.g. `sid("CA")`.
pub fn sid(prefix: &str) -> String {
    let mut rng = rand::thread_rng();
    let mut s = String::with_capacity(prefix.len() + 32);
    s.push_str(prefix);
    for _ in 0..32 {
        s.push(char::from_digit(rng.gen_range(0..16), 16).unwrap_or('0'));
    }
    s
}

/// Whether `s` is `prefix` followed by exactly 32 hex digits (proto owns the rule).
pub use proto::twilio::is_sid;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids_have_twilio_shape() {
        for p in ["CA", "AC", "MZ"] {
            let s = sid(p);
            assert!(is_sid(&s, p), "{s}");
            assert_eq!(s.len(), 34);
        }
        assert_ne!(sid("CA"), sid("CA"));
        assert!(!is_sid("CA123", "CA"));
    }
}
