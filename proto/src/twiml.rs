//! TwiML answers for `/incoming-call`, and the small parser the call simulator uses to read them.
//!
//! Limits come from Twilio's docs (protocols.md §1): a `<Stream url>` is `wss` only and carries no
//! query string (Twilio drops it; values go in `<Parameter>`s); a `<Sip>` URI is under 255
//! characters with its header part under 1024, and a literal `&` inside a header value is `%26`.

use quick_xml::events::Event;
use quick_xml::Reader;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TwimlError {
    #[error("stream url must be wss:// (Twilio error 31922): {0}")]
    StreamUrlNotWss(String),
    #[error("stream url must not contain a query string (Twilio drops it): {0}")]
    StreamUrlHasQuery(String),
    #[error("SIP URI must start with sip: or sips: ({0})")]
    SipUriScheme(String),
    #[error("SIP header {0:?} is not allowed: use an X- header")]
    SipHeaderName(String),
    #[error("SIP URI is {0} characters; Twilio's limit is under 255")]
    SipUriTooLong(usize),
    #[error("SIP headers are {0} characters; Twilio's limit is under 1024")]
    SipHeadersTooLong(usize),
    #[error("TwiML is not well-formed XML: {0}")]
    Xml(String),
    #[error("TwiML has no <{0}>")]
    Missing(&'static str),
}

/// `<Connect><Stream>`: the bidirectional media stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectStream {
    pub url: String,
    pub name: Option<String>,
    pub status_callback: Option<String>,
    /// Arrive in `start.customParameters`.
    pub parameters: Vec<(String, String)>,
}

