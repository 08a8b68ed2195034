//! A backend in memory, with a clock of its own: for simulations, where a test decides what time
//! the backend reports (LastModified) and so can run hours of leases and grace periods in no time.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::{
    Attributes, Backend, BackendError, ByteStream, GetResult, ListPage, ListRequest, ObjectMeta, PutOptions,
    resolve_range, validate_key,
};

/// The size of the pieces a GET body comes in.
const PIECE: usize = 64 << 10;

/// What tells the backend's time.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// One stored object.
#[derive(Debug, Clone)]
struct Stored {
    body: Bytes,
    attributes: Attributes,
    meta: ObjectMeta,
}

/// Objects in a map, in key order; LastModified from the clock.
pub struct MemoryBackend {
    objects: Mutex<BTreeMap<String, Stored>>,
    clock: Clock,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend").finish_non_exhaustive()
    }
}

impl MemoryBackend {
    /// An empty backend whose time is `clock`'s.
    pub fn new(clock: Clock) -> Self {
        MemoryBackend { objects: Mutex::new(BTreeMap::new()), clock }
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Stored>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn store(&self, key: &str, body: Bytes, attributes: Attributes) -> Result<ObjectMeta, BackendError> {
        validate_key(key)?;
        let meta = ObjectMeta {
            key: key.to_owned(),
            size: body.len() as u64,
            etag: crate::cache::md5_hex(&body),
            last_modified: (self.clock)(),
        };
        self.objects().insert(key.to_owned(), Stored { body, attributes, meta: meta.clone() });
        Ok(meta)
    }

    fn find(&self, key: &str) -> Result<Stored, BackendError> {
        validate_key(key)?;
        self.objects().get(key).cloned().ok_or_else(|| BackendError::NotFound { key: key.to_owned() })
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult, BackendError> {
        let stored = self.find(key)?;
        let range = resolve_range(key, range, stored.meta.size)?;
        // In pieces, as a network or a file gives them.
        let pieces: Vec<Result<Bytes, BackendError>> = (range.start..range.end)
            .step_by(PIECE)
            .map(|at| Ok(stored.body.slice(at as usize..(at + PIECE as u64).min(range.end) as usize)))
            .collect();
        Ok(GetResult {
            meta: stored.meta,
            range,
            attributes: stored.attributes,
            body: futures::stream::iter(pieces).boxed(),
        })
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<ObjectMeta, BackendError> {
        self.store(key, body, Attributes::default())
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, BackendError> {
        Ok(self.find(key)?.meta)
    }

    async fn stat(&self, key: &str) -> Result<(ObjectMeta, Attributes), BackendError> {
        let stored = self.find(key)?;
        Ok((stored.meta, stored.attributes))
    }

    async fn put_stream(
        &self,
        key: &str,
        mut body: ByteStream,
        options: PutOptions,
    ) -> Result<ObjectMeta, BackendError> {
        validate_key(key)?;
        let mut all = BytesMut::new();
        while let Some(piece) = body.next().await {
            all.extend_from_slice(&piece?);
        }
        options.check_md5(key, &crate::cache::md5(&all))?;
        self.store(key, all.freeze(), options.final_attributes())
    }

    async fn list(&self, request: &ListRequest) -> Result<ListPage, BackendError> {
        let max = if request.max_keys == 0 { 1000 } else { request.max_keys.min(1000) };
        let after = request.continuation_token.clone().or_else(|| request.start_after.clone());
        let continuing = request.continuation_token.is_some();
        let objects = self.objects();
        let mut page = ListPage::default();
        let start =
            after.as_deref().filter(|a| *a > request.prefix.as_str()).unwrap_or(request.prefix.as_str());
        for (key, stored) in
            objects.range::<str, _>((std::ops::Bound::Included(start), std::ops::Bound::Unbounded))
        {
            if after.as_deref() == Some(key.as_str()) {
                continue;
            }
            if !key.starts_with(&request.prefix) {
                break;
            }
            let delimiter = request.delimiter.as_deref();
            // Continuing after a common prefix: the keys under it were rolled up already.
            if let (Some(after), Some(d), true) = (after.as_deref(), delimiter, continuing)
                && after.ends_with(d)
                && key.starts_with(after)
            {
                continue;
            }
            let rest = &key[request.prefix.len()..];
            let rolled = delimiter
                .and_then(|d| rest.find(d).map(|at| format!("{}{}", request.prefix, &rest[..at + d.len()])));
            if rolled.is_some() && page.common_prefixes.last() == rolled.as_ref() {
                continue;
            }
            if page.objects.len() + page.common_prefixes.len() >= max {
                let last_object = page.objects.last().map(|o| o.key.clone());
                let last_prefix = page.common_prefixes.last().cloned();
                page.next_continuation_token = last_object.max(last_prefix);
                break;
            }
            match rolled {
                Some(prefix) => page.common_prefixes.push(prefix),
                None => page.objects.push(stored.meta.clone()),
            }
        }
        Ok(page)
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        validate_key(key)?;
        self.objects().remove(key);
        Ok(())
    }
}
