//! Browsing (the bucket setting `browse`): every store path's files as objects under
//! `tree/<hash>-<name>…` (keys as [`crate::render::tree`] makes them), read-only.
//!
//! A store path is browsable where the bucket shows it (its path info) and browsing is on. Its
//! keys come from its NAR's [`StoreTree`], built once from the NAR record and cached by the
//! renderer: no per-file index entries, and a listing page of a warm path costs no backend request.
//!
//! In a listing, the keys under `tree/` are a stream of their own ([`TreeStream`]), merged with
//! the others in [`super::listing`]:
//!
//! - a prefix that names one store path (`tree/` and at least the 32 characters of its hash)
//!   lists only that path's tree: no LIST at all;
//! - a shorter prefix walks the bucket's store paths in order, from the listing-index entries of
//!   their `store/<hash>-<name>.nar` aliases (one LIST a page). A store path whose keys all roll up
//!   into one common prefix (`tree/` under a delimiter `/`) is jumped over, as the index stream
//!   does; any other has its tree loaded (its path info and NAR record when cold) to tell whether
//!   it is a common prefix (its root is a directory) or an object (a file or a symlink), or, with
//!   no delimiter, to list its keys.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::listing::{After, Item, ListQuery, is_after, rollup};
use super::{Cache, CommitError, IndexEntry};
use crate::backend::{ListRequest, ObjectMeta};
use crate::nix::nixbase32;
use crate::nix::store_path::{HASH_CHARS, StorePath};
use crate::render::{Renderer, StoreTree, TreeEntry};

/// The prefix of every browsable key.
pub const TREE_PREFIX: &str = "tree/";

/// One store path's tree, as this bucket shows it.
#[derive(Debug, Clone)]
pub struct BrowsedTree {
    /// The tree.
    pub tree: Arc<StoreTree>,
    /// `tree/<hash>-<name>`: the key its entries' keys follow.
    pub key: String,
    /// Every key's time: the store path's upload.
    pub last_modified: SystemTime,
}

impl BrowsedTree {
    /// How `entry` is listed and read: its key, size, ETag and time.
    pub fn meta(&self, entry: &TreeEntry) -> ObjectMeta {
        ObjectMeta {
            key: format!("{}{}", self.key, entry.key),
            size: entry.node.size(),
            etag: entry.node.etag(),
            last_modified: self.last_modified,
        }
    }
}

impl Cache {
    /// The tree of `store_path` if this bucket browses and holds it: the bucket record and the
    /// path info at once (one round trip), then the tree (the NAR record, when cold).
    pub async fn browse(
        &self,
        renderer: &Renderer,
        store_path: &StorePath,
    ) -> Result<Option<BrowsedTree>, CommitError> {
        let hash = store_path.hash_part();
        let (bucket, path) = tokio::join!(self.bucket_record(), self.path_info(&hash));
        if !bucket?.is_some_and(|pair| pair.0.browse) {
            return Ok(None);
        }
        match path? {
            Some(path) => self.browsed(renderer, store_path, &path).await,
            None => Ok(None),
        }
    }

    /// The tree of `store_path`, if this bucket holds it (whether it browses is the caller's).
    async fn tree_of(
        &self,
        renderer: &Renderer,
        store_path: &StorePath,
    ) -> Result<Option<BrowsedTree>, CommitError> {
        match self.path_info(&store_path.hash_part()).await? {
            Some(path) => self.browsed(renderer, store_path, &path).await,
            None => Ok(None),
        }
    }

    async fn browsed(
        &self,
        renderer: &Renderer,
        store_path: &StorePath,
        path: &super::PathInfo,
    ) -> Result<Option<BrowsedTree>, CommitError> {
        if path.store_path != store_path.to_absolute() {
            return Ok(None);
        }
        let tree = renderer.tree(&path.nar_hash).await?;
        Ok(Some(BrowsedTree {
            tree,
            key: format!("{TREE_PREFIX}{}", store_path.base_name()),
            last_modified: UNIX_EPOCH + Duration::from_secs(path.uploaded),
        }))
    }
}

/// The store path a listing prefix names, by its hash: `tree/` and at least 32 characters.
fn named_store_hash(prefix: &str) -> Option<&str> {
    let rest = prefix.strip_prefix(TREE_PREFIX)?;
    let hash = rest.get(..HASH_CHARS)?;
    hash.bytes().all(|b| nixbase32::ALPHABET.contains(&b)).then_some(hash)
}

/// Where the store paths of a listing come from.
enum Source {
    /// The one store path the prefix names, until it is taken.
    One(Option<StorePath>),
    /// The bucket's store paths, from the index entries of their `store/` aliases.
    Index {
        /// The next LIST, if the index may hold more.
        request: Option<ListRequest>,
        /// Store paths listed and not yet taken.
        paths: VecDeque<StorePath>,
    },
}

