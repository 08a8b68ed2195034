//! Listing a bucket (DESIGN.md, "Listing"): everything visible in it, in byte order of keys.
//!
//! Two streams that are already in key order are merged: plain objects, listed straight from
//! `raw/` (the backend's own size, ETag and time), and the virtual keys, from the listing index
//! (`index/<hex of key>.<size>.<etag>`, the entry's own time), plus keys the caller synthesizes
//! (`nix-cache-info`). A page costs one backend LIST per stream, never a read per key: each LIST
//! asks for one more key than the page holds, so it also tells whether there is more.
//!
//! With a delimiter, the raw stream rolls keys up into common prefixes itself (the backend does).
//! The index stream cannot (its keys are hex), so it finds each common prefix by jumping past it:
//! the next LIST starts after `<hex of prefix>g`, above every entry under the prefix (`g` sorts
//! above every hex digit and `.`), so its cost grows with the prefixes shown, not the keys under
//! them.

use std::collections::VecDeque;

use base64::Engine;

use super::CommitError;
use super::keys::{CacheKeys, IndexEntry};
use super::tree::TreeStream;
use crate::backend::{BackendError, DynBackend, ListRequest, ObjectMeta};

/// The most keys plus common prefixes a page holds (S3's limit).
pub const MAX_KEYS: usize = 1000;

/// Where a listing goes on from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum After {
    /// Strictly after this key (S3's StartAfter and Marker). Keys after it still roll up into
    /// their common prefix, even where that prefix sorts before it, as S3 does.
    Key(String),
    /// After this common prefix and everything under it (a page that ended on the prefix).
    Prefix(String),
}

impl After {
    /// The opaque continuation token of this position.
    pub fn to_token(&self) -> String {
        let (tag, value) = match self {
            After::Key(key) => ('k', key),
            After::Prefix(prefix) => ('p', prefix),
        };
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{tag}{value}"))
    }

    /// The position a token names, if it is one [`After::to_token`] made.
    pub fn from_token(token: &str) -> Option<After> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let mut chars = text.chars();
        match chars.next()? {
            'k' => Some(After::Key(chars.as_str().to_owned())),
            'p' => Some(After::Prefix(chars.as_str().to_owned())),
            _ => None,
        }
    }
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only keys that start with this.
    pub prefix: String,
    /// Roll keys up to the first delimiter after the prefix into common prefixes.
    pub delimiter: Option<String>,
    /// Where to start.
    pub after: Option<After>,
    /// At most this many keys plus common prefixes (capped at [`MAX_KEYS`]).
    pub max_keys: usize,
}

/// One page of a bucket's listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The keys on this page, with their visible size, ETag and time.
    pub objects: Vec<ObjectMeta>,
    /// The common prefixes on this page.
    pub common_prefixes: Vec<String>,
    /// Where the next page starts, when there is more.
    pub next: Option<After>,
}

/// A key or a common prefix, as the merge sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    Object(ObjectMeta),
    Prefix(String),
}

impl Item {
    fn name(&self) -> &str {
        match self {
            Item::Object(meta) => &meta.key,
            Item::Prefix(prefix) => prefix,
        }
    }
}

/// The common prefix `key` rolls up into under `query`, if any.
pub(crate) fn rollup(query: &ListQuery, key: &str) -> Option<String> {
    let delimiter = query.delimiter.as_deref().filter(|d| !d.is_empty())?;
    let rest = key.get(query.prefix.len()..)?;
    let at = rest.find(delimiter)?;
    Some(key[..query.prefix.len() + at + delimiter.len()].to_owned())
}

/// Whether `item` lies after `after`.
pub(crate) fn is_after(after: Option<&After>, item: &Item) -> bool {
    match (after, item) {
        (None, _) => true,
        (Some(After::Key(k)), item) => {
            item.name() > k.as_str() || matches!(item, Item::Prefix(p) if k.starts_with(p.as_str()) && k != p)
        }
        (Some(After::Prefix(p)), item) => item.name() > p.as_str() && !item.name().starts_with(p.as_str()),
    }
}

