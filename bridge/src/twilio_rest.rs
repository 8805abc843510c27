//! Twilio REST: place a call, and update a live one (hang up, cancel, or redirect to new TwiML
//! for a transfer).

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("Twilio REST request failed: {0}")]
    Http(String),
    #[error("Twilio REST answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("invalid call sid {0:?}")]
    BadSid(String),
}

#[derive(Clone)]
pub struct TwilioRest {
    http: reqwest::Client,
    base: String,
    account_sid: String,
    auth_token: String,
}

impl TwilioRest {
    pub fn new(base: &str, account_sid: &str, auth_token: &str) -> TwilioRest {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
        TwilioRest {
            http,
            base: base.trim_end_matches('/').to_owned(),
            account_sid: account_sid.to_owned(),
            auth_token: auth_token.to_owned(),
        }
    }

    /// `POST Calls.json`: places a call; returns its CallSid.
    pub async fn create_call(&self, form: &[(&str, String)]) -> Result<String, RestError> {
        let url = format!("{}/2010-04-01/Accounts/{}/Calls.json", self.base, self.account_sid);
        let body = self.post(&url, form).await?;
        #[derive(serde::Deserialize)]
        struct Created {
            sid: String,
        }
        let sid = serde_json::from_str::<Created>(&body).map(|c| c.sid).unwrap_or_default();
        if !is_call_sid(&sid) {
            return Err(RestError::BadSid(sid.chars().take(40).collect()));
        }
        Ok(sid)
    }

    /// `Status=canceled`: stop a call that is queued or ringing.
    pub async fn cancel(&self, call_sid: &str) -> Result<(), RestError> {
        self.update(call_sid, &[("Status", "canceled")]).await
    }

    /// `Status=completed`: hang up an in-progress call.
    pub async fn hangup(&self, call_sid: &str) -> Result<(), RestError> {
        self.update(call_sid, &[("Status", "completed")]).await
    }

    /// Replace the call's TwiML (e.g. `<Dial>` for a transfer).
    pub async fn redirect(&self, call_sid: &str, twiml: &str) -> Result<(), RestError> {
        self.update(call_sid, &[("Twiml", twiml)]).await
    }

    async fn update(&self, call_sid: &str, form: &[(&str, &str)]) -> Result<(), RestError> {
        // The sid goes into the URL path: accept only what Twilio issues.
        if !is_call_sid(call_sid) {
            return Err(RestError::BadSid(call_sid.to_owned()));
        }
        let url = format!("{}/2010-04-01/Accounts/{}/Calls/{}.json", self.base, self.account_sid, call_sid);
        self.post(&url, form).await.map(|_| ())
    }

    /// A form POST with the account's credentials; the body of a 2xx answer.
    async fn post<K: serde::Serialize, V: serde::Serialize>(&self, url: &str, form: &[(K, V)]) -> Result<String, RestError> {
        let resp = self
            .http
            .post(url)
            .basic_auth(&self.account_sid, Some(&self.auth_token))
            .header("Accept", "application/json")
            .form(form)
            .send()
            .await
            .map_err(|e| RestError::Http(e.to_string()))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(RestError::Status { status: status.as_u16(), body: body.chars().take(300).collect() });
        }
        Ok(body)
    }
}

/// `CA` + 32 hex digits, as Twilio issues them.
pub fn is_call_sid(s: &str) -> bool {
    s.len() == 34 && s.starts_with("CA") && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}
