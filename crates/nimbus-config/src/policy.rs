//! Values of gateway policies that are more than a string: what a limit counts per, where a route
//! sends its requests, and which signature algorithms an issuer's tokens may use.

use std::fmt;
use std::str::FromStr;

use http::HeaderName;
use serde::{Deserialize, Deserializer};

/// What a rate limit or quota is counted per: `ip`, `sub`, `api_key`, `header:<name>` or
/// `claim:<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client's address.
    Ip,
    /// The token's subject.
    Sub,
    /// The API key's id.
    ApiKey,
    /// A request header's value.
    Header(HeaderName),
    /// A claim of the token.
    Claim(String),
    /// Everyone on the route together.
    Route,
}

impl FromStr for LimitKey {
    type Err = String;

    fn from_str(key: &str) -> Result<Self, String> {
        let refused =
            || format!("\"{key}\" is not a limit key: use ip, sub, api_key, header:<name>, claim:<name> or route");
        Ok(match key {
            "route" => Self::Route,
            "ip" => Self::Ip,
            "sub" => Self::Sub,
            "api_key" => Self::ApiKey,
            other => match (other.strip_prefix("header:"), other.strip_prefix("claim:")) {
                (Some(h), _) if !h.is_empty() => {
                    Self::Header(crate::web::parse_header_name(h).map_err(|e| format!("\"{key}\": {e}"))?)
                }
                (_, Some(c)) if !c.is_empty() => Self::Claim(c.to_owned()),
                _ => return Err(refused()),
            },
        })
    }
}

impl fmt::Display for LimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip => f.write_str("ip"),
            Self::Sub => f.write_str("sub"),
            Self::ApiKey => f.write_str("api_key"),
            Self::Header(name) => write!(f, "header:{name}"),
            Self::Claim(name) => write!(f, "claim:{name}"),
            Self::Route => f.write_str("route"),
        }
    }
}

impl<'de> Deserialize<'de> for LimitKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::from_str(d, str::parse)
    }
}

/// Where a route's requests go after its policies.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Backend {
    /// The function whose route matches (`function`, the default).
    #[default]
    Function,
    /// The published site (`site`).
    Site,
    /// The AI gateway's OpenAI-compatible API (`ai`; needs an `[ai]` section).
    Ai,
    /// A reverse proxy to this `http(s)://` base URL (with a host; no query or fragment).
    Upstream(http::Uri),
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Function => f.write_str("Function"),
            Self::Site => f.write_str("Site"),
            Self::Ai => f.write_str("Ai"),
            Self::Upstream(uri) => write!(f, "Upstream({:?})", uri.to_string()),
        }
    }
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "function" => return Ok(Self::Function),
            "site" => return Ok(Self::Site),
            "ai" => return Ok(Self::Ai),
            _ => {}
        }
        if !(s.starts_with("http://") || s.starts_with("https://")) {
            return Err(format!(
                "\"{s}\" is not a backend: use \"function\", \"site\", \"ai\" or an http(s):// upstream URL"
            ));
        }
        crate::web::parse_base_url(s).map(Self::Upstream)
    }
}

impl<'de> Deserialize<'de> for Backend {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::from_str(d, str::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_keys() {
        assert_eq!("ip".parse(), Ok(LimitKey::Ip));
        assert_eq!("api_key".parse(), Ok(LimitKey::ApiKey));
        assert_eq!("claim:tid".parse(), Ok(LimitKey::Claim("tid".into())));
        assert_eq!("header:X-Client".parse(), Ok(LimitKey::Header(HeaderName::from_static("x-client"))));
        for bad in ["everyone", "claim:", "header:", "IP", "Route"] {
            assert!(bad.parse::<LimitKey>().unwrap_err().contains("is not a limit key"), "{bad}");
        }
        assert!("header:bad header".parse::<LimitKey>().unwrap_err().contains("is not a header name"));
        for key in ["ip", "sub", "api_key", "header:x-client", "claim:tid", "route"] {
            assert_eq!(key.parse::<LimitKey>().unwrap().to_string(), key);
        }
    }

    #[test]
    fn backends() {
        assert_eq!("function".parse(), Ok(Backend::Function));
        assert_eq!("site".parse(), Ok(Backend::Site));
        let Ok(Backend::Upstream(url)) = "http://127.0.0.1:9000/base/".parse() else { panic!() };
        assert_eq!(url.to_string(), "http://127.0.0.1:9000/base/");
        assert_eq!("ai".parse(), Ok(Backend::Ai));
        assert!("http://x/?q=1".parse::<Backend>().unwrap_err().contains("no query or fragment"));
        assert!("http://x/#f".parse::<Backend>().unwrap_err().contains("no query or fragment"));
        for bad in ["ftp://example.com", "functions", "/local", "unix:/tmp/s"] {
            assert!(bad.parse::<Backend>().unwrap_err().contains("is not a backend"), "{bad}");
        }
        assert!("http://".parse::<Backend>().unwrap_err().contains("is not an http(s):// URL"));
    }
}

/// A signature algorithm an issuer may be pinned to: asymmetric only, so that a public key can
/// never be used as an HMAC secret (`none` and `HS*` are refused with the reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl TokenAlgorithm {
    pub const ALL: [Self; 9] = [
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
        Self::ES256,
        Self::ES384,
        Self::EdDSA,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::EdDSA => "EdDSA",
        }
    }
}

impl FromStr for TokenAlgorithm {
    type Err = String;

    fn from_str(alg: &str) -> Result<Self, String> {
        if let Some(found) = Self::ALL.into_iter().find(|a| a.as_str() == alg) {
            return Ok(found);
        }
        Err(if alg.eq_ignore_ascii_case("none") {
            "`none` is never an allowed algorithm".to_owned()
        } else if alg.to_ascii_uppercase().starts_with("HS") {
            format!("\"{alg}\": shared-secret algorithms are never accepted from an issuer")
        } else {
            let all: Vec<&str> = Self::ALL.iter().map(|a| a.as_str()).collect();
            format!("\"{alg}\" is not one of {}", all.join(", "))
        })
    }
}

impl<'de> Deserialize<'de> for TokenAlgorithm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::from_str(d, str::parse)
    }
}