/// A key well above every key under `prefix` in byte order (for a start-after).
fn past_prefix(prefix: &str) -> String {
    format!("{prefix}{}", char::MAX)
}

/// The plain objects, from `raw/`.
struct RawStream<'a> {
    backend: &'a DynBackend,
    keys: &'a CacheKeys,
    request: Option<ListRequest>,
    buffer: VecDeque<Item>,
}

impl<'a> RawStream<'a> {
    fn new(backend: &'a DynBackend, keys: &'a CacheKeys, query: &ListQuery, want: usize) -> Self {
        let start_after = match &query.after {
            None => None,
            Some(After::Key(k)) => Some(keys.raw(k)),
            Some(After::Prefix(p)) => Some(past_prefix(&keys.raw(p))),
        };
        let request = ListRequest {
            prefix: keys.raw(&query.prefix),
            delimiter: query.delimiter.clone().filter(|d| !d.is_empty()),
            start_after: start_after.filter(|s| s.as_str() >= keys.raw("").as_str()),
            continuation_token: None,
            max_keys: want,
        };
        RawStream { backend, keys, request: Some(request), buffer: VecDeque::new() }
    }

    async fn peek(&mut self) -> Result<Option<&Item>, BackendError> {
        while self.buffer.is_empty() {
            let Some(request) = self.request.take() else { return Ok(None) };
            let page = self.backend.list(&request).await?;
            let root = self.keys.raw("");
            let strip = |k: &str| k.strip_prefix(root.as_str()).map(str::to_owned);
            let mut items: Vec<Item> = page
                .objects
                .into_iter()
                .filter_map(|m| Some(Item::Object(ObjectMeta { key: strip(&m.key)?, ..m })))
                .chain(page.common_prefixes.iter().filter_map(|p| Some(Item::Prefix(strip(p)?))))
                .collect();
            items.sort_by(|a, b| a.name().cmp(b.name()));
            self.buffer.extend(items);
            if let Some(token) = page.next_continuation_token {
                self.request = Some(ListRequest { continuation_token: Some(token), ..request });
            }
        }
        Ok(self.buffer.front())
    }
}

/// The virtual keys, from the listing index.
struct IndexStream<'a> {
    backend: &'a DynBackend,
    keys: &'a CacheKeys,
    query: &'a ListQuery,
    want: usize,
    /// The next LIST to send, if the index may hold more.
    request: Option<ListRequest>,
    buffer: VecDeque<Item>,
    /// Entries that lost to a newer entry of the same key: removed after the listing.
    stale: Vec<String>,
}

impl<'a> IndexStream<'a> {
    fn new(backend: &'a DynBackend, keys: &'a CacheKeys, query: &'a ListQuery, want: usize) -> Self {
        let start_after = match &query.after {
            None => None,
            // `/` sorts just above `.`, so this skips the key's own entries, not longer keys.
            Some(After::Key(k)) => Some(format!("{}{}/", keys.index_prefix(), hex::encode(k))),
            Some(After::Prefix(p)) => Some(format!("{}{}g", keys.index_prefix(), hex::encode(p))),
        };
        let mut stream =
            IndexStream { backend, keys, query, want, request: None, buffer: VecDeque::new(), stale: vec![] };
        stream.request = Some(stream.request_after(start_after));
        stream
    }

    fn request_after(&self, start_after: Option<String>) -> ListRequest {
        let prefix = format!("{}{}", self.keys.index_prefix(), hex::encode(&self.query.prefix));
        ListRequest {
            start_after: start_after.filter(|s| *s >= prefix),
            prefix,
            delimiter: None,
            continuation_token: None,
            max_keys: self.want,
        }
    }

