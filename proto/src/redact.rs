//! Callers' personal data in logs: phone numbers are shown masked (`+1555***0001`), enough to
//! tell calls apart and recognise a test number, not enough to identify a caller.

use std::fmt;

/// Displays a phone number (or any caller identifier) masked; use it as a tracing field,
/// `from = %Masked(&info.from)`, so nothing is allocated unless the line is written.
#[derive(Clone, Copy)]
pub struct Masked<'a>(pub &'a str);

impl fmt::Display for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chars: Vec<char> = self.0.chars().collect();
        let n = chars.len();
        let keep = |r: std::ops::Range<usize>| chars[r].iter().collect::<String>();
        match n {
            0 => Ok(()),
            1..=4 => f.write_str("***"),
            5..=8 => write!(f, "***{}", keep(n - 2..n)),
            _ => write!(f, "{}***{}", keep(0..5), keep(n - 4..n)),
        }
    }
}

impl fmt::Debug for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// The masked form as a `String`.
pub fn mask_number(number: &str) -> String {
    Masked(number).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_masked() {
        assert_eq!(mask_number("+15550000001"), "+1555***0001");
        assert_eq!(mask_number("+442071234567"), "+4420***4567");
        assert_eq!(mask_number("1234"), "***");
        assert_eq!(mask_number("12345678"), "***78");
        assert_eq!(mask_number(""), "");
        assert_eq!(mask_number("sip:alice@example.com"), "sip:a***.com");
        assert_eq!(format!("{:?}", Masked("+15550000001")), "\"+1555***0001\"");
        // Multi-byte characters are never split.
        assert_eq!(mask_number("ünïcödé-nümbér"), "ünïcö***mbér");
    }
}
