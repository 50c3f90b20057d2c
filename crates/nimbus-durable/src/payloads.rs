//! Large payloads: inputs, results, outputs and event data above [`LIMIT`] live as objects in the
//! blob store's `$durable` container, and in records and history as a reference,
//! `{"$nimbus.payload": "<key>", "bytes": <size>}` (PROTOCOL.md §7.4). The SDKs offload what they
//! produce and fetch what they are given, over `/_nimbus/durable/payloads`, so a large activity
//! result never passes through the host's memory; the host offloads what arrives through its own
//! API (a start's input, an event's data) and resolves references where it shows values.

use std::collections::BTreeMap;

use futures_util::{Stream, StreamExt};
use nimbus_blob::{BlobError, Blobs, DURABLE_CONTAINER};
use serde_json::{Value, json};

/// Values whose JSON is larger than this are kept as blobs.
pub const LIMIT: usize = 64 * 1024;
const REF: &str = "$nimbus.payload";

/// The blob key a value refers to, when it is a reference.
pub fn reference(value: &Value) -> Option<&str> {
    let object = value.as_object()?;
    if object.len() != 2 || !object.contains_key("bytes") {
        return None;
    }
    object.get(REF)?.as_str()
}

/// The fields of an event or record that may hold a payload.
const FIELDS: [&str; 5] = ["input", "result", "data", "output", "error"];

#[derive(Clone, Default)]
pub struct Payloads {
    /// `None` offline without a blob store: values then stay inline.
    blobs: Option<Blobs>,
}

impl Payloads {
    pub fn new(blobs: Option<Blobs>) -> Self {
        Self { blobs }
    }

    /// `value`, or a reference to it kept as a blob when its JSON is larger than [`LIMIT`].
    pub async fn offload(&self, value: Value) -> Result<Value, BlobError> {
        let Some(blobs) = &self.blobs else { return Ok(value) };
        let text = serde_json::to_vec(&value).map_err(|e| BlobError::Invalid(e.to_string()))?;
        if text.len() <= LIMIT {
            return Ok(value);
        }
        let chunk = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(bytes::Bytes::from(text))]);
        self.put(blobs, chunk, u64::MAX).await
    }

    /// Streams a payload's JSON into a new blob: its reference.
    pub async fn upload<S, E>(&self, body: S) -> Result<Value, BlobError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let blobs = self.blobs.as_ref().ok_or_else(|| BlobError::Backend("no blob store here".into()))?;
        self.put(blobs, body, blobs.max_object_size()).await
    }

    async fn put<S, E>(&self, blobs: &Blobs, body: S, limit: u64) -> Result<Value, BlobError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let key = nimbus_api::hex(&rand::random::<[u8; 16]>());
        let info =
            blobs.put_within(DURABLE_CONTAINER, &key, Some("application/json"), BTreeMap::new(), body, limit).await?;
        Ok(json!({REF: key, "bytes": info.size}))
    }

    /// A payload's bytes, streamed.
    pub async fn open(&self, key: &str) -> Result<nimbus_blob::Download, BlobError> {
        let blobs = self.blobs.as_ref().ok_or_else(|| BlobError::NotFound(key.to_owned()))?;
        blobs.get(DURABLE_CONTAINER, key, None).await
    }

    /// The value a reference stands for (any other value as it is).
    pub async fn resolve(&self, value: Value) -> Result<Value, BlobError> {
        let Some(key) = reference(&value) else { return Ok(value) };
        let mut download = self.open(key).await?;
        let mut text = Vec::with_capacity(download.info.size as usize);
        while let Some(chunk) = download.body.next().await {
            text.extend_from_slice(&chunk?);
        }
        serde_json::from_slice(&text).map_err(|e| BlobError::Backend(format!("payload {key} is not JSON: {e}")))
    }

    /// Deletes, in the background, the payloads the fields of `values` refer to (their history
    /// is gone), except those `keep` holds.
    pub fn forget<'a>(&self, values: impl IntoIterator<Item = &'a Value>, keep: &Value) {
        let Some(blobs) = self.blobs.clone() else { return };
        let kept = reference(keep);
        let keys: Vec<String> = values
            .into_iter()
            .flat_map(|v| FIELDS.iter().filter_map(move |f| v.get(*f)))
            .filter_map(reference)
            .filter(|k| Some(*k) != kept)
            .map(str::to_owned)
            .collect();
        if keys.is_empty() {
            return;
        }
        tokio::spawn(async move {
            for key in keys {
                if let Err(e) = blobs.delete(DURABLE_CONTAINER, &key).await
                    && !matches!(e, BlobError::NotFound(_))
                {
                    tracing::warn!(key, error = %e, "cannot delete a durable payload");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_recognised_exactly() {
        assert_eq!(reference(&json!({"$nimbus.payload": "k", "bytes": 70000})), Some("k"));
        assert_eq!(reference(&json!({"$nimbus.payload": "k"})), None);
        assert_eq!(reference(&json!({"$nimbus.payload": "k", "bytes": 1, "x": 2})), None);
        assert_eq!(reference(&json!("k")), None);
    }
}
