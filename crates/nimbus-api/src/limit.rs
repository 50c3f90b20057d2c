//! Whom a limit counts: the facts of one request, and the key a [`LimitKey`] takes from them
//! (the gateway's rate limits and quotas, the AI gateway's token limits).

use nimbus_config::LimitKey;

/// One request's facts a limit key is taken from.
pub struct Subject<'a> {
    pub ip: std::net::IpAddr,
    pub headers: &'a axum::http::HeaderMap,
    pub claims: Option<&'a serde_json::Value>,
    pub api_key: Option<&'a str>,
}

impl Subject<'_> {
    /// The value a limit counts per. What the request does not carry (no token on an anonymous
    /// route, a missing header) falls back to the client's IP, so it cannot share one bucket.
    pub fn key(&self, key: &LimitKey) -> String {
        let found = match key {
            LimitKey::Route => return "route".into(),
            LimitKey::Ip => None,
            LimitKey::Sub => self.claims.and_then(|c| c.get("sub")).map(claim_text),
            LimitKey::ApiKey => self.api_key.map(str::to_owned),
            LimitKey::Header(name) => self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned),
            LimitKey::Claim(name) => self.claims.and_then(|c| c.get(name)).map(claim_text),
        };
        match found {
            Some(value) => format!("k:{value}"),
            None => format!("ip:{}", self.ip),
        }
    }
}

fn claim_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_keys() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-client", axum::http::HeaderValue::from_static("c1"));
        let claims = serde_json::json!({"sub": "u1", "n": 5});
        let subject = Subject { ip: [10, 0, 0, 1].into(), headers: &headers, claims: Some(&claims), api_key: None };
        assert_eq!(subject.key(&LimitKey::Sub), "k:u1");
        assert_eq!(subject.key(&LimitKey::Route), "route");
        assert_eq!(subject.key(&LimitKey::Claim("n".into())), "k:5");
        assert_eq!(subject.key(&LimitKey::ApiKey), "ip:10.0.0.1");
        assert_eq!(subject.key(&LimitKey::Ip), "ip:10.0.0.1");
        assert_eq!(subject.key(&"header:X-Client".parse().unwrap()), "k:c1");
        assert_eq!(subject.key(&"header:x-other".parse().unwrap()), "ip:10.0.0.1");
    }
}
