//! The hosted pages as plain server-rendered HTML forms: they work without JavaScript, carry a
//! CSRF token in every form, and take the app's name and an optional CSS file from the manifest.
//! Every value that reaches the HTML is escaped.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;background:#f5f6f8;color:#1d2330;margin:0}\
main{max-width:24rem;margin:8vh auto;background:#fff;padding:2rem;border-radius:12px;box-shadow:0 2px 12px #0001}\
h1{font-size:1.1rem;margin:0 0 1.5rem;color:#556}h2{font-size:1.4rem;margin:0 0 1rem}\
label{display:block;margin:.8rem 0 .3rem;font-weight:600}input{width:100%;box-sizing:border-box;padding:.6rem;border:1px solid #ccd;border-radius:6px;font-size:1rem}\
button{margin-top:1.2rem;width:100%;padding:.7rem;border:0;border-radius:6px;background:#2f5bea;color:#fff;font-size:1rem;cursor:pointer}\
.error{background:#fde8e8;color:#8a1c1c;padding:.6rem;border-radius:6px}.note{background:#e8f0fd;padding:.6rem;border-radius:6px}\
nav{margin-top:1.2rem;font-size:.9rem;display:flex;justify-content:space-between}";

/// What every page shows: the app's name, and the theme.
pub(crate) struct Theme {
    pub app: String,
    pub has_css: bool,
}

pub(crate) struct Page {
    pub status: StatusCode,
    pub title: String,
    pub body: String,
}

impl Page {
    pub fn new(title: &str, body: String) -> Self {
        Self { status: StatusCode::OK, title: title.to_owned(), body }
    }

    pub fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn render(self, theme: &Theme) -> Response {
        let css = if theme.has_css { "<link rel=\"stylesheet\" href=\"/account/theme.css\">" } else { "" };
        let html = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
             <title>{title} · {app}</title><style>{STYLE}</style>{css}</head>\
             <body><main><h1>{app}</h1><h2>{title}</h2>{body}</main></body></html>",
            title = esc(&self.title),
            app = esc(&theme.app),
            body = self.body,
        );
        let mut response = (self.status, html).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"),
        );
        response
    }
}

/// A message box: an error or a note.
pub(crate) fn message(kind: &str, text: &str) -> String {
    format!("<p class=\"{kind}\" role=\"{}\">{}</p>", if kind == "error" { "alert" } else { "status" }, esc(text))
}

pub(crate) fn hidden(name: &str, value: &str) -> String {
    format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", esc(name), esc(value))
}

pub(crate) fn field(label: &str, name: &str, kind: &str, value: &str, extra: &str) -> String {
    format!(
        "<label for=\"{name}\">{label}</label><input id=\"{name}\" name=\"{name}\" type=\"{kind}\" value=\"{value}\" {extra}>",
        name = esc(name),
        label = esc(label),
        kind = esc(kind),
        value = esc(value),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
        assert!(hidden("a", "\"><b>").contains("value=\"&quot;&gt;&lt;b&gt;\""));
    }
}
