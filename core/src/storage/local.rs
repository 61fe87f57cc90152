//! Local files on a cluster's servers. Whoever submits SQL to a scheduler
//! would otherwise read and write the executors' (and the scheduler's) files
//! with their user's rights (`LOCATION '/etc/'`). A server runs with
//! [`LocalAccess::Only`] the prefixes its operator allows
//! (`--allow-local-paths`, none by default); the client and the embedded
//! cluster of `sluice run`, which act for the user on the user's machine,
//! keep [`LocalAccess::Any`]. The policy travels in the session config.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::prelude::SessionConfig;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

/// Which local paths a process's SQL may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LocalAccess {
    /// Any (the user's own machine).
    #[default]
    Any,
    /// Only under these absolute directories (each ending in `/`).
    Only(Vec<String>),
}

impl LocalAccess {
    /// `--allow-local-paths`: a comma-separated list of absolute directories.
    pub fn only(list: &str) -> Result<Self, String> {
        let mut dirs = vec![];
        for raw in list.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            if !raw.starts_with('/') {
                return Err(format!("'{raw}' is not an absolute directory"));
            }
            dirs.push(format!("{}/", raw.trim_end_matches('/')));
        }
        Ok(Self::Only(dirs))
    }

    /// This policy on `config`, for every session built from it.
    pub fn install(self, config: SessionConfig) -> SessionConfig {
        config.with_extension(Arc::new(self))
    }

    /// The policy a session carries (none: [`LocalAccess::Any`]).
    pub fn of(config: &SessionConfig) -> Arc<Self> {
        config.get_extension::<Self>().unwrap_or_default()
    }

    /// The local store for this policy.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        match self {
            Self::Any => Arc::new(LocalFileSystem::new()),
            Self::Only(dirs) => Arc::new(GuardedLocal {
                inner: LocalFileSystem::new(),
                allowed: dirs.clone(),
            }),
        }
    }
}

/// The local file system, refusing paths outside the allowed directories.
#[derive(Debug)]
struct GuardedLocal {
    inner: LocalFileSystem,
    allowed: Vec<String>,
}

impl fmt::Display for GuardedLocal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalFileSystem(only {})", self.allowed.join(", "))
    }
}

impl GuardedLocal {
    fn check(&self, path: &Path) -> object_store::Result<()> {
        let abs = format!("/{path}");
        let dir = format!("{abs}/");
        if self
            .allowed
            .iter()
            .any(|a| abs.starts_with(a.as_str()) || dir == *a)
        {
            return Ok(());
        }
        Err(object_store::Error::PermissionDenied {
            path: abs,
            source: format!(
                "local files on this cluster are limited to {} (the servers' --allow-local-paths)",
                if self.allowed.is_empty() {
                    "nothing".to_string()
                } else {
                    self.allowed.join(", ")
                }
            )
            .into(),
        })
    }
}

#[async_trait]
impl ObjectStore for GuardedLocal {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.check(location)?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.check(location)?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let allowed = self.allowed.clone();
        let checked = locations
            .map(move |p| {
                let p = p?;
                GuardedLocal {
                    inner: LocalFileSystem::new(),
                    allowed: allowed.clone(),
                }
                .check(&p)?;
                Ok(p)
            })
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        match self.check(&prefix.cloned().unwrap_or_default()) {
            Ok(()) => self.inner.list(prefix),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.check(&prefix.cloned().unwrap_or_default())?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.check(from)?;
        self.check(to)?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.check(from)?;
        self.check(to)?;
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn only_the_allowed_directories_are_reachable() -> object_store::Result<()> {
        let dir = tempfile::tempdir().map_err(|e| object_store::Error::Generic {
            store: "test",
            source: e.into(),
        })?;
        let allowed = dir.path().join("ok");
        let access = LocalAccess::only(&allowed.display().to_string()).unwrap_or_default();
        let store = access.store();
        let path_of = |p: std::path::PathBuf| {
            Path::from(p.display().to_string().trim_start_matches('/').to_string())
        };
        let inside = path_of(allowed.join("f.txt"));
        store.put(&inside, "x".into()).await?;
        assert_eq!(&store.get(&inside).await?.bytes().await?[..], b"x");
        let outside = path_of(dir.path().join("other.txt"));
        let err = store
            .put(&outside, "x".into())
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("local files on this cluster are limited to"),
            "{err}"
        );
        assert!(
            store
                .list(Some(&Path::from("etc")))
                .next()
                .await
                .is_some_and(|r| r.is_err())
        );
        assert!(LocalAccess::only("relative/dir").is_err());
        Ok(())
    }
}
