//! The node's artifact cache against a tiny orchestrator stand-in over real QUIC, with a real
//! certificate for `orchestrator.edge`, on 127.0.0.1 port 0. The stand-in speaks the artifact
//! protocol and can cut a transfer, reset it, corrupt the bytes, or fill the node's disk.
//!
//! A full disk is a real one: a small tmpfs mounted for the test (tests run as root here and
//! in CI; without root those tests fail and say why).

use edge_proto::digest::sha256;
use edge_proto::quic::{read_frame, write_msg};
use edge_proto::{ArtifactReply, StreamOpen, decode};
use node_daemon::artifacts::{ArtifactCache, Digest, Fault, FetchError, to_hex};
use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the stand-in answers one stream.
#[derive(Debug, Clone, Default)]
enum Serve {
    /// Every byte from the offset on, then the end of the stream.
    #[default]
    Whole,
    /// This many bytes of the transfer, then a clean end of the stream.
    CutAfter(usize),
    /// This many bytes, then a reset.
    ResetAfter(usize),
    /// Every byte, with one of them flipped.
    Corrupt,
    /// Before replying, writes `filler` to leave only `leave_bytes` free on its filesystem
    /// (something else on the node took the space); then every byte, as far as they go.
    FillFirst { filler: PathBuf, leave_bytes: u64 },
}

/// A shell script that prints `hi`, padded well past a few QUIC packets and read chunks.
fn script(tag: &str) -> Vec<u8> {
    let mut out = format!("#!/bin/sh\necho hi from {tag}\nexit 0\n# ").into_bytes();
    let mut rng = fastrand::Rng::with_seed(tag.len() as u64);
    out.extend((0..300_000).map(|_| rng.alphanumeric() as u8));
    out.push(b'\n');
    out
}

struct Orchestrator {
    conn: quinn::Connection,
    /// The offset of every artifact request, in order.
    offsets: Arc<Mutex<Vec<u64>>>,
    /// How to answer the next streams; `Whole` once it runs out.
    plan: Arc<Mutex<VecDeque<Serve>>>,
    _server: quinn::Endpoint,
    _client: quinn::Endpoint,
}

impl Orchestrator {
    async fn start(artifacts: &[&[u8]]) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store: Arc<HashMap<Digest, Vec<u8>>> =
            Arc::new(artifacts.iter().map(|a| (sha256(a), a.to_vec())).collect());
        let cert =
            rcgen::generate_simple_self_signed(vec![edge_proto::ORCHESTRATOR_SERVER_NAME.into()])
                .expect("certificate");
        let cert_der = cert.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let mut tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert_der.clone()], key)
            .expect("server TLS");
        tls.alpn_protocols = vec![edge_proto::ALPN.to_vec()];
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("QUIC TLS"),
        ));
        server_config.transport_config(Arc::new(edge_proto::quic::server_transport()));
        let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().expect("addr"))
            .expect("server endpoint");
        let addr = server.local_addr().expect("addr");

        let offsets = Arc::new(Mutex::new(Vec::new()));
        let plan = Arc::new(Mutex::new(VecDeque::new()));
        let accepting = server.clone();
        let (seen, how) = (offsets.clone(), plan.clone());
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let Ok(conn) = incoming.await else { continue };
                let (store, seen, how) = (store.clone(), seen.clone(), how.clone());
                tokio::spawn(async move {
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        let (store, seen, how) = (store.clone(), seen.clone(), how.clone());
                        tokio::spawn(serve(store, seen, how, send, recv));
                    }
                });
            }
        });

        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert_der).expect("trust");
        let mut tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![edge_proto::ALPN.to_vec()];
        let mut client_config = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS"),
        ));
        client_config.transport_config(Arc::new(edge_proto::quic::client_transport(
            edge_proto::liveness::Liveness::FAST,
        )));
        let mut client =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
        client.set_default_client_config(client_config);
        let conn = client
            .connect(addr, edge_proto::ORCHESTRATOR_SERVER_NAME)
            .expect("connect")
            .await
            .expect("handshake");
        Self {
            conn,
            offsets,
            plan,
            _server: server,
            _client: client,
        }
    }

    fn then(&self, how: Serve) {
        self.plan.lock().expect("plan").push_back(how);
    }

    fn offsets(&self) -> Vec<u64> {
        self.offsets.lock().expect("offsets").clone()
    }
}