/// The tree being listed, and the index of its next entry.
struct Current {
    tree: BrowsedTree,
    next: usize,
}

/// The keys under `tree/` of one listing, in order (see the [module documentation](self)).
pub(crate) struct TreeStream<'a> {
    cache: &'a Cache,
    renderer: &'a Renderer,
    query: &'a ListQuery,
    source: Source,
    current: Option<Current>,
    /// The next item, once peeked.
    pub(crate) buffer: VecDeque<Item>,
}

impl<'a> TreeStream<'a> {
    /// The stream of `query`'s keys under `tree/` (the caller checked that the bucket browses);
    /// `None` if the query reaches no key under `tree/`.
    pub(crate) async fn new(
        cache: &'a Cache,
        renderer: &'a Renderer,
        query: &'a ListQuery,
    ) -> Result<Option<TreeStream<'a>>, CommitError> {
        let prefix = query.prefix.as_str();
        if !prefix.starts_with(TREE_PREFIX) && !TREE_PREFIX.starts_with(prefix) {
            return Ok(None);
        }
        let source = match named_store_hash(prefix) {
            Some(hash) => {
                let path = cache.path_info(hash).await?;
                let store_path = match path {
                    Some(path) => StorePath::parse(&path.store_path).ok(),
                    None => None,
                };
                Source::One(store_path.filter(|p| {
                    let key = format!("{TREE_PREFIX}{}", p.base_name());
                    key.starts_with(prefix) || prefix.starts_with(&key)
                }))
            }
            None => {
                let rest = prefix.get(TREE_PREFIX.len()..).unwrap_or("");
                let start = match &query.after {
                    None => Some(None),
                    Some(After::Key(at) | After::Prefix(at)) => store_start(cache, at),
                };
                // `tree/<less than a hash>/…` names no store path; a start past `tree/` none either.
                let request = match start {
                    Some(start_after) if !rest.contains('/') => {
                        Some(store_request(cache, rest, start_after, query.max_keys))
                    }
                    _ => None,
                };
                Source::Index { request, paths: VecDeque::new() }
            }
        };
        Ok(Some(TreeStream { cache, renderer, query, source, current: None, buffer: VecDeque::new() }))
    }

    /// Whether the query's prefix names one store path, so no other stream has keys under it.
    pub(crate) fn is_one_store_path(&self) -> bool {
        matches!(self.source, Source::One(_))
    }

    /// The next item, without taking it.
    pub(crate) async fn peek(&mut self) -> Result<Option<&Item>, CommitError> {
        while self.buffer.is_empty() {
            if let Some(item) = self.next_of_current() {
                self.buffer.push_back(item);
                continue;
            }
            let Some(store_path) = self.next_store_path().await? else { return Ok(None) };
            let key = format!("{TREE_PREFIX}{}", store_path.base_name());
            let prefix = self.query.prefix.as_str();
            if !key.starts_with(prefix) && !prefix.starts_with(&key) {
                continue;
            }
            if key.len() >= prefix.len()
                && let Some(common) = rollup(self.query, &key)
            {
                // Every key of this store path rolls up into `common`, and so do the next ones'
                // that start with it: jump past them, the tree need not be loaded.
                self.skip_store_paths_under(&common);
                let item = Item::Prefix(common);
                if is_after(self.query.after.as_ref(), &item) {
                    self.buffer.push_back(item);
                }
                continue;
            }
            if let Some(tree) = self.cache.tree_of(self.renderer, &store_path).await? {
                let next = self.first_index(&tree);
                self.current = Some(Current { tree, next });
            }
        }
        Ok(self.buffer.front())
    }

    /// Where listing `tree` starts: at the query's prefix, and past its start position when that
    /// lies in this tree.
    fn first_index(&self, tree: &BrowsedTree) -> usize {
        let relative = |key: &str| key.strip_prefix(tree.key.as_str()).map(str::to_owned);
        let entries = tree.tree.entries();
        let mut at = relative(&self.query.prefix).map_or(0, |p| tree.tree.first_at_or_after(&p));
        match &self.query.after {
            Some(After::Key(key)) => {
                if let Some(k) = relative(key) {
                    at = at.max(entries.partition_point(|e| e.key <= k));
                }
            }
            Some(After::Prefix(prefix)) => {
                if let Some(p) = relative(prefix) {
                    at = at.max(tree.tree.first_past(0, &p));
                }
            }
            None => {}
        }
        at
    }

    /// The next item of the tree being listed, if it has more.
    fn next_of_current(&mut self) -> Option<Item> {
        let current = self.current.as_mut()?;
        let query = self.query;
        while let Some(entry) = current.tree.tree.entries().get(current.next) {
            let meta = current.tree.meta(entry);
            if !meta.key.starts_with(&query.prefix) {
                if meta.key.as_str() > query.prefix.as_str() {
                    break;
                }
                current.next += 1;
                continue;
            }
            let item = match rollup(query, &meta.key) {
                Some(common) => {
                    let relative = &common[current.tree.key.len()..];
                    current.next = current.tree.tree.first_past(current.next, relative);
                    Item::Prefix(common)
                }
                None => {
                    current.next += 1;
                    Item::Object(meta)
                }
            };
            if is_after(query.after.as_ref(), &item) {
                return Some(item);
            }
        }
        self.current = None;
        None
    }

    /// The next store path to list, if any.
    async fn next_store_path(&mut self) -> Result<Option<StorePath>, CommitError> {
        match &mut self.source {
            Source::One(path) => Ok(path.take()),
            Source::Index { request, paths } => loop {
                if let Some(path) = paths.pop_front() {
                    return Ok(Some(path));
                }
                let Some(next) = request.take() else { return Ok(None) };
                let page = self.cache.backend.list(&next).await?;
                let index_prefix = self.cache.keys.index_prefix();
                for object in &page.objects {
                    let alias = object
                        .key
                        .strip_prefix(index_prefix.as_str())
                        .and_then(IndexEntry::parse)
                        .and_then(|e| Some(e.key.strip_prefix("store/")?.strip_suffix(".nar")?.to_owned()))
                        .and_then(|base| StorePath::from_base_name(&base).ok());
                    // Two entries of one alias (a replaced entry not yet removed) list it once.
                    if let Some(path) = alias
                        && paths.back() != Some(&path)
                    {
                        paths.push_back(path);
                    }
                }
                *request = page
                    .next_continuation_token
                    .map(|token| ListRequest { continuation_token: Some(token), ..next });
            },
        }
    }

    /// Skips the store paths whose `tree/` keys all start with `common`.
    fn skip_store_paths_under(&mut self, common: &str) {
        match &mut self.source {
            Source::One(path) => *path = None,
            Source::Index { request, paths } => {
                let Some(rest) = common.strip_prefix(TREE_PREFIX) else { return };
                let under = |p: &StorePath| p.base_name().starts_with(rest);
                while paths.front().is_some_and(under) {
                    paths.pop_front();
                }
                if paths.is_empty()
                    && let Some(next) = request.take()
                {
                    let jump = format!(
                        "{}{}g",
                        self.cache.keys.index_prefix(),
                        hex::encode(format!("store/{rest}"))
                    );
                    *request =
                        Some(ListRequest { start_after: Some(jump), continuation_token: None, ..next });
                }
            }
        }
    }
}

