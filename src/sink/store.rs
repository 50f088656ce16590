//! The output location: a local directory, `s3://bucket/prefix` or
//! `memory://`, behind one `ObjectStore` with a root prefix.

use std::sync::Arc;

use bytes::Bytes;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

/// Errors of the output store; every one names the location it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("output location {location:?}: {reason}")]
    Location { location: String, reason: String },
    #[error("output store, {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },
}

/// Settings for S3-compatible stores, beyond what `AWS_*` variables give.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// e.g. `http://127.0.0.1:9000`; plain HTTP is allowed when given.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

/// Where outputs go. Cheap to clone.
#[derive(Debug, Clone)]
pub struct OutputStore {
    store: Arc<dyn ObjectStore>,
    /// Prefix of every output object inside `store`.
    root: Path,
    /// URL of the store itself (`file:///`, `s3://bucket/`, `memory://`).
    store_url: Url,
}

impl OutputStore {
    /// Opens `location`: a path (created if missing) or a URL.
    pub fn open(location: &str, s3: &S3Options) -> Result<Self, StoreError> {
        let bad = |reason: String| StoreError::Location {
            location: location.to_string(),
            reason,
        };
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket name (expected s3://bucket/prefix)".into()));
            }
            let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Some(e) = &s3.endpoint {
                b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
            }
            if let Some(r) = &s3.region {
                b = b.with_region(r);
            }
            if let Some(k) = &s3.access_key_id {
                b = b.with_access_key_id(k);
            }
            if let Some(k) = &s3.secret_access_key {
                b = b.with_secret_access_key(k);
            }
            let store = b.build().map_err(|e| bad(e.to_string()))?;
            return Ok(Self {
                store: Arc::new(store),
                root: Path::from(prefix.trim_matches('/')),
                store_url: Url::parse(&format!("s3://{bucket}/"))
                    .map_err(|e| bad(e.to_string()))?,
            });
        }
        if let Some(name) = location.strip_prefix("memory://") {
            return Ok(Self {
                store: Arc::new(InMemory::new()),
                root: Path::from(name.trim_matches('/')),
                // A fixed host, so DataFusion finds the store by URL as for s3://bucket/.
                store_url: Url::parse("memory://store/").expect("static url"),
            });
        }
        if location.contains("://") && !location.starts_with("file://") {
            return Err(bad(
                "unsupported scheme (use a path, file://, s3:// or memory://)".into(),
            ));
        }
        let dir = location.strip_prefix("file://").unwrap_or(location);
        std::fs::create_dir_all(dir).map_err(|e| bad(format!("cannot create directory: {e}")))?;
        let abs = std::fs::canonicalize(dir).map_err(|e| bad(e.to_string()))?;
        let root = Path::from_absolute_path(&abs).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            store: Arc::new(LocalFileSystem::new()),
            root,
            store_url: Url::parse("file:///").expect("static url"),
        })
    }

    /// The store rooted at the folder `rel` of this one (same connection).
    pub fn sub(&self, rel: &str) -> Self {
        Self {
            store: self.store.clone(),
            root: self.path(rel),
            store_url: self.store_url.clone(),
        }
    }

    /// Deletes every object under the folder `rel`; returns how many.
    pub async fn delete_all(&self, rel: &str) -> Result<usize, StoreError> {
        let objects = self.list(rel).await?;
        for (name, _) in &objects {
            self.delete(name).await?;
        }
        Ok(objects.len())
    }

    /// The object path of `rel` (slash-separated, relative to the root).
    pub fn path(&self, rel: &str) -> Path {
        let mut p = self.root.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.clone().join(part);
        }
        p
    }

    /// URL of the folder `rel`, as DataFusion wants it (trailing slash).
    pub fn folder_url(&self, rel: &str) -> String {
        format!("{}{}/", self.store_url, self.path(rel))
    }

    /// Makes the store reachable from `ctx` under its URL.
    pub fn register(&self, ctx: &SessionContext) {
        ctx.register_object_store(&self.store_url, self.store.clone());
    }

    /// Wraps an object-store error with the operation and the full location.
    fn io<'a>(
        &'a self,
        op: &'static str,
        path: &'a Path,
    ) -> impl Fn(object_store::Error) -> StoreError + 'a {
        move |source| StoreError::Io {
            op,
            path: self.describe(path),
            source,
        }
    }

    /// Writes an object atomically (readers see all of it or nothing).
    pub async fn put(&self, rel: &str, bytes: Bytes) -> Result<(), StoreError> {
        let path = self.path(rel);
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(self.io("writing", &path))
    }

    /// Writes an object only if none exists under that name (a conditional
    /// put on S3, an exclusive create on a local disk): `false` when another
    /// writer got there first. The arbiter between instances.
    pub async fn create(&self, rel: &str, bytes: Bytes) -> Result<bool, StoreError> {
        let path = self.path(rel);
        let opts = object_store::PutOptions::from(object_store::PutMode::Create);
        match self
            .store
            .put_opts(&path, PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.io("creating", &path)(e)),
        }
    }

    /// Deletes an object; one that does not exist is not an error.
    pub async fn delete(&self, rel: &str) -> Result<(), StoreError> {
        let path = self.path(rel);
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.io("deleting", &path)(e)),
        }
    }

    /// Reads an object, `None` if it does not exist.
    pub async fn get(&self, rel: &str) -> Result<Option<Bytes>, StoreError> {
        let path = self.path(rel);
        let io = self.io("reading", &path);
        match self.store.get(&path).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(io)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    /// Every object under the folder `rel`, relative paths sorted.
    pub async fn list(&self, rel: &str) -> Result<Vec<(String, ObjectMeta)>, StoreError> {
        let prefix = self.path(rel);
        let mut out: Vec<(String, ObjectMeta)> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| {
                let rel = m
                    .location
                    .prefix_match(&self.root)
                    .map(|parts| {
                        parts
                            .map(|p| p.as_ref().to_string())
                            .collect::<Vec<_>>()
                            .join("/")
                    })
                    .unwrap_or_else(|| m.location.to_string());
                (rel, m)
            })
            .try_collect()
            .await
            .map_err(self.io("listing", &prefix))?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Whether any object under the folder `rel` ends with `suffix`; stops
    /// at the first (a folder can hold very many).
    pub async fn holds_any(&self, rel: &str, suffix: &str) -> Result<bool, StoreError> {
        let prefix = self.path(rel);
        let mut objects = self.store.list(Some(&prefix));
        while let Some(m) = objects
            .try_next()
            .await
            .map_err(self.io("listing", &prefix))?
        {
            if m.location.as_ref().ends_with(suffix) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Names of the sub-folders directly under the folder `rel`.
    pub async fn folders(&self, rel: &str) -> Result<Vec<String>, StoreError> {
        let prefix = self.path(rel);
        let listing = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(self.io("listing", &prefix))?;
        let mut out: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Human-readable location of `path`, for errors and logs.
    pub fn describe(&self, path: &Path) -> String {
        format!("{}{}", self.store_url, path)
    }

    /// The root, as a URL.
    pub fn root_url(&self) -> String {
        format!("{}{}", self.store_url, self.root)
    }

    /// The root as an absolute path, for a local output.
    pub fn local_dir(&self) -> Option<String> {
        (self.store_url.scheme() == "file").then(|| format!("/{}", self.root))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_list_round_trip_in_memory_and_locally() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("out");
        for loc in ["memory://root/x", local.to_str().unwrap()] {
            let s = OutputStore::open(loc, &S3Options::default()).unwrap();
            assert_eq!(s.get("a/b.txt").await.unwrap(), None);
            s.put("a/b.txt", Bytes::from_static(b"hi")).await.unwrap();
            s.put("a/c/d.txt", Bytes::from_static(b"yo")).await.unwrap();
            s.put("z.txt", Bytes::from_static(b"no")).await.unwrap();
            assert_eq!(
                s.get("a/b.txt").await.unwrap().unwrap(),
                Bytes::from_static(b"hi")
            );
            let names: Vec<_> = s
                .list("a")
                .await
                .unwrap()
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            assert_eq!(names, ["a/b.txt", "a/c/d.txt"]);
            assert_eq!(s.folders("a").await.unwrap(), ["c"]);
            assert!(s.folders("nothing").await.unwrap().is_empty());
            assert!(
                s.folder_url("raw/x").ends_with("/raw/x/"),
                "{}",
                s.folder_url("raw/x")
            );
        }
        assert!(local.join("a/c/d.txt").exists());
    }

    #[tokio::test]
    async fn create_is_exclusive_and_delete_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("out");
        for loc in ["memory://root/x", local.to_str().unwrap()] {
            let s = OutputStore::open(loc, &S3Options::default()).unwrap();
            assert!(s
                .create("l/1.json", Bytes::from_static(b"a"))
                .await
                .unwrap());
            assert!(!s
                .create("l/1.json", Bytes::from_static(b"b"))
                .await
                .unwrap());
            assert_eq!(s.get("l/1.json").await.unwrap().unwrap(), "a");
            s.delete("l/1.json").await.unwrap();
            s.delete("l/1.json").await.unwrap();
            assert!(s
                .create("l/1.json", Bytes::from_static(b"c"))
                .await
                .unwrap());
        }
    }

    #[test]
    fn bad_locations_are_named() {
        let e = OutputStore::open("ftp://x", &S3Options::default()).unwrap_err();
        assert!(e.to_string().contains("ftp://x"), "{e}");
        let e = OutputStore::open("s3:///p", &S3Options::default()).unwrap_err();
        assert!(e.to_string().contains("bucket"), "{e}");
    }
}
