//! The daemon: a thin tokio shell around [`NodeSession`]. It dials, moves frames, stores the
//! identity, samples load and refreshes capabilities; every decision is the session's.
//!
//! It also says what the session decided, where an operator looks: every attempt that ends
//! without a session (unreachable, refused, no answer, closed) is a warning that names the
//! address dialed, why, and how long the session backs off before the next one. The backoff
//! grows to 30 s, so a node pointed at the wrong address says so at most twice a minute once
//! it has been failing for a while.

use crate::capabilities::{self, StatusSampler};
use crate::config::{Config, Host, advertised_peer_addr};
use crate::identity::{Identity, IdentityDir, IdentityError};
use crate::metrics::{DialFailure, NodeEvent};
use crate::proxy::NodeProxy;
use crate::status::{State, StatusBoard};
use crate::streams;
use crate::supervisor::LimitsBackend;
use crate::tls::{self, PIN_MISMATCH};
use crate::workloads::Workloads;
use edge_proto::NodeMsg;
use edge_proto::quic::{ReadError, read_frame, write_msg};
use edge_proto::{
    Der, Intent, OrchMsg, PeerAddr, ProxyAdvert, RejectCode, RuntimeInfo, decode, text,
};
use node_core::renewal::Renewal;
use node_core::session::{
    ANSWER_TIMEOUT, Action, BackoffPolicy, ConnectFailure, Fatal, Join, NodeSession,
};
use node_core::summary::MetricWindow;
use node_core::sync::{ANSWER_DEADLINE, AnswerWatch, Resync};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot create data dir {0}: {1}")]
    DataDir(std::path::PathBuf, std::io::Error),
    #[error("cannot open a UDP socket: {0}")]
    Socket(std::io::Error),
    /// The orchestrator or the configuration says stop; see the message for what to fix.
    #[error(transparent)]
    Fatal(#[from] Fatal),
    #[error("workloads: {0}")]
    Workloads(#[from] crate::workloads::StartError),
    #[error(transparent)]
    Proxy(#[from] crate::proxy::ProxyError),
}

/// Events from the connection tasks, tagged with the attempt they belong to so that news from
/// an old connection is never mistaken for the current one.
enum Event {
    Connected(u64, quinn::Connection, quinn::SendStream, quinn::RecvStream),
    ConnectFailed(u64, ConnectFailure),
    Msg(u64, OrchMsg),
    Closed(u64, String),
}

/// Runs the node until `shutdown` completes or the session gives up.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    run_with(config, StatusBoard::new(), shutdown).await
}

/// As [`run`], keeping `board` up to date with the link's state.
pub async fn run_with(
    config: Config,
    board: StatusBoard,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let data_dir = config.data_dir().to_owned();
    let metrics = board.metrics().clone();
    crate::private_fs::create_dir_all(&data_dir)
        .map_err(|e| DaemonError::DataDir(data_dir.clone(), e))?;
    // What the orchestrator must still learn. Without it (a disk that refuses) the node
    // runs on, and what happens while it is offline is lost, as it was before the outbox.
    let mut outbox = match crate::outbox::EventOutbox::open(&data_dir, config.outbox()) {
        Ok(outbox) => Some(outbox),
        Err(error) => {
            warn!(%error, "outbox unavailable: events while offline will be lost");
            None
        }
    };
    let ids = IdentityDir::new(&data_dir);
    let identity = ids.load()?;
    let liveness = config.liveness();
    // Kept from dial to dial: it holds the TLS session tickets that make a reconnect cheap.
    let session_config = |identity: &Identity| tls::SessionTls::new(identity, liveness);
    let mut session_tls = identity.as_ref().map(session_config).transpose()?;
    let join = match (&identity, config.join()) {
        (None, Some(j)) => {
            let key = ids.key_pair()?;
            let csr = IdentityDir::csr(&key, config.name())?;
            Some((
                Join {
                    token: text(j.token.as_str()),
                    name: config.name_wire(),
                    csr_der: Der::new(csr).ok_or(Fatal::Untrusted("CSR too large".into()))?,
                },
                tls::with_liveness(tls::enroll_config(*j.ca_hash.as_bytes())?, liveness),
            ))
        }
        _ => None,
    };
    let (join, enroll_tls) = join.unzip();
    let orchestrator = config.orchestrator().to_string();
    board.update(|s| {
        s.name = Some(config.name().to_owned());
        s.node_id = identity.as_ref().map(|id| id.node_id.to_string());
        s.orchestrator = Some(orchestrator.clone());
    });
    match &identity {
        Some(id) => {
            info!(node = %id.node_id, name = config.name(), "starting with stored identity");
            board.set(State::Connecting, format!("connecting to {orchestrator}"));
        }
        None => {
            info!(name = config.name(), "not enrolled yet; enrolling");
            board.set(State::Enrolling, format!("enrolling with {orchestrator}"));
        }
    }

    let labels = config.labels_wire();
    let location = config.location_wire();
    let caps_now = {
        let data_dir = data_dir.clone();
        move || capabilities::collect(&data_dir, labels.clone(), location)
    };
    let mut sampler = StatusSampler::new(&data_dir).ok();
    let limits = LimitsBackend::detect();
    let limits_kind = limits.kind();
    let container_runtimes = crate::oci::runtime::detect(config.containers(), limits_kind);
    let (conn_tx, conn_rx) = watch::channel::<Option<quinn::Connection>>(None);
    let (out_tx, mut out_rx) = mpsc::channel::<NodeMsg>(256);
    let workloads = Workloads::start(
        &data_dir,
        config.name(),
        config.local_address(),
        config.reserve(),
        limits,
        container_runtimes.clone(),
        conn_rx,
        out_tx,
        metrics.clone(),
    )
    .await?;
    // Dropped with the daemon: the socket stops answering when the node stops.
    let _ctl = crate::ctl::start(
        config.ctl(),
        crate::ctl::Ctl {
            supervisor: workloads.supervisor().clone(),
            board: board.clone(),
            outbox: outbox.clone(),
        },
    );
    let (mut proxy, warm_swap) = match config.proxy() {
        Some(proxy_config) => {
            let mut proxy = NodeProxy::start(
                proxy_config,
                config.name(),
                &data_dir,
                workloads.supervisor().clone(),
                metrics.proxy(),
                config.location_wire(),
            )
            .await?;
            board.update(|s| s.proxy = Some(proxy.local_addr().to_string()));
            let warm_swap = proxy.start_prewarm(proxy_config, &data_dir, &board).await;
            (Some(proxy), warm_swap)
        }
        None => (None, None),
    };
    let _routing = proxy
        .as_ref()
        .map(|p| crate::proxy::route_model::watch(p.proxy().clone(), board.clone()));
    let _route_samples = match (
        proxy.as_ref(),
        outbox.clone(),
        config.proxy().and_then(|p| p.route_samples_interval()),
    ) {
        (Some(proxy), Some(outbox), Some(every)) => Some(crate::proxy::samples::start(
            proxy.proxy().clone(),
            outbox,
            every,
        )),
        _ => None,
    };
    let models = crate::models::FleetModels::start(
        data_dir.clone(),
        proxy.as_ref().map(|p| p.proxy().clone()),
        warm_swap,
        workloads.clone(),
        board.clone(),
    )
    .await;
    let mut traffic = proxy
        .as_ref()
        .map(|_| crate::proxy::traffic::Traffic::new(metrics.proxy(), fastrand::u64(..)));
    if let (Some(proxy), Some(identity)) = (proxy.as_mut(), identity.as_ref()) {
        serve_peers(proxy, identity, &config).await?;
    }
    let mut session = NodeSession::new(
        identity.as_ref().map(|i| i.node_id),
        join,
        caps_now(),
        config.status_interval(),
        BackoffPolicy::default(),
        fastrand::u64(..),
        Instant::now(),
    )
    .with_runtime(RuntimeInfo {
        limits: limits_kind,
        container_runtimes: container_runtimes
            .iter()
            .take(RuntimeInfo::MAX_RUNTIMES)
            .map(|r| text(&r.name))
            .collect(),
        model_operators: crate::models::reader_operators(),
    });
    // When to renew the certificate: decided by the core, on the orchestrator's clock.
    let mut renewal = identity.as_ref().and_then(|i| renewal_of(&board, &i.cert));
    drop(identity);

    // Where the node is: a receiver's reports become the node's track in the outbox.
    let mut location =
        crate::location::start_for_node(config.location_config(), &board, metrics.location());

    // Follows the sync after each welcome; events wait until it is over.
    let mut resync = Resync::default();
    // A live session that stops answering the sync or the outbox's batches is dialled again.
    let mut answers = AnswerWatch::default();
    let mut load = LoadRecorder::new(config.outbox().metrics_window_secs, outbox.clone());
    let endpoint = client_endpoint(&config)?;
    let (tx, mut rx) = mpsc::channel::<Event>(64);
    let mut attempt = 0u64;
    // Whether the dial of `attempt` is for a session (else it enrolls).
    let mut dialing_session = false;
    let mut current: Option<(quinn::Connection, quinn::SendStream)> = None;
    let mut caps_tick = tokio::time::interval(config.status_interval());
    caps_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The session has the capabilities of the start already: the first tick is an interval
    // from now, so a node that connects at once records no load as if it were away.
    caps_tick.reset();
    tokio::pin!(shutdown);

    loop {
        if let Some(r) = renewal.as_mut()
            && r.poll(Instant::now())
        {
            match renew_request(&ids, config.name()) {
                Ok(msg) => {
                    info!("asking the orchestrator to renew this node's certificate");
                    send_now(&mut current, &msg).await;
                }
                Err(error) => {
                    warn!(%error, "cannot make a certificate request; will try again");
                    r.handle_refused(Instant::now());
                }
            }
        }
        while let Some(action) = session.poll_action() {
            match action {
                Action::Connect(intent) => {
                    attempt += 1;
                    let tls = match intent {
                        Intent::Enroll => enroll_tls.clone(),
                        Intent::Session => session_tls.as_ref().map(tls::SessionTls::config),
                    };
                    dialing_session = intent == Intent::Session;
                    let Some(tls) = tls else {
                        // Invariant: the session asks for a session only once it has an
                        // identity, and to enroll only when it has join settings.
                        return Err(Fatal::NoJoinSettings.into());
                    };
                    tokio::spawn(dial(
                        endpoint.clone(),
                        config.orchestrator().host().clone(),
                        config.orchestrator().port(),
                        tls,
                        attempt,
                        tx.clone(),
                    ));
                }
                Action::Send(msg) => send_now(&mut current, &msg).await,
                Action::SaveIdentity(enrolled) => {
                    let saved = ids
                        .save(
                            enrolled.node_id,
                            enrolled.cert_der.as_slice(),
                            enrolled.ca_der.as_slice(),
                        )
                        .and_then(|()| ids.load());
                    match saved {
                        Ok(Some(identity)) => {
                            session_tls = Some(session_config(&identity)?);
                            if let Some(proxy) = proxy.as_mut() {
                                serve_peers(proxy, &identity, &config).await?;
                            }
                            metrics.emit(&NodeEvent::Enrolled {
                                node: identity.node_id,
                            });
                            board.update(|s| s.node_id = Some(identity.node_id.to_string()));
                            renewal = renewal_of(&board, &identity.cert);
                            session.handle_identity_saved(identity.node_id, Instant::now());
                        }
                        Ok(None) | Err(_) => {
                            warn!("could not store the identity; will enroll again");
                            session.handle_identity_save_failed(Instant::now());
                        }
                    }
                }
                Action::Disconnect => {
                    resync.disconnected();
                    if let Some((conn, _)) = current.take() {
                        conn.close(0u32.into(), b"");
                        // Its close may arrive after the next dial, and be taken for an old
                        // connection's: what was out on it goes again from now.
                        if let Some(outbox) = outbox.as_mut() {
                            outbox.disconnected();
                        }
                    }
                }
                Action::SampleStatus => {
                    if let Some(s) = sampler.as_mut() {
                        let status = s.sample();
                        load.sampled(&status, None);
                        if let Some(proxy) = &proxy {
                            proxy.proxy().set_local_load(s.host_load(&status));
                        }
                        session.handle_status(status);
                    }
                    if let Some(msg) = traffic.as_mut().and_then(|t| t.report(Instant::now())) {
                        send_now(&mut current, &msg).await;
                    }
                    // Events wait for a reason to go (a new one, an acknowledgement, a
                    // welcome); this is one more, so that none waits past an interval.
                    send_events(&mut outbox, &mut current, resync.is_done()).await;
                    let waiting =
                        !resync.is_done() || outbox.as_ref().is_some_and(|o| o.awaiting_ack());
                    if answers.stalled(waiting, Instant::now())
                        && let Some((conn, _)) = current.as_ref()
                    {
                        warn!(
                            synced = resync.is_done(),
                            deadline_secs = ANSWER_DEADLINE.as_secs(),
                            "the orchestrator has left the sync or the outbox's batches \
                             unanswered past the deadline; dialling again"
                        );
                        // The read loop reports the close, and the session backs off and
                        // dials as after any lost connection.
                        conn.close(0u32.into(), b"no answer to the sync or the events");
                        answers.answered();
                    }
                }
                Action::Assign(a) => {
                    resync.assigned(a.workload.as_str());
                    let reply = match sampler.as_mut() {
                        Some(s) => workloads.assign(*a, s.measure()),
                        None => edge_proto::AdmissionReply {
                            workload: a.workload.clone(),
                            generation: a.generation,
                            rejected: Some(text("the node cannot measure its memory")),
                        },
                    };
                    send_now(&mut current, &NodeMsg::Admission(Box::new(reply))).await;
                }
                Action::Unassign(u) => {
                    tokio::spawn(workloads.unassign(u.workload.as_str()));
                }
                Action::Synced(synced) => {
                    let held = workloads.held();
                    if let Some(finish) = resync.finish(&synced, held.iter().map(String::as_str)) {
                        info!(
                            mode = ?synced.mode,
                            assigned = synced.assigned,
                            unassigned = synced.unassigned,
                            forgotten = finish.forget.len(),
                            "in sync with the orchestrator"
                        );
                        for name in &finish.forget {
                            tokio::spawn(workloads.unassign(name));
                        }
                        if let Some(outbox) = outbox.as_ref() {
                            outbox.synced(finish.events_through);
                        }
                    }
                    answers.answered();
                    send_events(&mut outbox, &mut current, resync.is_done()).await;
                }
                Action::Routes(routes) => {
                    if let Some(proxy) = &proxy {
                        proxy.routes(&routes);
                    }
                }
                Action::Unroute(u) => {
                    if let Some(proxy) = &proxy {
                        proxy.unroute(u.workload.as_str());
                    }
                }
                Action::EventsStored(stored) => {
                    if let Some(outbox) = outbox.as_mut() {
                        outbox.stored(&stored);
                    }
                    answers.answered();
                    send_events(&mut outbox, &mut current, resync.is_done()).await;
                }
                Action::Renewed(renewed) => {
                    let trust: Vec<&[u8]> = renewed.trust.iter().map(|ca| ca.as_slice()).collect();
                    let cert = renewed.cert_der.as_slice();
                    let saved = match ids.certifies_our_key(cert) {
                        Ok(true) => ids.save_renewed(cert, &trust).and_then(|()| ids.load()),
                        Ok(false) => {
                            warn!("the orchestrator sent a certificate for another key; kept ours");
                            Ok(None)
                        }
                        Err(e) => Err(e),
                    };
                    match saved {
                        Ok(Some(identity)) => {
                            // The next dial presents the new certificate; this session and
                            // the workloads go on untouched.
                            session_tls = Some(session_config(&identity)?);
                            if let Some(proxy) = proxy.as_mut() {
                                serve_peers(proxy, &identity, &config).await?;
                            }
                            let validity = crate::identity::validity(&identity.cert);
                            board.update(|s| {
                                s.certificate_not_after_ms = validity.map(|v| v.not_after_ms);
                            });
                            match (renewal.as_mut(), validity) {
                                (Some(r), Some(v)) => r.handle_renewed(v),
                                _ => renewal = renewal_of(&board, &identity.cert),
                            }
                            info!(
                                not_after_ms = validity.map_or(0, |v| v.not_after_ms),
                                "certificate renewed; the next connection uses it"
                            );
                            // During a CA rotation, what counts this node as moved.
                            let stored = NodeMsg::CertificateStored(Box::new(
                                edge_proto::CertificateStored {
                                    cert_der: renewed.cert_der.clone(),
                                },
                            ));
                            send_now(&mut current, &stored).await;
                        }
                        Ok(None) | Err(_) => {
                            warn!("could not store the renewed certificate; will ask again");
                            if let Some(r) = renewal.as_mut() {
                                r.handle_refused(Instant::now());
                            }
                        }
                    }
                }
                Action::Model(model) => models.offered(&model),
                Action::RenewRefused(refused) => {
                    warn!(
                        reason = %refused.reason,
                        message = %refused.message,
                        "the orchestrator refused to renew this node's certificate; will ask again"
                    );
                    if let Some(r) = renewal.as_mut() {
                        r.handle_refused(Instant::now());
                    }
                }
                Action::Fatal(why) => {
                    warn!(error = %why, "giving up");
                    if let Fatal::Rejected {
                        code: RejectCode::UnknownNode,
                        ..
                    } = &why
                    {
                        // Deleted: the orchestrator has placed this node's instances elsewhere
                        // already, and nobody would supervise them after this returns.
                        warn!("the orchestrator no longer knows this node; stopping its workloads");
                        workloads.forget_all().await;
                    }
                    board.set(State::Failed, why.to_string());
                    endpoint.close(0u32.into(), b"");
                    return Err(why.into());
                }
            }
        }

        let deadline = session.poll_timeout();
        tokio::select! {
            () = &mut shutdown => {
                info!("shutting down");
                workloads.shutdown().await;
                if let Some((conn, _)) = current.take() {
                    conn.close(0u32.into(), b"node shutting down");
                }
                endpoint.wait_idle().await;
                return Ok(());
            }
            () = sleep_until(deadline) => {
                // Connected and not established: waiting for the hello's answer.
                let awaiting_answer = session.is_connecting();
                let now = Instant::now();
                session.handle_timeout(now);
                if awaiting_answer {
                    metrics.emit(&NodeEvent::DialFailed {
                        orchestrator: &orchestrator,
                        failure: DialFailure::NoAnswer,
                        error: &format!("no answer within {}s", ANSWER_TIMEOUT.as_secs()),
                        retry_in: backoff(&session, now),
                    });
                }
            }
            // Cancel-safe: a timer. The renewal point, or the end of a renewal's wait: the
            // loop's top asks the core.
            () = sleep_until(renewal.as_ref().and_then(Renewal::poll_timeout)) => {}
            // Cancel-safe: a timer. The pace of the uplink let the next batch go.
            () = paced(outbox.as_ref().and_then(|o| o.paced_until())) => {
                send_events(&mut outbox, &mut current, resync.is_done()).await;
            }
            _ = caps_tick.tick() => {
                // Online, the session samples the load; an enrolled node without a session
                // samples it here, for the outbox.
                if !session.is_established()
                    && session.node_id().is_some()
                    && let Some(s) = sampler.as_mut()
                {
                    let status = s.sample();
                    load.sampled(&status, outbox.as_ref());
                    if let Some(proxy) = &proxy {
                        proxy.proxy().set_local_load(s.host_load(&status));
                    }
                }
                let caps = tokio::task::spawn_blocking(caps_now.clone()).await;
                if let Ok(caps) = caps {
                    session.handle_capabilities(caps);
                }
            }
            // Cancel-safe: a channel's `recv` (see `next_report`).
            report = crate::location::next_report(location.as_mut()) => {
                let wire = report.to_wire();
                if let Some(proxy) = proxy.as_ref() {
                    // Without a fix, no peer is nearer than another.
                    proxy.moved(report.is_current().then_some(wire.location));
                }
                if let Some(outbox) = outbox.as_ref() {
                    outbox.record_location(wire);
                }
                if session.is_established() {
                    send_events(&mut outbox, &mut current, resync.is_done()).await;
                }
            }
            Some(msg) = out_rx.recv() => {
                // The live report goes now if it can (the full state goes out after the next
                // welcome anyway); the event of it waits in the outbox until stored.
                if let Some(outbox) = outbox.as_mut() {
                    outbox.record(&msg);
                }
                if session.is_established() {
                    send_now(&mut current, &msg).await;
                    send_events(&mut outbox, &mut current, resync.is_done()).await;
                }
            }
            Some(event) = rx.recv() => match event {
                Event::Connected(n, conn, send, recv) if n == attempt => {
                    if let Some(tls) = session_tls.as_mut().filter(|_| dialing_session) {
                        metrics.emit(&NodeEvent::Connected {
                            resumed: tls.resumed(),
                        });
                    }
                    tokio::spawn(read_loop(conn.clone(), recv, n, tx.clone()));
                    let _ = conn_tx.send(Some(conn.clone()));
                    current = Some((conn, send));
                    session.set_sync(sync_state(&workloads, outbox.as_ref()));
                    session.handle_connected(Instant::now());
                }
                Event::ConnectFailed(n, failure) if n == attempt => {
                    let (why, trusted) = match &failure {
                        ConnectFailure::Transient(why) => (why.clone(), true),
                        ConnectFailure::Untrusted(why) => (why.clone(), false),
                    };
                    let state = board.get().state;
                    if why.contains(CERTIFICATE_EXPIRED) {
                        certificate_expired(&board, &orchestrator, &data_dir);
                    } else {
                        let state = if state == State::Enrolling { state } else { State::Offline };
                        board.set(state, format!("cannot reach {orchestrator}: {why}"));
                    }
                    let now = Instant::now();
                    session.handle_connect_failed(failure, now);
                    metrics.emit(&NodeEvent::DialFailed {
                        orchestrator: &orchestrator,
                        failure: if trusted {
                            DialFailure::Unreachable
                        } else {
                            DialFailure::Untrusted
                        },
                        error: &why,
                        retry_in: backoff(&session, now),
                    });
                }
                Event::Msg(n, msg) if n == attempt => {
                    let reject = match &msg {
                        OrchMsg::Reject(r) => Some((r.code, r.message.clone())),
                        // Paced: logged with the wait the session chose from the hint.
                        OrchMsg::Busy(_) => Some((RejectCode::Busy, text("busy"))),
                        _ => None,
                    };
                    if let OrchMsg::Welcome(welcome) = &msg {
                        clock_offset(&board, welcome.time_ms);
                        if let Some(r) = renewal.as_mut() {
                            r.handle_welcome(welcome.time_ms, Instant::now());
                        }
                    }
                    let was_established = session.is_established();
                    let now = Instant::now();
                    session.handle_msg(msg, now);
                    if let Some((code, message)) = reject {
                        let delay = backoff(&session, now);
                        metrics.emit(&NodeEvent::Rejected {
                            orchestrator: &orchestrator,
                            code,
                            message: &message,
                            retry_in: delay,
                        });
                        if code == RejectCode::IdentityConflict {
                            let why = identity_conflict(&orchestrator, &data_dir, delay);
                            warn!(orchestrator = %orchestrator, "{why}");
                            board.set(State::IdentityConflict, why);
                        }
                    }
                    if !was_established && session.is_established() {
                        resync.welcomed();
                        answers.answered();
                        board.set(State::Online, format!("connected to {orchestrator}"));
                        // The orchestrator sends every workload's peer routes after the
                        // welcome; what this node knew may be stale by now.
                        if let Some(proxy) = &proxy {
                            proxy.forget_peers();
                        }
                        if let Some(traffic) = traffic.as_mut() {
                            traffic.session_opened();
                        }
                        let advert = advert(proxy.as_ref(), &config);
                        send_now(&mut current, &NodeMsg::Proxy(advert)).await;
                        // The orchestrator opens streams (logs, cache purges) only on an established
                        // session; the task ends with the connection.
                        if let Some((conn, _)) = &current {
                            tokio::spawn(streams::serve(
                                conn.clone(),
                                workloads.supervisor().clone(),
                                proxy.as_ref().map(|p| p.proxy().cache().clone()),
                            ));
                        }
                        for report in workloads.reports() {
                            send_now(&mut current, &report).await;
                        }
                        send_events(&mut outbox, &mut current, resync.is_done()).await;
                    }
                }
                Event::Closed(n, why) if n == attempt => {
                    let was_established = session.is_established();
                    if let Some(r) = renewal.as_mut() {
                        r.handle_disconnected();
                    }
                    if was_established {
                        info!(reason = %why, "disconnected from orchestrator");
                        board.set(State::Offline, format!("disconnected: {why}"));
                    } else if why.contains(CERTIFICATE_EXPIRED) {
                        certificate_expired(&board, &orchestrator, &data_dir);
                    }
                    current = None;
                    let _ = conn_tx.send(None);
                    resync.disconnected();
                    if let Some(outbox) = outbox.as_mut() {
                        outbox.disconnected();
                    }
                    let now = Instant::now();
                    // Closed while saying hello. (After enrollment the session closes the
                    // link itself and dials again at once: nothing to say.)
                    let saying_hello = session.is_connecting();
                    session.handle_disconnected(now);
                    if saying_hello {
                        metrics.emit(&NodeEvent::DialFailed {
                            orchestrator: &orchestrator,
                            failure: DialFailure::Closed,
                            error: &why,
                            retry_in: backoff(&session, now),
                        });
                    }
                }
                _ => {}
            },
        }
    }
}

/// Serves and reaches peers as `identity`, if the config asks for a peer listener.
async fn serve_peers(
    proxy: &mut NodeProxy,
    identity: &Identity,
    config: &Config,
) -> Result<(), DaemonError> {
    let tls = tls::peer_tls(identity)?;
    if let Some(bound) = proxy.serve_peers(&tls, identity.node_id).await?
        && advertised_peer_addr(bound, config.local_address()).is_none()
    {
        warn!(
            %bound,
            "peers can reach this node only if told where: set orchestrator.local_address, \
             or give proxy.peer_listen an address of its own"
        );
    }
    Ok(())
}

/// The renewal of `cert`, shown on the status board; `None` (never renewed) for a
/// certificate that does not parse, which the orchestrator would refuse anyway.
fn renewal_of(board: &StatusBoard, cert: &[u8]) -> Option<Renewal> {
    let validity = crate::identity::validity(cert);
    board.update(|s| s.certificate_not_after_ms = validity.map(|v| v.not_after_ms));
    if validity.is_none() {
        warn!("the stored certificate does not parse; it will not be renewed");
    }
    validity.map(|v| Renewal::new(v, fastrand::u64(..)))
}

/// A renewal request: a CSR for the key the node already holds (see ARCHITECTURE.md,
/// "Certificates": the key is kept, so one atomic write of `node.crt` renews).
fn renew_request(ids: &IdentityDir, name: &str) -> Result<NodeMsg, IdentityError> {
    let key = ids.key_pair()?;
    let csr = IdentityDir::csr(&key, name)?;
    let csr_der = Der::new(csr).ok_or_else(|| IdentityError::Corrupt {
        path: std::path::PathBuf::from("node.key"),
        reason: "its certificate request is larger than the wire allows".into(),
    })?;
    Ok(NodeMsg::Renew(Box::new(edge_proto::RenewRequest {
        csr_der,
    })))
}

/// What a dial failure or a close says when the orchestrator refused this node's
/// certificate as expired: in TLS ([`refused_as_expired`]), or, for a resumed TLS session,
/// with [`RejectCode::CertificateExpired`].
const CERTIFICATE_EXPIRED: &str = "the orchestrator refused this node's certificate as expired";

/// Whether `e` is the orchestrator's TLS refusing our certificate as expired: the TLS alert
/// `certificate_expired`, which QUIC carries as a crypto error code.
fn refused_as_expired(e: &quinn::ConnectionError) -> bool {
    let expired =
        quinn::TransportErrorCode::crypto(rustls::AlertDescription::CertificateExpired.into());
    matches!(e, quinn::ConnectionError::ConnectionClosed(c) if c.error_code == expired)
}

/// Says, on the status endpoint and in the log, that the orchestrator refused this node's
/// certificate as expired, and what to do.
fn certificate_expired(board: &StatusBoard, orchestrator: &str, data_dir: &std::path::Path) {
    let why = format!(
        "{orchestrator} refused this node's certificate as expired: the node was offline past \
         its end and could not renew it. Enroll the node again: stop edge-node, delete {}, \
         give it a new join token (a join file or [join]) and start it; its workloads keep \
         running meanwhile",
        data_dir.join("identity").display()
    );
    if board.get().state != State::CertificateExpired {
        tracing::error!(orchestrator = %orchestrator, "{why}");
    }
    board.set(State::CertificateExpired, why);
}

/// Where peers reach this node's proxy, as the orchestrator is told after every welcome.
fn advert(proxy: Option<&NodeProxy>, config: &Config) -> ProxyAdvert {
    ProxyAdvert {
        peer: proxy
            .and_then(NodeProxy::peer_addr)
            .and_then(|bound| advertised_peer_addr(bound, config.local_address()))
            .map(PeerAddr::from),
    }
}

/// What the node says, on its status endpoint and in its log, when the orchestrator refused
/// it because another machine holds a live session with its identity.
fn identity_conflict(
    orchestrator: &str,
    data_dir: &std::path::Path,
    retry_in: Option<Duration>,
) -> String {
    let retry = retry_in.map_or_else(String::new, |d| {
        format!("; trying again in {}s", d.as_secs())
    });
    format!(
        "{orchestrator} refused this node: another machine is connected with the same \
         identity. One of the two is a copy (a cloned SD card or data dir): enroll the copy \
         again (stop edge-node there, delete {} and give it a new join token and a name \
         of its own){retry}",
        data_dir.join("identity").display()
    )
}

/// The node's load, as the outbox keeps it: a summary per window always, and each sample
/// taken while there is no session.
struct LoadRecorder {
    window: MetricWindow,
    origin: Instant,
    outbox: Option<crate::outbox::EventOutbox>,
}

impl LoadRecorder {
    fn new(window_secs: u64, outbox: Option<crate::outbox::EventOutbox>) -> Self {
        Self {
            window: MetricWindow::new(Duration::from_secs(window_secs)),
            origin: Instant::now(),
            outbox,
        }
    }

    /// A sample of the load; `offline` is the outbox to record it in when there is no
    /// session.
    fn sampled(
        &mut self,
        status: &edge_proto::Status,
        offline: Option<&crate::outbox::EventOutbox>,
    ) {
        if let Some(outbox) = offline {
            outbox.record_status(status);
        }
        if let (Some(summary), Some(outbox)) = (
            self.window.add(self.origin.elapsed(), status),
            self.outbox.as_ref(),
        ) {
            outbox.record_metrics(summary);
        }
    }
}

/// What the hello says the node holds: its admitted workloads, and its outbox's marks.
fn sync_state(
    workloads: &Workloads,
    outbox: Option<&crate::outbox::EventOutbox>,
) -> edge_proto::SyncState {
    let (applied, complete) = workloads.applied();
    // Without an outbox there is nothing to number: nothing to acknowledge either.
    let marks = outbox.map_or(
        node_core::sync::OutboxMarks {
            next: 0,
            oldest: 0,
            fresh: true,
        },
        crate::outbox::EventOutbox::marks,
    );
    node_core::sync::state(
        applied
            .iter()
            .map(|(name, generation)| (name.as_str(), *generation)),
        complete,
        marks,
    )
}

/// Sends the outbox's next batches of events, as many as its window lets go: only on an
/// established session (before the welcome the orchestrator takes nothing else).
async fn send_events(
    outbox: &mut Option<crate::outbox::EventOutbox>,
    current: &mut Option<(quinn::Connection, quinn::SendStream)>,
    established: bool,
) {
    if current.is_none() || !established {
        return;
    }
    while let Some(batch) = outbox.as_mut().and_then(|o| o.next_batch()) {
        send_now(current, &batch).await;
    }
}

/// Resolves at `until`, or never.
async fn paced(until: Option<std::time::Instant>) {
    match until {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// How far this node's wall clock may be from the orchestrator's before the node says so.
const CLOCK_TOLERANCE_MS: i64 = 10_000;

/// Learns how far this node's clock is from the orchestrator's, which welcomed it at
/// `orchestrator_ms`: shown on the status endpoint and in `edge_node_clock_offset_seconds`,
/// and a warning past the tolerance (a board without a real-time clock boots with the last
/// time it saved).
fn clock_offset(board: &StatusBoard, orchestrator_ms: u64) {
    let ours = i64::try_from(crate::outbox::now_ms()).unwrap_or(i64::MAX);
    let offset_ms = i64::try_from(orchestrator_ms)
        .unwrap_or(i64::MAX)
        .saturating_sub(ours);
    board.update(|s| s.clock_offset_ms = Some(offset_ms));
    board.metrics().clock_offset(offset_ms / 1000);
    if offset_ms.unsigned_abs() > CLOCK_TOLERANCE_MS.unsigned_abs() {
        warn!(
            offset_secs = offset_ms / 1000,
            "this node's clock is off from the orchestrator's (the offset is the orchestrator's \
             time minus ours); certificates were checked as of their start, durations use the \
             monotonic clock"
        );
    } else {
        debug!(offset_ms, "clock offset from the orchestrator");
    }
}

fn backoff(session: &NodeSession, now: Instant) -> Option<Duration> {
    let wait = session.retry_at()?.saturating_duration_since(now);
    Some(Duration::from_millis(
        u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
    ))
}

/// Writes `msg` on the current control stream, if there is one.
async fn send_now(current: &mut Option<(quinn::Connection, quinn::SendStream)>, msg: &NodeMsg) {
    if let Some((_, send)) = current.as_mut()
        && let Err(e) = write_msg(send, msg).await
    {
        debug!(error = %e, "send failed");
    }
}

fn client_endpoint(config: &Config) -> Result<quinn::Endpoint, DaemonError> {
    let local = config
        .local_address()
        .unwrap_or(match config.orchestrator().host() {
            Host::Ip(IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        });
    quinn::Endpoint::client(SocketAddr::new(local, 0)).map_err(DaemonError::Socket)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

async fn dial(
    endpoint: quinn::Endpoint,
    host: Host,
    port: u16,
    tls: quinn::ClientConfig,
    attempt: u64,
    tx: mpsc::Sender<Event>,
) {
    let event = match connect(&endpoint, &host, port, tls).await {
        Ok((conn, send, recv)) => Event::Connected(attempt, conn, send, recv),
        Err(failure) => Event::ConnectFailed(attempt, failure),
    };
    let _ = tx.send(event).await;
}

async fn connect(
    endpoint: &quinn::Endpoint,
    host: &Host,
    port: u16,
    tls: quinn::ClientConfig,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), ConnectFailure> {
    let addr = resolve(host, port).await?;
    let connecting = endpoint
        .connect_with(tls, addr, tls::server_name())
        .map_err(|e| ConnectFailure::Transient(e.to_string()))?;
    let conn = connecting.await.map_err(classify)?;
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| ConnectFailure::Transient(e.to_string()))?;
    Ok((conn, send, recv))
}

fn classify(e: quinn::ConnectionError) -> ConnectFailure {
    let text = e.to_string();
    if refused_as_expired(&e) {
        ConnectFailure::Transient(format!("{CERTIFICATE_EXPIRED} ({text})"))
    } else if text.contains(PIN_MISMATCH) || text.contains("invalid peer certificate") {
        ConnectFailure::Untrusted(text)
    } else {
        ConnectFailure::Transient(text)
    }
}

async fn resolve(host: &Host, port: u16) -> Result<SocketAddr, ConnectFailure> {
    match host {
        Host::Ip(ip) => Ok(SocketAddr::new(*ip, port)),
        Host::Dns(name) => tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|e| ConnectFailure::Transient(format!("resolving {name}: {e}")))?
            .next()
            .ok_or_else(|| ConnectFailure::Transient(format!("{name} has no address"))),
    }
}

/// Reads the orchestrator's frames until the stream or the connection ends, then reports why.
async fn read_loop(
    conn: quinn::Connection,
    mut recv: quinn::RecvStream,
    attempt: u64,
    tx: mpsc::Sender<Event>,
) {
    let why = loop {
        match read_frame(&mut recv).await {
            Ok(Some(body)) => match decode::<OrchMsg>(&body) {
                Ok(msg) => {
                    if tx.send(Event::Msg(attempt, msg)).await.is_err() {
                        return;
                    }
                }
                Err(e) => break format!("orchestrator sent a bad frame: {e}"),
            },
            Ok(None) => break close_reason(&conn.closed().await),
            Err(ReadError::Decode(e)) => break format!("orchestrator sent a bad frame: {e}"),
            Err(ReadError::Stream(_)) => break close_reason(&conn.closed().await),
        }
    };
    conn.close(0u32.into(), b"");
    let _ = tx.send(Event::Closed(attempt, why)).await;
}

fn close_reason(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            let code = c.error_code.into_inner();
            let reason = String::from_utf8_lossy(&c.reason);
            match RejectCode::from_close_code(code) {
                // A resumed TLS session with a certificate that has ended since.
                Some(RejectCode::CertificateExpired) => format!("{CERTIFICATE_EXPIRED} ({reason})"),
                Some(rc) => format!("closed by orchestrator ({rc}): {reason}"),
                None => format!("closed by orchestrator: {reason}"),
            }
        }
        other if refused_as_expired(other) => format!("{CERTIFICATE_EXPIRED} ({other})"),
        other => other.to_string(),
    }
}