/// One artifact stream, answered per the protocol and the plan.
async fn serve(
    store: Arc<HashMap<Digest, Vec<u8>>>,
    seen: Arc<Mutex<Vec<u64>>>,
    how: Arc<Mutex<VecDeque<Serve>>>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let body = read_frame(&mut recv)
        .await
        .expect("a frame")
        .expect("an open");
    let StreamOpen::Artifact(req) = decode(&body).expect("a StreamOpen");
    seen.lock().expect("offsets").push(req.offset);
    let how = how.lock().expect("plan").pop_front().unwrap_or_default();
    let Some(bytes) = store.get(&req.digest) else {
        write_msg(&mut send, &ArtifactReply::NotFound)
            .await
            .expect("reply");
        let _ = send.finish();
        let _ = send.stopped().await;
        return;
    };
    if let Serve::FillFirst {
        filler,
        leave_bytes,
    } = &how
    {
        let free = free_bytes(filler.parent().expect("a directory"));
        let fill = usize::try_from(free.saturating_sub(*leave_bytes)).expect("fits");
        std::fs::write(filler, vec![0u8; fill]).expect("fill the disk");
    }
    let size = bytes.len() as u64;
    let Some(rest) = usize::try_from(req.offset)
        .ok()
        .and_then(|offset| bytes.get(offset..))
    else {
        write_msg(&mut send, &ArtifactReply::BadOffset { size })
            .await
            .expect("reply");
        let _ = send.finish();
        let _ = send.stopped().await;
        return;
    };
    write_msg(
        &mut send,
        &ArtifactReply::Sending {
            size,
            offset: req.offset,
        },
    )
    .await
    .expect("reply");
    let mut rest = rest.to_vec();
    match how {
        Serve::Whole => send.write_all(&rest).await.expect("bytes"),
        Serve::CutAfter(k) => send.write_all(&rest[..k]).await.expect("bytes"),
        Serve::ResetAfter(k) => {
            send.write_all(&rest[..k]).await.expect("bytes");
            let _ = send.reset(7u32.into());
            return;
        }
        Serve::Corrupt => {
            let middle = rest.len() / 2;
            rest[middle] ^= 0xff;
            send.write_all(&rest).await.expect("bytes");
        }
        // The node stops reading when its disk is full.
        Serve::FillFirst { .. } => {
            let _ = send.write_all(&rest).await;
        }
    }
    let _ = send.finish();
    let _ = send.stopped().await;
}

/// Every file name in the cache directory.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("cache dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn part_len(cache: &ArtifactCache, digest: &Digest) -> Option<u64> {
    std::fs::metadata(cache.dir().join(format!("{}.part", to_hex(digest))))
        .ok()
        .map(|m| m.len())
}

#[tokio::test]
async fn a_full_fetch_is_verified_executable_and_cached() {
    let artifact = script("full");
    let digest = sha256(&artifact);
    let orch = Orchestrator::start(&[&artifact]).await;
    let data = tempfile::tempdir().expect("tmp");
    let cache = ArtifactCache::open(data.path()).expect("cache");
    assert_eq!(cache.path(&digest), None);
    assert_eq!(
        cache.missing_bytes(&digest, artifact.len() as u64),
        artifact.len() as u64
    );

    let path = cache
        .fetch(&orch.conn, digest, artifact.len() as u64)
        .await
        .expect("fetch");
    assert_eq!(path, data.path().join("artifacts").join(to_hex(&digest)));
    assert_eq!(std::fs::read(&path).expect("read"), artifact);
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(cache.path(&digest), Some(path.clone()));
    assert_eq!(cache.missing_bytes(&digest, artifact.len() as u64), 0);
    assert_eq!(files(cache.dir()), vec![to_hex(&digest)]);
    // It really runs (the test runs it; the cache never does).
    let out = std::process::Command::new(&path).output().expect("run");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi from full\n");

    // Cached: no second download.
    let again = cache
        .fetch(&orch.conn, digest, artifact.len() as u64)
        .await
        .expect("cached");
    assert_eq!(again, path);
    assert_eq!(orch.offsets(), vec![0]);
}