    async fn peek(&mut self) -> Result<Option<&Item>, BackendError> {
        while self.buffer.is_empty() {
            let Some(request) = self.request.take() else { return Ok(None) };
            let page = self.backend.list(&request).await?;
            let index_prefix = self.keys.index_prefix();
            let mut entries = vec![];
            for object in page.objects {
                let Some(entry) = object.key.strip_prefix(index_prefix.as_str()).and_then(IndexEntry::parse)
                else {
                    tracing::warn!(key = %object.key, "skipping a malformed listing-index entry");
                    continue;
                };
                entries.push((entry, object.last_modified));
            }
            self.request = page
                .next_continuation_token
                .map(|token| ListRequest { continuation_token: Some(token), ..request.clone() });
            for (entry, last_modified) in entries {
                let meta = ObjectMeta { key: entry.key, size: entry.size, etag: entry.etag, last_modified };
                if let Some(prefix) = rollup(self.query, &meta.key) {
                    // Jump past everything under the prefix; the rest of this page is below it.
                    let jump = format!("{}{}g", index_prefix, hex::encode(&prefix));
                    self.buffer.push_back(Item::Prefix(prefix));
                    self.request = Some(self.request_after(Some(jump)));
                    break;
                }
                self.push_object(meta);
            }
        }
        Ok(self.buffer.front())
    }

    /// Adds a key's entry; of two entries for one key, the newer wins and the older is stale.
    fn push_object(&mut self, meta: ObjectMeta) {
        if let Some(Item::Object(last)) = self.buffer.back_mut()
            && last.key == meta.key
        {
            let older =
                if meta.last_modified >= last.last_modified { std::mem::replace(last, meta) } else { meta };
            self.stale.push(self.keys.index_entry(&older.key, older.size, &older.etag));
            return;
        }
        self.buffer.push_back(Item::Object(meta));
    }
}

/// Lists one page of the bucket of `keys`: plain objects, index entries, `synthesized` keys
/// (sorted) and, when the bucket browses, the keys under `tree/` ([`TreeStream`]), merged. A
/// prefix that names one store path's tree is listed from that tree alone.
pub(crate) async fn list(
    backend: &DynBackend,
    keys: &CacheKeys,
    query: &ListQuery,
    synthesized: &[ObjectMeta],
    mut tree: Option<TreeStream<'_>>,
) -> Result<Listing, CommitError> {
    let max_keys = query.max_keys.min(MAX_KEYS);
    if max_keys == 0 {
        return Ok(Listing::default());
    }
    let only_tree = tree.as_ref().is_some_and(TreeStream::is_one_store_path);
    let mut raw = (!only_tree).then(|| RawStream::new(backend, keys, query, max_keys + 1));
    let mut index = (!only_tree).then(|| IndexStream::new(backend, keys, query, max_keys + 1));
    let synthesized = if only_tree { &[][..] } else { synthesized };
    let mut extra: VecDeque<Item> = synthesized
        .iter()
        .filter(|m| m.key.starts_with(&query.prefix))
        .map(|m| match rollup(query, &m.key) {
            Some(prefix) => Item::Prefix(prefix),
            None => Item::Object(m.clone()),
        })
        .filter(|item| is_after(query.after.as_ref(), item))
        .collect();

    let mut listing = Listing::default();
    let mut last: Option<Item> = None;
    loop {
        let candidates = [
            match &mut raw {
                Some(raw) => raw.peek().await?.cloned(),
                None => None,
            },
            match &mut index {
                Some(index) => index.peek().await?.cloned(),
                None => None,
            },
            match &mut tree {
                Some(tree) => tree.peek().await?.cloned(),
                None => None,
            },
            extra.front().cloned(),
        ];
        let Some(next) = candidates.iter().flatten().min_by(|a, b| a.name().cmp(b.name())).cloned() else {
            break;
        };
        // Take it from every stream that holds it (a common prefix can come from several).
        let buffers = [
            raw.as_mut().map(|s| &mut s.buffer),
            index.as_mut().map(|s| &mut s.buffer),
            tree.as_mut().map(|s| &mut s.buffer),
            Some(&mut extra),
        ];
        for buffer in buffers.into_iter().flatten() {
            if buffer.front().map(Item::name) == Some(next.name()) {
                buffer.pop_front();
            }
        }
        if last.as_ref().map(Item::name) == Some(next.name()) {
            continue;
        }
        if listing.objects.len() + listing.common_prefixes.len() == max_keys {
            listing.next = last.map(|item| match item {
                Item::Object(meta) => After::Key(meta.key),
                Item::Prefix(prefix) => After::Prefix(prefix),
            });
            break;
        }
        match &next {
            Item::Object(meta) => listing.objects.push(meta.clone()),
            Item::Prefix(prefix) => listing.common_prefixes.push(prefix.clone()),
        }
        last = Some(next);
    }
    for stale in index.iter().flat_map(|index| &index.stale) {
        if let Err(e) = backend.delete(stale).await {
            tracing::warn!(key = %stale, "could not remove a stale listing-index entry: {e}");
        }
    }
    Ok(listing)
}

