//! `[store]`: where the records and the blobs live. Both settings take `${VAR}` references (an
//! address with a password belongs in the environment); what is printed is what was written.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use crate::EnvString;

/// `[store] url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite`: `nimbus.db` in the data dir.
    Sqlite,
    /// `sqlite://<file>`: an absolute path, or one relative to the data dir.
    SqliteFile(PathBuf),
    /// `postgres://…` or `postgresql://…`.
    Postgres(EnvString),
}

impl StoreUrl {
    pub fn parse(url: EnvString) -> Result<Self, String> {
        let v = url.value();
        if v == "sqlite" {
            return Ok(Self::Sqlite);
        }
        if let Some(path) = v.strip_prefix("sqlite://") {
            return match path.is_empty() {
                true => Err(format!("\"{}\" names no file: write \"sqlite:///path/file.db\"", url.written())),
                false => Ok(Self::SqliteFile(path.into())),
            };
        }
        if v.starts_with("postgres://") || v.starts_with("postgresql://") {
            return Ok(Self::Postgres(url));
        }
        Err(format!(
            "\"{}\"{} is not a store URL: use \"sqlite\", \"sqlite:///path/file.db\" or \"postgres://…\"",
            url.written(),
            resolved(&url)
        ))
    }

    /// The URL in the form `nimbus_store::open` takes (a PostgreSQL URL may hold a password: it is
    /// for the store, not for messages).
    pub fn url(&self) -> String {
        match self {
            Self::Sqlite => "sqlite".into(),
            Self::SqliteFile(path) => format!("sqlite://{}", path.display()),
            Self::Postgres(url) => url.value().to_owned(),
        }
    }
}

impl<'de> Deserialize<'de> for StoreUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::from_str(d, |s| StoreUrl::parse(EnvString::resolve(s)?))
    }
}

/// `[store] blobs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobsUrl {
    /// `file`: `blobs/` in the data dir.
    File,
    /// `file://<dir>`: a folder of this machine.
    Dir(PathBuf),
    /// `s3://bucket[/prefix]`; credentials and endpoint come from the environment.
    S3(EnvString),
    /// `az://container[/prefix]`; the account comes from the environment.
    Azure(EnvString),
}

impl BlobsUrl {
    pub fn parse(url: EnvString) -> Result<Self, String> {
        let v = url.value();
        if v == "file" {
            return Ok(Self::File);
        }
        let hint = "use \"file\", \"file:///path\", \"s3://bucket[/prefix]\" or \"az://container[/prefix]\"";
        let (scheme, rest) = v.split_once("://").unwrap_or((v, ""));
        let named = !rest.is_empty() && !rest.starts_with('/');
        match scheme {
            "file" if !rest.is_empty() => Ok(Self::Dir(rest.into())),
            "s3" if named => Ok(Self::S3(url)),
            "az" if named => Ok(Self::Azure(url)),
            "file" | "s3" | "az" => {
                Err(format!("\"{}\"{} names no folder, bucket or container: {hint}", url.written(), resolved(&url)))
            }
            _ => Err(format!("\"{}\"{} is not a blob store URL: {hint}", url.written(), resolved(&url))),
        }
    }
}

impl<'de> Deserialize<'de> for BlobsUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::from_str(d, |s| BlobsUrl::parse(EnvString::resolve(s)?))
    }
}

/// Says that the value judged is not the one written, without showing it (it may be a secret).
fn resolved(url: &EnvString) -> &'static str {
    match url.written() == url.value() {
        true => "",
        false => " (once its `${…}` references are resolved)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(written: &str) -> EnvString {
        EnvString::resolve_with(written, |name| (name == "PG").then(|| "postgres://u:s3cret@db/app".to_owned()))
            .unwrap()
    }

    #[test]
    fn store_urls() {
        assert_eq!(StoreUrl::parse(env("sqlite")), Ok(StoreUrl::Sqlite));
        assert_eq!(StoreUrl::parse(env("sqlite:///x/y.db")), Ok(StoreUrl::SqliteFile("/x/y.db".into())));
        assert_eq!(StoreUrl::parse(env("sqlite://y.db")).unwrap().url(), "sqlite://y.db");
        let pg = StoreUrl::parse(env("${PG}")).unwrap();
        assert_eq!(pg.url(), "postgres://u:s3cret@db/app");
        assert!(!format!("{pg:?}").contains("s3cret"), "{pg:?}");
        assert!(StoreUrl::parse(env("sqlite://")).unwrap_err().contains("names no file"));
        let e = StoreUrl::parse(env("mysql://localhost/x")).unwrap_err();
        assert!(e.starts_with("\"mysql://localhost/x\" is not a store URL"), "{e}");
    }

    #[test]
    fn blob_urls() {
        assert_eq!(BlobsUrl::parse(env("file")), Ok(BlobsUrl::File));
        assert_eq!(BlobsUrl::parse(env("file:///srv/blobs")), Ok(BlobsUrl::Dir("/srv/blobs".into())));
        assert!(matches!(BlobsUrl::parse(env("s3://bucket/prefix")), Ok(BlobsUrl::S3(_))));
        assert!(matches!(BlobsUrl::parse(env("az://container")), Ok(BlobsUrl::Azure(_))));
        for bad in ["s3://", "az:///x", "file://"] {
            assert!(BlobsUrl::parse(env(bad)).unwrap_err().contains("names no"), "{bad}");
        }
        let e = BlobsUrl::parse(env("${PG}")).unwrap_err();
        assert_eq!(
            e,
            "\"${PG}\" (once its `${…}` references are resolved) is not a blob store URL: use \"file\", \
             \"file:///path\", \"s3://bucket[/prefix]\" or \"az://container[/prefix]\""
        );
    }
}