/// Where the store paths of a listing that goes on from `at` start (a LIST's start-after, `None`
/// for the beginning), or `None` if every `tree/` key lies before `at`.
fn store_start(cache: &Cache, at: &str) -> Option<Option<String>> {
    let Some(rest) = at.strip_prefix(TREE_PREFIX) else {
        return (at < TREE_PREFIX).then_some(None);
    };
    // The store paths from the one whose hash starts `rest` on (its keys may follow `at`).
    let hash: String = rest.chars().take(HASH_CHARS).take_while(|c| c.is_ascii_alphanumeric()).collect();
    Some(Some(format!("{}{}", cache.keys.index_prefix(), hex::encode(format!("store/{hash}")))))
}

/// The LIST of the `store/` aliases whose base names start with `rest`.
fn store_request(cache: &Cache, rest: &str, start_after: Option<String>, max_keys: usize) -> ListRequest {
    let prefix = format!("{}{}", cache.keys.index_prefix(), hex::encode(format!("store/{rest}")));
    ListRequest {
        start_after: start_after.filter(|s| *s >= prefix),
        prefix,
        delimiter: None,
        continuation_token: None,
        max_keys: max_keys.clamp(1, super::listing::MAX_KEYS) + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_that_name_one_store_path() {
        let hash = "1vnwanv5bk8pm7cabl2adpqxssm3p0ai";
        assert_eq!(named_store_hash(&format!("tree/{hash}")), Some(hash));
        assert_eq!(named_store_hash(&format!("tree/{hash}-hello/bin/")), Some(hash));
        assert_eq!(named_store_hash("tree/1vnwanv5"), None);
        assert_eq!(named_store_hash("tree/"), None);
        assert_eq!(named_store_hash("store/"), None);
    }
}
