//! The cache's directory is 0700 and its files 0600 whatever the process umask: modes are
//! set explicitly, not left to what creation with a mode and the umask make of them. A
//! strict umask (0277) would leave a directory the cache cannot write and files it cannot
//! replace; a permissive one (0) must not open anything up.
//!
//! The umask belongs to the whole process: this file holds a single test, so nothing else in
//! its binary runs under it.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use edge_proxy::Body;
use edge_proxy::cache::{
    Cache, CacheConfig, CacheOutcome, Clock, DiskConfig, Origin, OriginError, RouteCache,
};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use nix::sys::stat::{Mode, umask};

/// An origin whose every answer may be stored for a minute.
struct Cacheable;

impl Origin for Cacheable {
    fn fetch(
        &self,
        _: Request<Body>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Body>, OriginError>> + Send + '_>> {
        Box::pin(async {
            let body = Full::new(Bytes::from_static(b"x"))
                .map_err(|never| match never {})
                .boxed_unsync();
            let mut response = Response::new(body);
            response.headers_mut().insert(
                "cache-control",
                http::HeaderValue::from_static("max-age=60"),
            );
            Ok(response)
        })
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

async fn store_one(dir: &Path) {
    let cache = Cache::open(CacheConfig {
        name: "edge-node".into(),
        memory_bytes: 1 << 20,
        disk: Some(DiskConfig {
            dir: dir.to_owned(),
            max_bytes: 1 << 20,
        }),
        max_object_bytes: 1 << 20,
        clock: Clock::manual(SystemTime::UNIX_EPOCH),
    })
    .expect("the cache opens");
    let origin: Arc<dyn Origin> = Arc::new(Cacheable);
    for path in ["/a", "/b"] {
        let req = Request::builder()
            .uri(path)
            .header("host", "example.com")
            .body(
                Full::new(Bytes::new())
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .expect("request");
        let (_, outcome) = cache.serve(req, &RouteCache::default(), &origin).await;
        assert_eq!(outcome, CacheOutcome::Miss);
    }
    assert_eq!(cache.usage().entries, 2);
}

#[tokio::test]
async fn the_cache_dir_is_0700_and_its_files_0600_whatever_the_umask() {
    let root = tempfile::tempdir().expect("temp dir");
    for (umask_bits, name) in [(0o277, "strict"), (0o000, "open")] {
        umask(Mode::from_bits_truncate(umask_bits));
        let dir = root.path().join(name).join("cache");
        store_one(&dir).await;
        assert_eq!(mode(&dir), 0o700, "{name}");
        assert_eq!(
            mode(&root.path().join(name)),
            0o700,
            "{name}: a parent it made"
        );
        let files: Vec<_> = std::fs::read_dir(&dir)
            .expect("read the dir")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(files.len(), 2, "{name}");
        for file in files {
            assert_eq!(mode(&file), 0o600, "{name}: {}", file.display());
        }
    }
    umask(Mode::from_bits_truncate(0o022));
}