#[tokio::test]
async fn a_cut_transfer_leaves_a_part_and_the_next_fetch_resumes_from_it() {
    let artifact = script("cut");
    let (digest, size) = (sha256(&artifact), artifact.len() as u64);
    let orch = Orchestrator::start(&[&artifact]).await;
    let data = tempfile::tempdir().expect("tmp");
    let cache = ArtifactCache::open(data.path()).expect("cache");

    orch.then(Serve::CutAfter(100_000));
    match cache.fetch(&orch.conn, digest, size).await {
        Err(e @ FetchError::Cut { have: 100_000, .. }) => {
            assert_eq!((e.fault(), e.retryable()), (Fault::Transient, true));
        }
        other => panic!("expected a cut at 100000, got {other:?}"),
    }
    assert_eq!(part_len(&cache, &digest), Some(100_000));
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    let part = cache.dir().join(format!("{}.part", to_hex(&digest)));
    assert_eq!(mode(&part), 0o600, "a download is the node's alone");
    assert_eq!(mode(cache.dir()), 0o700);
    assert_eq!(cache.path(&digest), None);
    assert_eq!(cache.missing_bytes(&digest, size), size - 100_000);

    let path = cache.fetch(&orch.conn, digest, size).await.expect("resume");
    assert_eq!(orch.offsets(), vec![0, 100_000]);
    assert_eq!(std::fs::read(&path).expect("read"), artifact);
    assert_eq!(files(cache.dir()), vec![to_hex(&digest)]);
}

#[tokio::test]
async fn a_reset_transfer_is_transient_and_resumes_after_what_arrived() {
    let artifact = script("reset");
    let (digest, size) = (sha256(&artifact), artifact.len() as u64);
    let orch = Orchestrator::start(&[&artifact]).await;
    let data = tempfile::tempdir().expect("tmp");
    let cache = ArtifactCache::open(data.path()).expect("cache");

    orch.then(Serve::ResetAfter(50_000));
    match cache.fetch(&orch.conn, digest, size).await {
        Err(e @ FetchError::Stream(_)) => assert_eq!(e.fault(), Fault::Transient),
        other => panic!("expected a broken stream, got {other:?}"),
    }
    // A reset may discard bytes in flight: whatever arrived is kept, nothing more.
    let kept = part_len(&cache, &digest).unwrap_or(0);
    assert!(kept <= 50_000, "{kept}");

    let path = cache.fetch(&orch.conn, digest, size).await.expect("resume");
    assert_eq!(orch.offsets(), vec![0, kept]);
    assert_eq!(std::fs::read(&path).expect("read"), artifact);
}