/// The newest listing-index entry of the visible key `key`, as [`ObjectMeta`] with the entry's
/// time; older entries of the key are removed. One backend LIST.
pub async fn visible(
    backend: &DynBackend,
    keys: &CacheKeys,
    key: &str,
) -> Result<Option<ObjectMeta>, BackendError> {
    let prefix = keys.index_entry_prefix(key);
    let page = backend.list(&ListRequest { prefix, ..Default::default() }).await?;
    let index_prefix = keys.index_prefix();
    let mut found: Vec<ObjectMeta> = page
        .objects
        .into_iter()
        .filter_map(|o| {
            let entry = IndexEntry::parse(o.key.strip_prefix(index_prefix.as_str())?)?;
            (entry.key == key).then_some(ObjectMeta {
                key: entry.key,
                size: entry.size,
                etag: entry.etag,
                last_modified: o.last_modified,
            })
        })
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.last_modified));
    for older in found.iter().skip(1) {
        backend.delete(&keys.index_entry(&older.key, older.size, &older.etag)).await?;
    }
    Ok(found.into_iter().next())
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    #[test]
    fn tokens_round_trip() {
        for after in [After::Key("a/b c".into()), After::Prefix("nar/".into()), After::Key(String::new())] {
            assert_eq!(After::from_token(&after.to_token()), Some(after));
        }
        assert_eq!(After::from_token("!!"), None);
        assert_eq!(After::from_token(""), None);
    }

    #[test]
    fn rollups_follow_s3() {
        let query = ListQuery { prefix: "log/".into(), delimiter: Some("/".into()), ..Default::default() };
        assert_eq!(rollup(&query, "log/a/b"), Some("log/a/".into()));
        assert_eq!(rollup(&query, "log/a"), None);
        let none = ListQuery { prefix: "log/".into(), ..Default::default() };
        assert_eq!(rollup(&none, "log/a/b"), None);
    }

    #[test]
    fn positions_compare() {
        let key = |k: &str| {
            Item::Object(ObjectMeta {
                key: k.into(),
                size: 0,
                etag: String::new(),
                last_modified: SystemTime::UNIX_EPOCH,
            })
        };
        assert!(is_after(Some(&After::Key("a".into())), &key("b")));
        assert!(!is_after(Some(&After::Key("b".into())), &key("b")));
        // A prefix holding keys after the start key is still shown.
        assert!(is_after(Some(&After::Key("a/1".into())), &Item::Prefix("a/".into())));
        assert!(!is_after(Some(&After::Prefix("a/".into())), &Item::Prefix("a/".into())));
        assert!(!is_after(Some(&After::Prefix("a/".into())), &key("a/x")));
        assert!(!is_after(Some(&After::Prefix("b/".into())), &key("a")));
        assert!(is_after(Some(&After::Prefix("b/".into())), &key("c")));
    }
}