impl ConnectStream {
    pub fn to_twiml(&self) -> Result<String, TwimlError> {
        if !self.url.starts_with("wss://") {
            return Err(TwimlError::StreamUrlNotWss(self.url.clone()));
        }
        if self.url.contains('?') {
            return Err(TwimlError::StreamUrlHasQuery(self.url.clone()));
        }
        let mut x = String::with_capacity(256);
        x.push_str(r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url=""#);
        escape_into(&self.url, &mut x);
        x.push('"');
        if let Some(name) = &self.name {
            x.push_str(r#" name=""#);
            escape_into(name, &mut x);
            x.push('"');
        }
        if let Some(cb) = &self.status_callback {
            x.push_str(r#" statusCallback=""#);
            escape_into(cb, &mut x);
            x.push_str(r#"" statusCallbackMethod="POST""#);
        }
        x.push('>');
        for (k, v) in &self.parameters {
            x.push_str(r#"<Parameter name=""#);
            escape_into(k, &mut x);
            x.push_str(r#"" value=""#);
            escape_into(v, &mut x);
            x.push_str(r#""/>"#);
        }
        x.push_str("</Stream></Connect></Response>");
        Ok(x)
    }
}

/// `<Dial><Sip>`: hand the call to a SIP endpoint (LiveKit SIP).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DialSip {
    /// e.g. `sip:+15105550100@proj.sip.livekit.cloud;transport=tcp`
    pub uri: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Sent as SIP headers on the INVITE; names must be `X-…` (or one of the few Twilio allows).
    pub headers: Vec<(String, String)>,
    pub action: Option<String>,
}

const ALLOWED_NON_X: [&str; 4] = ["User-to-User", "Remote-Party-ID", "P-Preferred-Identity", "P-Called-Party-ID"];

impl DialSip {
    /// The URI with headers appended as Twilio expects: `?X-A=1&X-B=2`, `&` in values as `%26`.
    pub fn full_uri(&self) -> Result<String, TwimlError> {
        if !(self.uri.starts_with("sip:") || self.uri.starts_with("sips:")) {
            return Err(TwimlError::SipUriScheme(self.uri.clone()));
        }
        let mut headers = String::new();
        for (name, value) in &self.headers {
            let ok_name = name.len() > 2
                && (name[..2].eq_ignore_ascii_case("x-") || ALLOWED_NON_X.iter().any(|a| a.eq_ignore_ascii_case(name)))
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok_name {
                return Err(TwimlError::SipHeaderName(name.clone()));
            }
            headers.push(if headers.is_empty() { '?' } else { '&' });
            headers.push_str(name);
            headers.push('=');
            for c in value.chars() {
                match c {
                    '&' => headers.push_str("%26"),
                    '=' => headers.push_str("%3D"),
                    '?' => headers.push_str("%3F"),
                    ' ' => headers.push_str("%20"),
                    c => headers.push(c),
                }
            }
        }
        if headers.len() >= 1024 {
            return Err(TwimlError::SipHeadersTooLong(headers.len()));
        }
        let full = format!("{}{}", self.uri, headers);
        if full.len() >= 255 {
            return Err(TwimlError::SipUriTooLong(full.len()));
        }
        Ok(full)
    }

    pub fn to_twiml(&self) -> Result<String, TwimlError> {
        let uri = self.full_uri()?;
        let mut x = String::from(r#"<?xml version="1.0" encoding="UTF-8"?><Response><Dial"#);
        if let Some(action) = &self.action {
            x.push_str(r#" action=""#);
            escape_into(action, &mut x);
            x.push('"');
        }
        x.push_str("><Sip");
        for (attr, val) in [("username", &self.username), ("password", &self.password)] {
            if let Some(v) = val {
                x.push_str(&format!(r#" {attr}=""#));
                escape_into(v, &mut x);
                x.push('"');
            }
        }
        x.push('>');
        escape_into(&uri, &mut x);
        x.push_str("</Sip></Dial></Response>");
        Ok(x)
    }
}

/// The answer when we cannot take the call: say why, then hang up.
pub fn busy(message: &str) -> String {
    let mut x = String::from(r#"<?xml version="1.0" encoding="UTF-8"?><Response><Say>"#);
    escape_into(message, &mut x);
    x.push_str("</Say><Hangup/></Response>");
    x
}

/// Send the call to another TwiML document (e.g. `FALLBACK_URL`: voicemail, a human queue).
pub fn redirect(url: &str) -> String {
    let mut x = String::from(r#"<?xml version="1.0" encoding="UTF-8"?><Response><Redirect method="POST">"#);
    escape_into(url, &mut x);
    x.push_str("</Redirect></Response>");
    x
}

/// Transfer: dial a phone number (used with the REST `Twiml=` update).
pub fn dial_number(number: &str, caller_id: Option<&str>) -> String {
    let mut x = String::from("<Response><Dial");
    if let Some(cid) = caller_id {
        x.push_str(r#" callerId=""#);
        escape_into(cid, &mut x);
        x.push('"');
    }
    x.push_str("><Number>");
    escape_into(number, &mut x);
    x.push_str("</Number></Dial></Response>");
    x
}

/// Escapes text for both element content and double-quoted attributes.
pub fn escape_into(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0; drop them rather than emit bad XML.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
}

/// What a TwiML answer asks Twilio to do, as far as the simulator needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Stream(ConnectStream),
    Sip(DialSip),
    /// `<Say>` text then `<Hangup/>` (or just `<Hangup/>`/`<Reject/>`).
    Hangup { said: Option<String> },
    /// `<Redirect>` to another TwiML URL.
    Redirect { url: String },
}

/// Reads a TwiML document (from the bridge) into an [`Answer`].
pub fn parse(xml: &str) -> Result<Answer, TwimlError> {
    let mut reader = Reader::from_str(xml);
    let mut stream: Option<ConnectStream> = None;
    let mut sip: Option<DialSip> = None;
    let mut said: Option<String> = None;
    let mut hangup = false;
    let mut redirect: Option<String> = None;
    let mut in_el: Vec<String> = Vec::new();
    let err = |e: &dyn std::fmt::Display| TwimlError::Xml(e.to_string());
    loop {
        let ev = reader.read_event().map_err(|e| err(&e))?;
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                let mut attrs = std::collections::HashMap::new();
                for a in e.attributes() {
                    let a = a.map_err(|e| err(&e))?;
                    let k = String::from_utf8_lossy(a.key.as_ref()).into_owned();
                    let v = a.unescape_value().map_err(|e| err(&e))?.into_owned();
                    attrs.insert(k, v);
                }
                match name.as_str() {
                    "Stream" if in_el.last().map(String::as_str) == Some("Connect") => {
                        stream = Some(ConnectStream {
                            url: attrs.remove("url").unwrap_or_default(),
                            name: attrs.remove("name"),
                            status_callback: attrs.remove("statusCallback"),
                            parameters: Vec::new(),
                        });
                    }
                    "Parameter" => {
                        if let Some(s) = stream.as_mut() {
                            s.parameters
                                .push((attrs.remove("name").unwrap_or_default(), attrs.remove("value").unwrap_or_default()));
                        }
                    }
                    "Sip" => {
                        sip = Some(DialSip {
                            username: attrs.remove("username"),
                            password: attrs.remove("password"),
                            ..Default::default()
                        })
                    }
                    "Hangup" | "Reject" => hangup = true,
                    _ => {}
                }
                if matches!(ev, Event::Start(_)) {
                    in_el.push(name);
                }
            }
            Event::End(_) => {
                in_el.pop();
            }
            Event::Text(t) => {
                let text = t.unescape().map_err(|e| err(&e))?.into_owned();
                match in_el.last().map(String::as_str) {
                    Some("Say") => said = Some(text),
                    Some("Redirect") => redirect = Some(text.trim().to_owned()),
                    Some("Sip") => {
                        if let Some(s) = sip.as_mut() {
                            s.uri.push_str(text.trim())
                        }
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if let Some(s) = stream {
        return Ok(Answer::Stream(s));
    }
    if let Some(mut s) = sip {
        // Split the header part back off the URI.
        if let Some((uri, hdrs)) = s.uri.clone().split_once('?') {
            s.uri = uri.to_owned();
            s.headers = hdrs
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.replace("%26", "&").replace("%3D", "=").replace("%3F", "?").replace("%20", " ")))
                .collect();
        }
        return Ok(Answer::Sip(s));
    }
    if hangup || said.is_some() {
        return Ok(Answer::Hangup { said });
    }
    if let Some(url) = redirect {
        return Ok(Answer::Redirect { url });
    }
    Err(TwimlError::Missing("Connect><Stream, Dial><Sip or Hangup"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> ConnectStream {
        ConnectStream {
            url: "wss://bridge.example.com/media-stream".into(),
            name: Some("call".into()),
            status_callback: Some("https://bridge.example.com/stream-status".into()),
            parameters: vec![("token".into(), "a&b<c>\"d'".into()), ("room".into(), "call-CA1".into())],
        }
    }

    #[test]
    fn connect_stream_is_escaped_and_parses_back() {
        let xml = stream().to_twiml().unwrap();
        assert!(xml.contains(r#"<Parameter name="token" value="a&amp;b&lt;c&gt;&quot;d&apos;"/>"#), "{xml}");
        assert!(xml.contains(r#"statusCallbackMethod="POST""#));
        assert_eq!(parse(&xml).unwrap(), Answer::Stream(stream()));
    }

    #[test]
    fn stream_url_rules() {
        let mut s = stream();
        s.url = "https://x/media".into();
        assert!(matches!(s.to_twiml(), Err(TwimlError::StreamUrlNotWss(_))));
        s.url = "wss://x/media?token=1".into();
        assert!(matches!(s.to_twiml(), Err(TwimlError::StreamUrlHasQuery(_))));
    }

    #[test]
    fn dial_sip_headers_and_limits() {
        let d = DialSip {
            uri: "sip:+15105550100@proj.sip.livekit.cloud;transport=tcp".into(),
            username: Some("u&1".into()),
            password: Some("p<2".into()),
            headers: vec![("X-Room".into(), "call-1".into()), ("X-Foo".into(), "a&b".into())],
            action: None,
        };
        assert_eq!(
            d.full_uri().unwrap(),
            "sip:+15105550100@proj.sip.livekit.cloud;transport=tcp?X-Room=call-1&X-Foo=a%26b"
        );
        let xml = d.to_twiml().unwrap();
        assert!(xml.contains(r#"<Sip username="u&amp;1" password="p&lt;2">"#), "{xml}");
        assert!(xml.contains("?X-Room=call-1&amp;X-Foo=a%26b</Sip>"), "{xml}");
        assert_eq!(parse(&xml).unwrap(), Answer::Sip(d.clone()));

        let mut bad = d.clone();
        bad.headers = vec![("Contact".into(), "x".into())];
        assert!(matches!(bad.full_uri(), Err(TwimlError::SipHeaderName(_))));
        let mut ok = d.clone();
        ok.headers = vec![("User-to-User".into(), "abc".into())];
        assert!(ok.full_uri().is_ok());
        let mut long = d.clone();
        long.headers = vec![("X-Long".into(), "a".repeat(200))];
        assert!(matches!(long.full_uri(), Err(TwimlError::SipUriTooLong(n)) if n >= 255));
        let mut scheme = d.clone();
        scheme.uri = "http://x".into();
        assert!(matches!(scheme.full_uri(), Err(TwimlError::SipUriScheme(_))));
    }

    #[test]
    fn sip_headers_limit_is_checked_before_uri_limit() {
        let d = DialSip {
            uri: "sip:a@b".into(),
            headers: (0..60).map(|i| (format!("X-H{i}"), "v".repeat(20))).collect(),
            ..Default::default()
        };
        assert!(matches!(d.full_uri(), Err(TwimlError::SipHeadersTooLong(n)) if n >= 1024));
    }

    #[test]
    fn busy_says_and_hangs_up() {
        let xml = busy("We're busy <now> & later");
        assert!(xml.contains("<Say>We&apos;re busy &lt;now&gt; &amp; later</Say><Hangup/>"), "{xml}");
        assert_eq!(parse(&xml).unwrap(), Answer::Hangup { said: Some("We're busy <now> & later".into()) });
    }

    #[test]
    fn dial_number_for_transfer() {
        assert_eq!(
            dial_number("+1555&", Some("+1999")),
            r#"<Response><Dial callerId="+1999"><Number>+1555&amp;</Number></Dial></Response>"#
        );
    }

    #[test]
    fn control_characters_are_dropped() {
        let mut s = String::new();
        escape_into("a\u{0}b\u{1b}c\td", &mut s);
        assert_eq!(s, "abc\td");
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!(parse("<Response></Response>").is_err());
        assert!(matches!(parse("<Response><Say a=>x</Say></Response>"), Err(TwimlError::Xml(_))));
    }

    #[test]
    fn redirect_round_trips() {
        let x = redirect("https://ops.example.com/voicemail?a=1&b=2");
        assert!(x.contains("a=1&amp;b=2"), "{x}");
        assert_eq!(parse(&x).unwrap(), Answer::Redirect { url: "https://ops.example.com/voicemail?a=1&b=2".into() });
    }
}