#[tokio::test]
async fn corrupted_bytes_are_rejected_deleted_and_fetched_again_from_zero() {
    let artifact = script("corrupt");
    let (digest, size) = (sha256(&artifact), artifact.len() as u64);
    let orch = Orchestrator::start(&[&artifact]).await;
    let data = tempfile::tempdir().expect("tmp");
    let cache = ArtifactCache::open(data.path()).expect("cache");

    orch.then(Serve::Corrupt);
    match cache.fetch(&orch.conn, digest, size).await {
        Err(e @ FetchError::HashMismatch { expected, actual }) => {
            assert_eq!(expected, digest);
            assert_ne!(actual, digest);
            assert_eq!((e.fault(), e.retryable()), (Fault::Peer, true));
        }
        other => panic!("expected a hash mismatch, got {other:?}"),
    }
    assert_eq!(cache.path(&digest), None);
    assert!(files(cache.dir()).is_empty(), "{:?}", files(cache.dir()));

    // Corruption after a resume: the whole file is checked, and the retry starts over.
    orch.then(Serve::CutAfter(10_000));
    orch.then(Serve::Corrupt);
    assert!(matches!(
        cache.fetch(&orch.conn, digest, size).await,
        Err(FetchError::Cut { have: 10_000, .. })
    ));
    assert!(matches!(
        cache.fetch(&orch.conn, digest, size).await,
        Err(FetchError::HashMismatch { .. })
    ));
    assert!(files(cache.dir()).is_empty(), "{:?}", files(cache.dir()));

    let path = cache.fetch(&orch.conn, digest, size).await.expect("good");
    assert_eq!(std::fs::read(&path).expect("read"), artifact);
    assert_eq!(orch.offsets(), vec![0, 0, 10_000, 0]);
}

