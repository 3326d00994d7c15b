//! The artifact store on a real disk, its QUIC side over real QUIC with a real certificate, the
//! `/v1/artifacts` API over real HTTP on 127.0.0.1:0, and the real `edgectl artifact` commands.

use edge_proto::digest::{
    from_lower_prefixed as parse_digest, sha256, to_hex, to_prefixed as format_digest,
};
use edge_proto::quic::{read_frame, write_msg};
use edge_proto::{ArtifactReply, ArtifactRequest, StreamOpen, decode};
mod common;

use common::Api;
use orchestrator::api;
use orchestrator::app::Handles;
use orchestrator::artifacts::{
    ArtifactInfo, ArtifactStore, OpenError, PutError, Served, serve_artifact_stream,
};
use orchestrator::auth::Role;
use orchestrator_core::store::MemStore;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use ureq::SendBody;
use ureq::http::{Method, Request};

/// Deterministic bytes that are not all alike.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// Every file name in the store's directory.
fn files(data: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data.join("artifacts/sha256"))
        .expect("artifact dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------------
// The store

#[tokio::test]
async fn the_store_round_trips_and_reads_from_an_offset() {
    let data = tempfile::tempdir().expect("tmp");
    let store = ArtifactStore::open(data.path()).expect("open");
    let content = bytes(200_000, 1);
    let stored = store.put(&content[..], None).await.expect("put");
    assert_eq!(stored.digest, sha256(&content));
    assert_eq!(stored.size, 200_000);
    assert!(stored.created);
    assert_eq!(files(data.path()), vec![to_hex(&stored.digest)]);
    let on_disk = std::fs::read(
        data.path()
            .join("artifacts/sha256")
            .join(to_hex(&stored.digest)),
    )
    .expect("read");
    assert_eq!(on_disk, content);

    let (mut file, size) = store
        .open_at(&stored.digest, 150_000)
        .await
        .expect("open at");
    assert_eq!(size, 200_000);
    let mut rest = Vec::new();
    file.read_to_end(&mut rest).await.expect("read");
    assert_eq!(rest, &content[150_000..]);
    // At the very end: nothing left, not an error.
    let (mut file, _) = store.open_at(&stored.digest, 200_000).await.expect("end");
    assert_eq!(file.read(&mut [0u8; 8]).await.expect("read"), 0);
    assert!(matches!(
        store.open_at(&stored.digest, 200_001).await,
        Err(OpenError::BadOffset { size: 200_000 })
    ));
    assert!(matches!(
        store.open_at(&[7; 32], 0).await,
        Err(OpenError::NotFound)
    ));

    assert_eq!(
        store.size(&stored.digest).await.expect("size"),
        Some(200_000)
    );
    assert_eq!(store.size(&[7; 32]).await.expect("size"), None);
    assert_eq!(
        store.list().await.expect("list"),
        vec![ArtifactInfo {
            digest: stored.digest,
            size: 200_000
        }]
    );
    assert!(store.delete(&stored.digest).await.expect("delete"));
    assert!(!store.delete(&stored.digest).await.expect("delete again"));
    assert!(store.list().await.expect("list").is_empty());
    assert!(files(data.path()).is_empty());
}

#[tokio::test]
async fn putting_the_same_bytes_twice_changes_nothing() {
    let data = tempfile::tempdir().expect("tmp");
    let store = ArtifactStore::open(data.path()).expect("open");
    let first = store
        .put(&b"#!/bin/sh\necho hi\n"[..], None)
        .await
        .expect("put");
    let again = store
        .put(&b"#!/bin/sh\necho hi\n"[..], Some(first.digest))
        .await
        .expect("put again");
    assert!(first.created);
    assert!(!again.created);
    assert_eq!((again.digest, again.size), (first.digest, first.size));
    assert_eq!(files(data.path()), vec![to_hex(&first.digest)]);
    // An empty artifact is an artifact too.
    let empty = store.put(&b""[..], None).await.expect("empty");
    assert_eq!(empty.digest, sha256(b""));
    assert_eq!(store.list().await.expect("list").len(), 2);
}

#[tokio::test]
async fn an_artifact_over_the_limit_is_refused_and_leaves_nothing() {
    let data = tempfile::tempdir().expect("tmp");
    let store = ArtifactStore::open_with_limit(data.path(), 1000).expect("open");
    assert_eq!(store.max_bytes(), 1000);
    match store.put(&bytes(1001, 2)[..], None).await {
        Err(PutError::TooLarge { max_bytes: 1000 }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(files(data.path()).is_empty());
    let exact = store
        .put(&bytes(1000, 2)[..], None)
        .await
        .expect("at the limit");
    assert_eq!(exact.size, 1000);
}

#[tokio::test]
async fn a_digest_mismatch_leaves_nothing_behind() {
    let data = tempfile::tempdir().expect("tmp");
    let store = ArtifactStore::open(data.path()).expect("open");
    let content = bytes(70_000, 3);
    let wrong = sha256(b"something else");
    match store.put(&content[..], Some(wrong)).await {
        Err(PutError::DigestMismatch { expected, actual }) => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, sha256(&content));
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert!(files(data.path()).is_empty());
    assert!(store.list().await.expect("list").is_empty());
    let right = store
        .put(&content[..], Some(sha256(&content)))
        .await
        .expect("right digest");
    assert!(right.created);
}

#[tokio::test]
async fn abandoned_uploads_leave_nothing_and_crashed_ones_are_swept_on_open() {
    let data = tempfile::tempdir().expect("tmp");
    let store = ArtifactStore::open(data.path()).expect("open");
    let mut upload = store.begin(None).await.expect("begin");
    upload.write(b"half an executable").await.expect("write");
    assert_eq!(upload.size(), 18);
    assert_eq!(files(data.path()).len(), 1, "the temporary file");
    drop(upload);
    assert!(files(data.path()).is_empty());

    // What a killed process leaves: a temporary file. It is never listed, and the next start
    // deletes it.
    std::fs::write(
        data.path()
            .join("artifacts/sha256/.upload-00000000deadbeef"),
        b"partial",
    )
    .expect("write");
    assert!(store.list().await.expect("list").is_empty());
    ArtifactStore::open(data.path()).expect("reopen");
    assert!(files(data.path()).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Serving over QUIC

/// A QUIC server with a self-signed certificate for `orchestrator.edge` that answers every
/// stream with `serve_artifact_stream`, and a client that trusts it.
struct Quic {
    client: quinn::Endpoint,
    addr: SocketAddr,
    /// What the server reported for each stream, in order.
    served: tokio::sync::mpsc::UnboundedReceiver<Served>,
    _server: quinn::Endpoint,
}

fn quic(store: ArtifactStore) -> Quic {
    let _ = rustls::crypto::ring::default_provider().install_default();
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
    let store = Arc::new(store);
    let accepting = server.clone();
    let (report, served) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            let store = store.clone();
            let report = report.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let store = store.clone();
                    let report = report.clone();
                    tokio::spawn(async move {
                        let body = read_frame(&mut recv).await.expect("frame").expect("open");
                        let StreamOpen::Artifact(req) = decode(&body).expect("StreamOpen");
                        let outcome = serve_artifact_stream(&store, req, &mut send)
                            .await
                            .expect("served");
                        let _ = report.send(outcome);
                        // Keep the stream until the client has everything.
                        let _ = send.stopped().await;
                    });
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
    Quic {
        client,
        addr,
        served,
        _server: server,
    }
}

/// Asks for `digest` from `offset`; returns the reply and the bytes after it.
async fn ask(conn: &quinn::Connection, digest: [u8; 32], offset: u64) -> (ArtifactReply, Vec<u8>) {
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    write_msg(
        &mut send,
        &StreamOpen::Artifact(ArtifactRequest { digest, offset }),
    )
    .await
    .expect("request");
    send.finish().expect("finish");
    let body = read_frame(&mut recv).await.expect("frame").expect("reply");
    let reply: ArtifactReply = decode(&body).expect("reply");
    let rest = recv.read_to_end(1 << 30).await.expect("bytes");
    (reply, rest)
}

#[tokio::test]
async fn artifacts_are_served_over_quic_from_an_offset() {
    let data = tempfile::tempdir().expect("tmp");
    let store = ArtifactStore::open(data.path()).expect("open");
    let content = bytes(300_000, 4);
    let digest = store.put(&content[..], None).await.expect("put").digest;
    let mut q = quic(store);
    let conn = q
        .client
        .connect(q.addr, edge_proto::ORCHESTRATOR_SERVER_NAME)
        .expect("connect")
        .await
        .expect("handshake");

    let (reply, rest) = ask(&conn, digest, 0).await;
    assert_eq!(
        reply,
        ArtifactReply::Sending {
            size: 300_000,
            offset: 0
        }
    );
    assert_eq!(rest, content);
    assert_eq!(q.served.recv().await, Some(Served::Sent { bytes: 300_000 }));

    let (reply, rest) = ask(&conn, digest, 123_456).await;
    assert_eq!(
        reply,
        ArtifactReply::Sending {
            size: 300_000,
            offset: 123_456
        }
    );
    assert_eq!(rest, &content[123_456..]);
    assert_eq!(
        q.served.recv().await,
        Some(Served::Sent {
            bytes: 300_000 - 123_456
        })
    );

    let (reply, rest) = ask(&conn, digest, 300_000).await;
    assert_eq!(
        reply,
        ArtifactReply::Sending {
            size: 300_000,
            offset: 300_000
        }
    );
    assert!(rest.is_empty());

    let (reply, rest) = ask(&conn, digest, 300_001).await;
    assert_eq!(reply, ArtifactReply::BadOffset { size: 300_000 });
    assert!(rest.is_empty());
    assert_eq!(q.served.recv().await, Some(Served::Sent { bytes: 0 }));
    assert_eq!(
        q.served.recv().await,
        Some(Served::BadOffset { size: 300_000 })
    );

    let (reply, rest) = ask(&conn, [9; 32], 0).await;
    assert_eq!(reply, ArtifactReply::NotFound);
    assert!(rest.is_empty());
    assert_eq!(q.served.recv().await, Some(Served::NotFound));
    conn.close(0u32.into(), b"done");
}

// ---------------------------------------------------------------------------------------------
// The API

/// Small enough that an over-limit body is drained (so the client reads our 413 rather than a
/// reset), big enough that a good upload is well over the API's 64 KiB JSON limit.
const LIMIT: u64 = 200_000;

struct Server {
    // Dropping it stops the server.
    _api: Api,
    _data: tempfile::TempDir,
    handles: Handles,
    base: String,
    admin: String,
    operator: String,
    viewer: String,
    agent: ureq::Agent,
}

fn start(with_store: bool) -> Server {
    let data = tempfile::tempdir().expect("tmp");
    let store = with_store.then(|| {
        Arc::new(ArtifactStore::open_with_limit(data.path(), LIMIT).expect("artifact store"))
    });
    let api = Api::start(Arc::new(MemStore::default()), store, api::LIMITS);
    Server {
        _data: data,
        handles: api.handles.clone(),
        base: api.base(),
        admin: api.token("admin", Role::Admin),
        operator: api.token("ci", Role::Operator),
        viewer: api.token("dash", Role::Viewer),
        agent: common::agent(),
        _api: api,
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// Asserts an error status with a JSON `{error, message}` body; returns the message.
    fn error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert!(
            self.content_type.starts_with("application/json"),
            "{self:?}"
        );
        let v = self.json();
        assert_eq!(v["error"], code, "{self:?}");
        v["message"].as_str().expect("a message").to_owned()
    }
}

impl Server {
    fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
        chunked: bool,
    ) -> Reply {
        let mut request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("method"))
            .uri(format!("{}{path}", self.base));
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = match body {
            None => self
                .agent
                .run(request.body(SendBody::none()).expect("request")),
            Some(b) if chunked => self.agent.run(
                request
                    .body(SendBody::from_owned_reader(std::io::Cursor::new(b)))
                    .expect("request"),
            ),
            Some(b) => self.agent.run(request.body(b).expect("request")),
        };
        let mut response = response.expect("the server answers");
        Reply {
            status: response.status().as_u16(),
            content_type: response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            body: response.body_mut().read_to_string().expect("body"),
        }
    }

    fn push(&self, token: Option<&str>, query: &str, body: &[u8]) -> Reply {
        self.send(
            "POST",
            &format!("/v1/artifacts{query}"),
            token,
            Some("application/octet-stream"),
            Some(body.to_vec()),
            false,
        )
    }

    /// Runs `edgectl --api BASE --token TOKEN ARGS...`.
    fn edgectl(&self, token: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_edgectl"))
            .env_remove("EDGE_API")
            .env_remove("EDGE_TOKEN")
            .arg("--api")
            .arg(&self.base)
            .arg("--token")
            .arg(token)
            .args(args)
            .output()
            .expect("run edgectl")
    }
}

#[test]
fn pushing_over_http_stores_the_bytes_under_their_digest() {
    let s = start(true);
    // Well over the 64 KiB that JSON bodies get, sent with a length and chunked.
    let content = bytes(150_000, 5);
    let r = s.push(Some(&s.operator), "", &content);
    assert_eq!(r.status, 201, "{r:?}");
    let v = r.json();
    assert_eq!(v["digest"], format_digest(&sha256(&content)));
    assert_eq!(v["size"], 150_000);
    // Same bytes again, chunked this time, with the digest to check: already there.
    let r = s.send(
        "POST",
        &format!("/v1/artifacts?sha256={}", to_hex(&sha256(&content))),
        Some(&s.admin),
        Some("application/octet-stream"),
        Some(content.clone()),
        true,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["digest"], format_digest(&sha256(&content)));
    // The `sha256:` form is accepted in the query too.
    let small = b"#!/bin/sh\nexit 0\n";
    let r = s.push(
        Some(&s.operator),
        &format!("?sha256={}", format_digest(&sha256(small))),
        small,
    );
    assert_eq!(r.status, 201, "{r:?}");

    let r = s.send("GET", "/v1/artifacts", Some(&s.viewer), None, None, false);
    assert_eq!(r.status, 200, "{r:?}");
    let mut want = vec![
        (format_digest(&sha256(&content)), 150_000),
        (format_digest(&sha256(small)), small.len() as u64),
    ];
    want.sort();
    let listed: Vec<(String, u64)> = r
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(|a| {
            (
                a["digest"].as_str().expect("digest").to_owned(),
                a["size"].as_u64().expect("size"),
            )
        })
        .collect();
    assert_eq!(listed, want);
    // Counted like every other request.
    assert!(
        s.handles
            .metrics
            .encode()
            .contains("edge_api_requests_total{code=\"201\"}"),
        "{}",
        s.handles.metrics.encode()
    );
}

#[test]
fn bad_pushes_get_the_right_status_and_store_nothing() {
    let s = start(true);
    let content = bytes(1000, 6);
    s.push(None, "", &content).error(401, "unauthorized");
    s.send("GET", "/v1/artifacts", None, None, None, false)
        .error(401, "unauthorized");
    let m = s
        .push(Some(&s.viewer), "", &content)
        .error(403, "forbidden");
    assert!(m.contains("operator"), "{m}");

    let m = s
        .send(
            "POST",
            "/v1/artifacts",
            Some(&s.operator),
            Some("application/json"),
            Some(content.clone()),
            false,
        )
        .error(415, "unsupported_media_type");
    assert!(m.contains("application/octet-stream"), "{m}");
    s.send(
        "POST",
        "/v1/artifacts",
        Some(&s.operator),
        None,
        Some(content.clone()),
        false,
    )
    .error(415, "unsupported_media_type");

    // Over the limit: announced by content-length, and discovered while streaming.
    let big = bytes(LIMIT as usize + 1, 7);
    let m = s.push(Some(&s.operator), "", &big).error(413, "too_large");
    assert!(m.contains(&LIMIT.to_string()), "{m}");
    s.send(
        "POST",
        "/v1/artifacts",
        Some(&s.operator),
        Some("application/octet-stream"),
        Some(big),
        true,
    )
    .error(413, "too_large");

    // A digest that the bytes do not hash to, and one that is not a digest.
    let other = to_hex(&sha256(b"other"));
    let m = s
        .push(Some(&s.operator), &format!("?sha256={other}"), &content)
        .error(400, "bad_request");
    assert!(m.starts_with("sha256:"), "{m}");
    assert!(m.contains(&to_hex(&sha256(&content))), "{m}");
    let m = s
        .push(Some(&s.operator), "?sha256=xyz", &content)
        .error(400, "bad_request");
    assert!(m.starts_with("sha256:"), "{m}");
    let m = s
        .push(Some(&s.operator), "?digest=abc", &content)
        .error(400, "bad_request");
    assert!(m.starts_with("digest:"), "{m}");

    // A method the route does not have still answers in the API's error shape.
    s.send("DELETE", "/v1/artifacts", Some(&s.admin), None, None, false)
        .error(405, "method_not_allowed");

    let r = s.send("GET", "/v1/artifacts", Some(&s.viewer), None, None, false);
    assert_eq!(r.json(), serde_json::json!([]));
}

#[test]
fn without_a_store_the_routes_exist_but_are_unavailable() {
    let s = start(false);
    s.push(None, "", b"x").error(401, "unauthorized");
    let r = s.push(Some(&s.operator), "", b"x");
    assert_eq!(r.status, 503, "{r:?}");
    let r = s.send("GET", "/v1/artifacts", Some(&s.viewer), None, None, false);
    assert_eq!(r.status, 503, "{r:?}");
}

#[test]
fn edgectl_pushes_and_lists_artifacts() {
    let s = start(true);
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("hello");
    let content = bytes(90_000, 8);
    std::fs::write(&path, &content).expect("write");
    let path = path.to_str().expect("utf-8 path");
    let digest = format_digest(&sha256(&content));

    let out = s.edgectl(&s.operator, &["artifact", "push", path, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["digest"], digest.as_str());
    assert_eq!(v["size"], 90_000);
    assert!(parse_digest(v["digest"].as_str().expect("digest")).is_some());

    let out = s.edgectl(&s.operator, &["artifact", "push", path]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(text.contains(&digest), "{text}");
    assert!(text.contains("90000 bytes"), "{text}");

    let out = s.edgectl(&s.viewer, &["artifact", "list", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v[0]["digest"], digest.as_str());
    let out = s.edgectl(&s.viewer, &["artifact", "list"]);
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(text.starts_with("DIGEST"), "{text}");
    assert!(text.contains(&digest), "{text}");

    // A viewer cannot push; a missing file is named.
    let out = s.edgectl(&s.viewer, &["artifact", "push", path]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("operator"),
        "{out:?}"
    );
    let out = s.edgectl(&s.operator, &["artifact", "push", "/nonexistent/hello"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/hello"),
        "{out:?}"
    );
}