#[tokio::test]
async fn an_unknown_or_misdescribed_artifact_is_a_peer_error_that_leaves_nothing() {
    let artifact = script("known");
    let orch = Orchestrator::start(&[&artifact]).await;
    let data = tempfile::tempdir().expect("tmp");
    let cache = ArtifactCache::open(data.path()).expect("cache");

    match cache.fetch(&orch.conn, [7; 32], 10).await {
        Err(e @ FetchError::NotFound) => {
            assert_eq!((e.fault(), e.retryable()), (Fault::Peer, false));
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    let size = artifact.len() as u64;
    match cache.fetch(&orch.conn, sha256(&artifact), size + 1).await {
        Err(FetchError::SizeMismatch { expected, actual }) => {
            assert_eq!((expected, actual), (size + 1, size));
        }
        other => panic!("expected a size mismatch, got {other:?}"),
    }
    assert!(files(cache.dir()).is_empty(), "{:?}", files(cache.dir()));
}

#[tokio::test]
async fn concurrent_fetches_of_one_artifact_download_it_once() {
    let artifact = script("twice");
    let (digest, size) = (sha256(&artifact), artifact.len() as u64);
    let orch = Orchestrator::start(&[&artifact]).await;
    let data = tempfile::tempdir().expect("tmp");
    let cache = ArtifactCache::open(data.path()).expect("cache");
    let (a, b) = tokio::join!(
        cache.fetch(&orch.conn, digest, size),
        cache.fetch(&orch.conn, digest, size)
    );
    assert_eq!(a.expect("first"), b.expect("second"));
    assert_eq!(orch.offsets(), vec![0]);
}

#[tokio::test]
async fn gc_keeps_what_is_referenced_and_deletes_the_rest() {
    let (a, b, c) = (script("a"), script("bb"), script("ccc"));
    let (da, db, dc) = (sha256(&a), sha256(&b), sha256(&c));
    let orch = Orchestrator::start(&[&a, &b, &c]).await;
    let data = tempfile::tempdir().expect("tmp");
    let cache = ArtifactCache::open(data.path()).expect("cache");
    cache
        .fetch(&orch.conn, da, a.len() as u64)
        .await
        .expect("a");
    cache
        .fetch(&orch.conn, db, b.len() as u64)
        .await
        .expect("b");
    orch.then(Serve::CutAfter(1000));
    assert!(cache.fetch(&orch.conn, dc, c.len() as u64).await.is_err());
    // A file the cache did not name is not the cache's to delete.
    std::fs::write(cache.dir().join("notes.txt"), b"mine").expect("write");

    let report = cache.gc(&HashSet::from([da])).await.expect("gc");
    assert_eq!(report.artifacts, vec![db]);
    assert_eq!(report.parts, vec![dc]);
    assert_eq!(report.freed_bytes, b.len() as u64 + 1000);
    let mut want = vec![to_hex(&da), "notes.txt".to_owned()];
    want.sort();
    assert_eq!(files(cache.dir()), want);
    assert!(cache.path(&da).is_some());
    assert_eq!(cache.path(&db), None);

    let report = cache.gc(&HashSet::new()).await.expect("gc");
    assert_eq!(report.artifacts, vec![da]);
    assert_eq!(files(cache.dir()), vec!["notes.txt".to_owned()]);
}

/// Free bytes (for an unprivileged user) on the filesystem holding `dir`, from statvfs.
fn free_bytes(dir: &Path) -> u64 {
    let stat = nix::sys::statvfs::statvfs(dir).expect("statvfs");
    stat.blocks_available() * stat.fragment_size()
}

/// A tmpfs of `mib` MiB mounted on a fresh directory: the kind of filesystem an operator puts
/// a data dir on, and one the list of mounts in /proc/mounts-based tools leaves out.
/// Unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Self {
        let dir = tempfile::tempdir().expect("mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "mounting a {mib} MiB tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("--lazy")
            .arg(self.dir.path())
            .status();
    }
}

const MIB: u64 = 1 << 20;

/// A data dir on a small tmpfs is measured as that tmpfs, not as the filesystem it is
/// mounted on, by the capabilities the orchestrator schedules with and by the measurements
/// admission uses.
#[test]
fn free_disk_is_measured_on_the_data_dirs_own_filesystem() {
    let tmpfs = Tmpfs::mount(24);
    // Not created yet: the filesystem that will hold it is measured.
    let data = tmpfs.path().join("edge-node");
    let caps = node_daemon::capabilities::collect(&data, Default::default(), None);
    assert_eq!(caps.disk_bytes, 24 * MIB);
    assert_eq!(caps.disk_free_bytes, 24 * MIB);

    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(data.join("taken"), vec![0u8; (4 * MIB) as usize]).expect("write");
    let mut sampler = node_daemon::capabilities::StatusSampler::new(&data).expect("sampler");
    assert_eq!(sampler.measure().disk_free, 20 * MIB);
    assert_eq!(sampler.sample().disk_free_bytes, 20 * MIB);
}

#[tokio::test]
async fn an_artifact_larger_than_the_free_disk_is_refused_before_any_transfer() {
    let tmpfs = Tmpfs::mount(24);
    let big = vec![b'x'; (40 * MIB) as usize];
    let (digest, size) = (sha256(&big), big.len() as u64);
    let orch = Orchestrator::start(&[&big]).await;
    let cache = ArtifactCache::open(tmpfs.path()).expect("cache");
    match cache.fetch(&orch.conn, digest, size).await {
        Err(e @ FetchError::NoSpace { need, free }) => {
            assert_eq!((need, free), (size, 24 * MIB));
            assert_eq!((e.fault(), e.retryable()), (Fault::Local, false));
        }
        other => panic!("expected no space, got {other:?}"),
    }
    assert!(orch.offsets().is_empty(), "nothing was requested");
    assert!(files(cache.dir()).is_empty(), "{:?}", files(cache.dir()));
}

#[tokio::test]
async fn a_disk_that_fills_during_the_transfer_is_refused_and_freed() {
    let tmpfs = Tmpfs::mount(24);
    let artifact = vec![b'y'; (8 * MIB) as usize];
    let (digest, size) = (sha256(&artifact), artifact.len() as u64);
    let orch = Orchestrator::start(&[&artifact]).await;
    let cache = ArtifactCache::open(tmpfs.path()).expect("cache");
    let filler = tmpfs.path().join("filler");
    // It fits when the fetch starts; then something else takes all but 1 MiB.
    orch.then(Serve::FillFirst {
        filler: filler.clone(),
        leave_bytes: MIB,
    });
    match cache.fetch(&orch.conn, digest, size).await {
        Err(e @ FetchError::NoSpace { need, .. }) => {
            assert_eq!(need, size);
            assert!(!e.retryable());
        }
        other => panic!("expected no space, got {other:?}"),
    }
    assert!(
        files(cache.dir()).is_empty(),
        "the part is deleted: {:?}",
        files(cache.dir())
    );
    assert!(
        free_bytes(tmpfs.path()) >= MIB,
        "and its space is free again"
    );

    // Once there is room, the same artifact fetches.
    std::fs::remove_file(&filler).expect("free the disk");
    let path = cache
        .fetch(&orch.conn, digest, size)
        .await
        .expect("fits now");
    assert_eq!(std::fs::read(path).expect("read"), artifact);
}

/// Admission passed on a measurement taken before the disk filled; the fetch finds the
/// artifact cannot fit. The node refuses the assignment, as admission would have, so the
/// orchestrator places the instance elsewhere; it does not retry the download forever.
#[tokio::test]
async fn an_assignment_whose_artifact_cannot_fit_is_refused_to_the_orchestrator() {
    use edge_proto::{Assignment, NodeMsg, RestartPolicy, text};
    use node_core::admission::{Measured, Reserve};
    use node_daemon::supervisor::LimitsBackend;
    use node_daemon::workloads::Workloads;

    let tmpfs = Tmpfs::mount(24);
    let big = vec![b'z'; (40 * MIB) as usize];
    let orch = Orchestrator::start(&[&big]).await;
    let (_conn_tx, conn_rx) = tokio::sync::watch::channel(Some(orch.conn.clone()));
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel(64);
    let metrics = node_daemon::metrics::NodeMetrics::new();
    let agent = Workloads::start(
        &tmpfs.path().join("edge-node"),
        "small",
        None,
        Reserve {
            memory_bytes: 0,
            disk_bytes: 0,
        },
        LimitsBackend::Rlimit,
        Vec::new(),
        conn_rx,
        out_tx,
        metrics.clone(),
    )
    .await
    .expect("start");
    let assignment = Assignment {
        workload: text("big"),
        version: text("1"),
        generation: 3,
        artifact: sha256(&big),
        artifact_size: big.len() as u64,
        args: Default::default(),
        env: Default::default(),
        working_dir: None,
        cpu_millis: None,
        memory_bytes: None,
        disk_bytes: None,
        restart: RestartPolicy::Never,
        health: None,
        expose: Default::default(),
        scale_to_zero_idle_secs: None,
        image: None,
    };
    let earlier = Measured {
        memory_total: 1 << 40,
        memory_available: 1 << 40,
        disk_free: 1 << 40,
    };
    let reply = agent.assign(assignment.clone(), earlier);
    assert_eq!(reply.rejected, None, "admitted on the earlier measurement");

    let refusal = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match out_rx.recv().await.expect("the agent reports") {
                NodeMsg::Admission(a) => return a,
                NodeMsg::Workload(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("a refusal within the deadline");
    assert_eq!((refusal.workload.as_str(), refusal.generation), ("big", 3));
    let reason = refusal.rejected.expect("refused").to_string();
    assert!(reason.contains("disk"), "{reason}");
    assert!(orch.offsets().is_empty(), "no download was tried");
    assert!(agent.supervisor().status("big").is_none());

    // Forgotten: the same assignment is decided afresh, and the node's true measurement now
    // refuses it at admission.
    let now = Measured {
        disk_free: free_bytes(tmpfs.path()),
        ..earlier
    };
    let again = agent.assign(assignment, now);
    assert!(again.rejected.is_some(), "{again:?}");
    // Both refusals are counted, each by its own reason.
    let text = metrics.encode(edge_shell::exposition::Format::Text004);
    for series in [
        r#"edge_node_admission_refusals_total{reason="no_space"} 1"#,
        r#"edge_node_admission_refusals_total{reason="disk"} 1"#,
        r#"edge_node_artifact_fetch_failures_total{reason="no_space"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == series), "{series}:\n{text}");
    }
    agent.shutdown().await;
}
