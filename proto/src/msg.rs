//! The messages. Field and variant order is the wire format: append only.

use crate::bounded::{Seq, Str};
use crate::frame::MAX_FRAME_LEN;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

/// A string of at most `N` bytes; longer on the wire is a decode error.
pub type Text<const N: usize> = heapless::String<N>;

/// The longest node or workload name on the wire, in bytes: a DNS label. The rules in
/// [`crate::field`] keep names ASCII, so this is also their length in characters.
pub const MAX_NAME_LEN: usize = 63;
/// A list of at most `N` items; longer on the wire is a decode error.
pub type List<T, const N: usize> = heapless::Vec<T, N>;

/// Copies `s` into a [`Text`], cutting it at the last character boundary that fits.
/// For values we report (a CPU model, a hostname), where a shortened value beats none.
pub fn text<const N: usize>(s: &str) -> Text<N> {
    let mut out = Text::new();
    // Invariant: `char_floor` is at most `N`, so this fits.
    let _ = out.push_str(&s[..char_floor(s, N)]);
    out
}

/// Bytes of at most `N` length, for DER blobs. The length is checked before allocation.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Blob<const N: usize>(Vec<u8>);

impl<const N: usize> Blob<N> {
    /// `None` if `bytes` is longer than `N`.
    pub fn new(bytes: Vec<u8>) -> Option<Self> {
        (bytes.len() <= N).then_some(Self(bytes))
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

impl<const N: usize> fmt::Debug for Blob<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

impl<const N: usize> Serialize for Blob<N> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de, const N: usize> Deserialize<'de> for Blob<N> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const N: usize>;
        impl<'de, const N: usize> serde::de::Visitor<'de> for V<N> {
            type Value = Blob<N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "at most {N} bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob<N>, E> {
                if v.len() > N {
                    return Err(E::invalid_length(v.len(), &self));
                }
                Ok(Blob(v.to_vec()))
            }
        }
        d.deserialize_bytes(V::<N>)
    }
}

/// A DER certificate or CSR. Ours are ~500 bytes; 8 KiB leaves room for any sane chain member.
pub type Der = Blob<8192>;

/// A node's identity: 16 random bytes chosen by the orchestrator at enrollment and written into
/// the node's certificate. Shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 16]);

impl NodeId {
    /// Parses 32 hex digits, either case.
    pub fn parse(s: &str) -> Option<Self> {
        crate::digest::decode_hex(s).map(Self)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&crate::digest::Hex(&self.0), f)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

/// What the node wants from this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Intent {
    /// First contact: redeem a join token for a certificate. The connection has no client
    /// certificate.
    Enroll,
    /// A session of an enrolled node, authenticated by its client certificate.
    Session,
}

/// The first frame a node sends on every connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol versions the node speaks.
    pub versions: List<u16, 8>,
    pub intent: Intent,
    /// The id the node believes it has. For a session it must equal the id in its certificate;
    /// the orchestrator trusts only the certificate and rejects a mismatch.
    pub node_id: Option<NodeId>,
    /// Software and version, e.g. `edge-node/0.1.0`.
    pub agent: Text<64>,
    /// What an enrolled node has applied and what its outbox holds, so that the orchestrator
    /// sends only what changed since. `None` (an enrollment, or a node that cannot say):
    /// the orchestrator answers with a snapshot. Boxed: the list is large.
    pub sync: Option<Box<SyncState>>,
}

/// What a node says at hello about the state it has: the workloads it holds, each at the
/// generation it admitted, and its outbox's sequence numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    pub applied: List<Applied, { SyncState::MAX_APPLIED }>,
    /// `applied` is everything the node holds. `false` when it holds more than the list
    /// takes, or runs something whose generation it lost: the orchestrator answers with a
    /// snapshot.
    pub complete: bool,
    /// The sequence number the node's outbox gives next.
    pub outbox_next: u64,
    /// The lowest sequence number the outbox still holds unacknowledged (`outbox_next`
    /// when it holds none).
    pub outbox_oldest: u64,
    /// The outbox numbers from scratch (its log was made anew, a first start or a lost
    /// one): its numbers may be ones the orchestrator holds from before, so none of them is
    /// acknowledged by number at the sync, and [`Synced::events_through`] places it after.
    pub outbox_fresh: bool,
}

impl SyncState {
    /// The most workloads a hello lists; a node holding more says `complete: false`.
    pub const MAX_APPLIED: usize = 128;
}

/// A workload a node holds, at the generation it admitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub workload: Text<MAX_NAME_LEN>,
    pub generation: u64,
}

/// A join request: token, CSR and what the node is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The join token, `ID.SECRET`.
    pub token: Text<64>,
    /// The node's name, unique in the fleet.
    pub name: Text<MAX_NAME_LEN>,
    /// A PKCS#10 request for the node's own key; the private key never leaves the node.
    pub csr_der: Der,
    pub capabilities: Capabilities,
}

/// Node to orchestrator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeMsg {
    Hello(Hello),
    /// Boxed to keep the enum small; a box encodes as what it holds.
    Enroll(Box<EnrollRequest>),
    /// What the node is; sent after every `Welcome` and whenever it changes.
    Capabilities(Box<Capabilities>),
    /// Live load, every status interval.
    Status(Status),
    /// How the node enforces workload limits and what it runs; sent after every `Welcome`.
    /// Boxed to keep the enum small.
    Runtime(Box<RuntimeInfo>),
    /// The answer to an [`OrchMsg::Assign`].
    Admission(Box<AdmissionReply>),
    /// A workload instance changed state.
    Workload(Box<WorkloadReport>),
    /// Where peers reach this node's proxy; sent after every `Welcome` and when it changes.
    Proxy(ProxyAdvert),
    /// What the node's proxy counted, by route; with the status reports, when it changed.
    Traffic(Box<crate::TrafficReport>),
    /// Events from the node's outbox, answered by [`OrchMsg::EventsStored`].
    Events(Box<crate::EventBatch>),
    /// A new certificate for the key the session's certificate holds, asked for on an
    /// established session, answered by [`OrchMsg::Renewed`] or [`OrchMsg::RenewRefused`].
    /// It names no node: the certificate is for the node the session belongs to.
    Renew(Box<RenewRequest>),
    /// The certificate of an [`OrchMsg::Renewed`] is stored: the node dials with it from now
    /// on. During a CA rotation this is what counts the node as moved to the new CA, so that a
    /// node whose disk refused the certificate is not locked out when the old CA goes.
    CertificateStored(Box<CertificateStored>),
}

/// The certificate a node stored, whole: the orchestrator checks who signed it and whom it
/// names rather than take the node's word.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificateStored {
    pub cert_der: Der,
}

/// A node's request for a new certificate before its own expires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenewRequest {
    /// A PKCS#10 request for the key of the certificate the session was opened with. The
    /// orchestrator takes only its public key, and refuses one for any other key.
    pub csr_der: Der,
}

/// A renewed certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Renewed {
    /// The node's new certificate, for the node id of the session.
    pub cert_der: Der,
    /// The CAs the node trusts from now on: the one that signed `cert_der` first, then,
    /// while the CA is being rotated, the other.
    pub trust: List<Der, { Renewed::MAX_TRUST }>,
}

impl Renewed {
    /// CAs in a trust bundle: the current one and, during a rotation, the other.
    pub const MAX_TRUST: usize = 2;
}

/// Why a renewal was refused. The session goes on either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RenewRefusal {
    /// The CSR does not parse, or its signature does not check: the node's fault.
    BadCsr,
    /// The CSR is for another key than the session's certificate holds.
    KeyMismatch,
    /// The orchestrator failed; ask again later.
    Internal,
}

impl RenewRefusal {
    /// A stable snake_case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadCsr => "bad_csr",
            Self::KeyMismatch => "key_mismatch",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for RenewRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to a [`NodeMsg::Renew`] the orchestrator would not sign.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenewRefused {
    pub reason: RenewRefusal,
    pub message: Text<256>,
}

/// The orchestrator accepted a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The negotiated version.
    pub version: u16,
    /// The id taken from the node's certificate.
    pub node_id: NodeId,
    /// The orchestrator's wall clock as it welcomed the node, in milliseconds since the Unix
    /// epoch: how a node without a real-time clock learns how far off its own is.
    pub time_ms: u64,
}

/// The node's certificate, issued for its CSR.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enrolled {
    pub node_id: NodeId,
    pub cert_der: Der,
    /// The CA that signs the orchestrator's and every node's certificate.
    pub ca_der: Der,
}

/// Why the orchestrator refused. Sent before it closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectCode {
    /// No common protocol version.
    UnsupportedVersion,
    /// The join token does not exist or its secret is wrong.
    BadToken,
    TokenExpired,
    /// The token's uses are all spent.
    TokenSpent,
    /// Another node already has this name.
    NameTaken,
    /// The message claims a node id other than the certificate's.
    IdentityMismatch,
    /// The certificate names a node the orchestrator does not know (deleted, or another fleet).
    UnknownNode,
    /// Enrollment needs a connection without a client certificate, a session needs one.
    WrongIntent,
    /// A frame that does not decode, or a message out of order.
    Malformed,
    /// The CSR is not a valid, self-signed PKCS#10 request.
    BadCsr,
    /// The orchestrator failed; try again later.
    Internal,
    /// The first frame did not arrive in time.
    Timeout,
    /// Another connection holds a live session as this node: its identity is on two machines
    /// (a copied SD card or data dir). Retrying can succeed once the other one is gone, so
    /// the node retries, but only minutes later; the clone must be enrolled again.
    IdentityConflict,
    /// Too many nodes are saying hello at once: come back later. The orchestrator sends
    /// [`OrchMsg::Busy`] with how much later before it closes with this code.
    Busy,
    /// The node's certificate has ended. A full handshake refuses it in TLS already; this
    /// is the refusal of a resumed TLS session, which checks no certificate. The node must
    /// enroll again.
    CertificateExpired,
}

impl RejectCode {
    /// Whether trying again unchanged can succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Self::Internal | Self::Timeout | Self::Malformed | Self::IdentityConflict | Self::Busy
        )
    }

    /// Every code, in wire order.
    pub const ALL: [RejectCode; 15] = [
        Self::UnsupportedVersion,
        Self::BadToken,
        Self::TokenExpired,
        Self::TokenSpent,
        Self::NameTaken,
        Self::IdentityMismatch,
        Self::UnknownNode,
        Self::WrongIntent,
        Self::Malformed,
        Self::BadCsr,
        Self::Internal,
        Self::Timeout,
        Self::IdentityConflict,
        Self::Busy,
        Self::CertificateExpired,
    ];

    /// The QUIC application close code that carries this reject: its position plus one, since
    /// 0 is a normal close.
    pub fn close_code(self) -> u32 {
        self as u32 + 1
    }

    /// The reject a close code carries, `None` for a normal close or a code we do not know.
    pub fn from_close_code(code: u64) -> Option<Self> {
        let index = usize::try_from(code.checked_sub(1)?).ok()?;
        Self::ALL.get(index).copied()
    }

    /// A stable snake_case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnsupportedVersion => "unsupported_version",
            Self::BadToken => "bad_token",
            Self::TokenExpired => "token_expired",
            Self::TokenSpent => "token_spent",
            Self::NameTaken => "name_taken",
            Self::IdentityMismatch => "identity_mismatch",
            Self::UnknownNode => "unknown_node",
            Self::WrongIntent => "wrong_intent",
            Self::Malformed => "malformed",
            Self::BadCsr => "bad_csr",
            Self::Internal => "internal",
            Self::Timeout => "timeout",
            Self::IdentityConflict => "identity_conflict",
            Self::Busy => "busy",
            Self::CertificateExpired => "certificate_expired",
        }
    }
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reject {
    pub code: RejectCode,
    pub message: Text<256>,
}

/// Orchestrator to node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrchMsg {
    Welcome(Welcome),
    Enrolled(Enrolled),
    Reject(Reject),
    /// Run this workload here (or replace the running one with this spec).
    Assign(Box<Assignment>),
    /// Stop this workload and forget it.
    Unassign(Unassign),
    /// Where an exposed workload runs in the fleet: replaces what the node knew of it.
    Routes(Box<WorkloadRoutes>),
    /// The workload is no longer exposed (deleted, or its spec has no routes any more).
    Unroute(Unroute),
    /// The orchestrator stored these events: the node may forget them. Boxed to keep the
    /// enum small.
    EventsStored(Box<crate::EventsStored>),
    /// The answer to a hello the orchestrator cannot take now (too many nodes are reconnecting
    /// at once): dial again no sooner than `retry_after_ms`. The connection then closes with
    /// [`RejectCode::Busy`]'s close code.
    Busy(Busy),
    /// The end of the sync that follows a welcome: every `Assign` and `Unassign` the
    /// node's [`SyncState`] called for, and the acknowledgements of events already stored,
    /// came before it.
    Synced(Synced),
    /// The answer to a [`NodeMsg::Renew`]: the node's new certificate and the CAs to trust.
    Renewed(Box<Renewed>),
    /// A [`NodeMsg::Renew`] refused; nothing else about the session changes.
    RenewRefused(Box<RenewRefused>),
    /// The model the fleet uses for a purpose: the node fetches it like an artifact (by
    /// digest, resumable, hash-verified) and uses it in place of the one it had. Sent after
    /// the node's [`NodeMsg::Runtime`] when the node's model reader runs every operator the
    /// model uses, and to every such node when an operator pushes a new one.
    Model(Box<FleetModel>),
}

/// One of the fleet's models, as a node fetches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetModel {
    pub purpose: ModelPurpose,
    /// sha256 of the model's bytes: what the node fetches it by and checks it against.
    pub digest: [u8; 32],
    pub size: u64,
}

/// What a fleet model is for on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelPurpose {
    /// The proxy's choice among a route's backends.
    Route,
    /// When a workload that scales to zero starts before a request (pre-warming).
    Warm,
}

impl ModelPurpose {
    /// The first protocol version whose nodes can decode an offer of a model of this
    /// purpose: a node that negotiated an older one is never offered it.
    pub const fn since(self) -> u16 {
        match self {
            Self::Route => 1,
            Self::Warm => 2,
        }
    }
}

/// How the orchestrator answered a node's [`SyncState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Synced {
    pub mode: SyncMode,
    /// How many `Assign`s and `Unassign`s the sync sent.
    pub assigned: u32,
    pub unassigned: u32,
    /// The highest sequence number of this node's outbox the orchestrator holds. A node
    /// whose outbox would number at or below it (it lost its outbox) numbers above it.
    pub events_through: Option<u64>,
}

/// Whether a sync sent changes or everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMode {
    /// Only what differs from what the node said it applied.
    Changes,
    /// Every assignment the node holds: whatever else it runs, it stops.
    Snapshot,
}

/// When a node refused with [`OrchMsg::Busy`] may come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Busy {
    /// Milliseconds from receipt before the node dials again. The orchestrator spreads these
    /// over the nodes it turns away, so they do not all return at the same instant.
    pub retry_after_ms: u32,
}

/// A device that can speed up or feed a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AcceleratorKind {
    Gpu,
    /// NPU or TPU: a neural-network accelerator.
    Npu,
    /// A video codec or camera device.
    Video,
    Gpio,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accelerator {
    pub kind: AcceleratorKind,
    /// What the system calls it, e.g. `Hailo-8`, `v3d`, `gpiochip0`.
    pub name: Text<64>,
    /// Where it is, e.g. `/dev/dri/renderD128`.
    pub path: Text<96>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub key: Text<{ Label::MAX_KEY_LEN }>,
    pub value: Text<{ Label::MAX_VALUE_BYTES }>,
}

impl Label {
    /// The longest key, in bytes. Keys are ASCII ([`crate::field::check_label_key`]), so this
    /// is also their length in characters.
    pub const MAX_KEY_LEN: usize = 63;
    /// The longest value, in bytes.
    pub const MAX_VALUE_BYTES: usize = 63;
}

/// Where the node is, in WGS84 degrees and metres above sea level.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
    pub alt_m: Option<f64>,
}

impl Location {
    /// The bound of `lat`, in degrees either side of the equator.
    pub const MAX_LAT: f64 = 90.0;
    /// The bound of `lon`, in degrees either side of the prime meridian.
    pub const MAX_LON: f64 = 180.0;

    /// Whether the coordinates are on the globe.
    pub fn is_valid(&self) -> bool {
        (-Self::MAX_LAT..=Self::MAX_LAT).contains(&self.lat)
            && (-Self::MAX_LON..=Self::MAX_LON).contains(&self.lon)
            && self.alt_m.is_none_or(f64::is_finite)
    }
}

/// Where the node is now, as its location source says: a GNSS receiver (through gpsd) or
/// the fixed point of its config.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LocationReport {
    /// The fix's position; without a fix, the last one the receiver had (`fix_ms` says how
    /// old), or the configured point with [`LocationSource::Fixed`].
    pub location: Location,
    pub source: LocationSource,
    pub quality: FixQuality,
    /// The horizontal error in metres, as the receiver estimates it; `None` when it does not.
    pub accuracy_m: Option<f32>,
    /// When the receiver took the fix, in milliseconds since the Unix epoch on its (GNSS)
    /// clock; `None` for a fixed point.
    pub fix_ms: Option<u64>,
}

impl LocationReport {
    /// Whether the position is on the globe and the accuracy a distance.
    pub fn is_valid(&self) -> bool {
        self.location.is_valid() && self.accuracy_m.is_none_or(|a| a.is_finite() && a >= 0.0)
    }
}

/// Where a node's location comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LocationSource {
    /// The config's `location = { lat, lon }`, or its fallback while a receiver has no fix.
    Fixed,
    /// A GNSS receiver, through gpsd.
    Gpsd,
}

impl LocationSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fixed => "fixed",
            Self::Gpsd => "gpsd",
        }
    }
}

/// How good a receiver's fix is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FixQuality {
    /// No fix: the position is an older one, or a fixed point.
    None,
    /// Latitude and longitude.
    TwoD,
    /// Latitude, longitude and altitude.
    ThreeD,
}

impl FixQuality {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::TwoD => "2d",
            Self::ThreeD => "3d",
        }
    }
}

/// What a node is: sent at enrollment, after every `Welcome`, and when it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// `x86_64`, `aarch64`, `arm`, ...
    pub arch: Text<16>,
    /// `linux`.
    pub os: Text<32>,
    /// Distribution and release, e.g. `Debian GNU/Linux 12 (bookworm)`.
    pub os_version: Text<64>,
    pub kernel: Text<64>,
    pub hostname: Text<64>,
    pub cpus: u16,
    pub cpu_model: Text<96>,
    pub memory_bytes: u64,
    /// Size of the filesystem that holds the node's data dir.
    pub disk_bytes: u64,
    pub disk_free_bytes: u64,
    pub accelerators: List<Accelerator, 16>,
    /// The board model where the firmware names it, e.g. `Raspberry Pi Zero 2 W Rev 1.0`.
    pub board: Option<Text<96>>,
    pub labels: List<Label, { Capabilities::MAX_LABELS }>,
    pub location: Option<Location>,
}

impl Capabilities {
    /// The most labels a node carries.
    pub const MAX_LABELS: usize = 32;
}

/// Live load, sent every status interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// CPU busy over the last interval, 0.0 to 100.0 for the whole machine.
    pub cpu_percent: f32,
    pub memory_used_bytes: u64,
    pub disk_free_bytes: u64,
    pub uptime_secs: u64,
}

/// How a node enforces workload limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LimitsKind {
    /// cgroup v2: memory and CPU.
    CgroupV2,
    /// cgroup v1: memory and CPU.
    CgroupV1,
    /// Address-space rlimit only: memory, no CPU limit.
    Rlimit,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    pub limits: LimitsKind,
    /// The OCI runtimes the node can run containers with (`runc`, `crun`), best first; empty:
    /// no containers here.
    pub container_runtimes: List<Text<16>, { RuntimeInfo::MAX_RUNTIMES }>,
    /// The ONNX operators the node's model reader runs; empty: the node runs no models.
    pub model_operators: List<Text<16>, { RuntimeInfo::MAX_MODEL_OPERATORS }>,
}

impl RuntimeInfo {
    pub const MAX_RUNTIMES: usize = 4;
    pub const MAX_MODEL_OPERATORS: usize = 64;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthCheck {
    Http {
        port: u16,
        path: Str<1024>,
    },
    Tcp {
        port: u16,
    },
    Exec {
        command: Str<255>,
        args: Seq<Str<1024>, 16>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthProbe {
    pub check: HealthCheck,
    pub interval_secs: u32,
    pub timeout_secs: u32,
    pub success_threshold: u8,
    pub failure_threshold: u8,
}

/// A workload the orchestrator wants on this node: the whole desired state for that name.
/// The encoded message must fit one frame; the orchestrator checks before it sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub workload: Text<MAX_NAME_LEN>,
    pub version: Text<64>,
    /// Grows with every change of the workload; reports name the generation they describe.
    pub generation: u64,
    /// sha256 of the executable.
    pub artifact: [u8; 32],
    pub artifact_size: u64,
    pub args: Seq<Str<4096>, 64>,
    pub env: Seq<(Str<128>, Str<4096>), 64>,
    pub working_dir: Option<Str<1024>>,
    pub cpu_millis: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub disk_bytes: Option<u64>,
    pub restart: RestartPolicy,
    pub health: Option<HealthProbe>,
    /// The routes the node's proxy sends to this workload's instance.
    pub expose: Seq<Expose, { Assignment::MAX_EXPOSE }>,
    /// Stop the instance after this long without a request through the proxy, and start it
    /// again on the next one. `None`: it runs all the time.
    pub scale_to_zero_idle_secs: Option<u32>,
    /// A container (`driver = "oci"`): `artifact` is then the image's digest, and this what
    /// the orchestrator learnt of each of its platforms when it was pushed. `None`: `artifact`
    /// is an executable.
    pub image: Option<Image>,
}

/// A container image as a node needs it to decide and to fetch: one entry per architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub platforms: Seq<ImagePlatform, { Image::MAX_PLATFORMS }>,
    /// The spec allows setuid and setgid files in the layers; without it a node refuses a
    /// layer that holds one.
    pub allow_setuid: bool,
    /// The spec asks for a read-only root: no writable layer.
    pub read_only_root: bool,
}

impl Image {
    /// The most platforms an image carries.
    pub const MAX_PLATFORMS: usize = 8;
}

/// One platform of an image: a node whose architecture is `arch` fetches `manifest` (by its
/// digest, like any artifact), then the config and layers it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePlatform {
    /// The node's name for it: `x86_64`, `aarch64`, `arm`.
    pub arch: Text<16>,
    /// sha256 of the platform's manifest.
    pub manifest: [u8; 32],
    pub manifest_size: u64,
    /// The config and the compressed layers: the most the node downloads.
    pub download_bytes: u64,
    /// The layers unpacked: the most the node's layer cache grows by.
    pub unpacked_bytes: u64,
}

impl Assignment {
    /// The most routes one workload exposes.
    pub const MAX_EXPOSE: usize = 16;
}

/// One route of the node's proxy to a workload's port: requests for `host` (any host when
/// `None`) whose path starts with `path_prefix` (any path when `None`; never both `None`)
/// go to the instance on this node at `port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expose {
    pub port: u16,
    /// A DNS name in lower case, or an IP address in its canonical form.
    pub host: Option<Str<{ Expose::MAX_HOST_LEN }>>,
    pub path_prefix: Option<Str<{ Expose::MAX_PATH_PREFIX_BYTES }>>,
    /// This route's share of requests among the workloads that expose the same host and
    /// path prefix (a canary split), 0 to 1000.
    pub weight: u16,
    /// How long one attempt may take, to the answer's head.
    pub timeout_secs: u32,
    /// How many times a failed idempotent request is tried again.
    pub retries: u8,
    /// Whether answers may be cached.
    pub cache: bool,
    /// How long a cached answer may be served stale while the instance cannot answer; 0: never.
    pub stale_if_offline_secs: u32,
    pub balance: Balance,
}

impl Expose {
    /// The longest host name (RFC 1123), in bytes.
    pub const MAX_HOST_LEN: usize = 253;
    /// The longest path prefix, in bytes.
    pub const MAX_PATH_PREFIX_BYTES: usize = 1024;
}

/// How the proxy picks among the backends of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Balance {
    /// Two random choices, the one with the lower peak-EWMA latency wins.
    PeakEwma,
    RoundRobin,
    /// The backend with the fewest requests in flight.
    LeastRequests,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unassign {
    pub workload: Text<MAX_NAME_LEN>,
}

/// The node's own check of an assignment against its actual free memory and disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionReply {
    pub workload: Text<MAX_NAME_LEN>,
    pub generation: u64,
    /// `None` if admitted, else why not.
    pub rejected: Option<Text<256>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadState {
    Pending,
    Downloading,
    Starting,
    Running,
    Unhealthy,
    Backoff,
    Failed,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadReport {
    pub workload: Text<MAX_NAME_LEN>,
    pub generation: u64,
    pub state: WorkloadState,
    pub restarts: u32,
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
    pub message: Text<256>,
}

/// The first frame on every stream a node opens after the control stream: what it is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamOpen {
    /// Send me this artifact from `offset` on.
    Artifact(ArtifactRequest),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRequest {
    /// sha256 of the whole artifact.
    pub digest: [u8; 32],
    /// Bytes the node already has; the transfer resumes here.
    pub offset: u64,
}

/// The orchestrator's answer on an artifact stream. After `Sending`, the rest of the stream is
/// the artifact's bytes from `offset` to `size`, then the stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArtifactReply {
    Sending {
        size: u64,
        offset: u64,
    },
    NotFound,
    /// The offset is past the end.
    BadOffset {
        size: u64,
    },
}

/// The first frame on every stream the orchestrator opens on a node's connection: what it is
/// for. Streams the node opens start with a [`StreamOpen`] instead; the direction is in the
/// type, as with [`NodeMsg`] and [`OrchMsg`], so neither side can be asked for what only the
/// other serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrchStreamOpen {
    /// Send me this workload's log.
    Logs(LogsRequest),
    /// Remove what this names from your proxy's cache; answered by one
    /// [`PurgeReply`](crate::PurgeReply), then the stream ends.
    Purge(crate::PurgeRequest),
}

/// What the orchestrator wants of a workload's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsRequest {
    pub workload: Text<MAX_NAME_LEN>,
    /// How many of the latest lines to send first. The node keeps a bounded tail in memory
    /// and sends at most what it has.
    pub tail_lines: u32,
    /// After the tail, keep sending lines as the workload prints them, until the orchestrator
    /// stops reading, the connection ends or the workload is removed.
    pub follow: bool,
}

/// The node's first frame on a logs stream. After `Streaming` come [`LogLines`] frames until
/// the node finishes the stream; after `NotFound` the stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogsReply {
    Streaming,
    /// The node runs no workload by that name.
    NotFound,
}

/// Lines of a workload's output, oldest first, without their newlines. stdout and stderr are
/// interleaved as the node read them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LogLines {
    pub lines: Seq<Str<{ LogLines::MAX_LINE_BYTES }>, { LogLines::MAX_LINES }>,
}

impl LogLines {
    /// The longest line on the wire; a longer one is cut to this, at a character boundary.
    pub const MAX_LINE_BYTES: usize = 4096;
    /// The most lines in one frame. The frame limit usually binds first: 256 full-length
    /// lines would be 1 MiB.
    pub const MAX_LINES: usize = 256;

    /// Packs `lines` into as few frames' worth as fit, in order: each result has at most
    /// [`MAX_LINES`](Self::MAX_LINES) lines and encodes within [`MAX_FRAME_LEN`]. A line over
    /// [`MAX_LINE_BYTES`](Self::MAX_LINE_BYTES) is cut to fit.
    pub fn pack(lines: impl IntoIterator<Item = String>) -> Vec<LogLines> {
        // The count prefix of a list of at most 256 items is at most 2 bytes.
        const COUNT_PREFIX: usize = varint_len(LogLines::MAX_LINES);
        let mut out = Vec::new();
        let mut batch: Vec<Str<{ Self::MAX_LINE_BYTES }>> = Vec::new();
        let mut size = COUNT_PREFIX;
        for mut line in lines {
            line.truncate(char_floor(&line, Self::MAX_LINE_BYTES));
            let cost = varint_len(line.len()) + line.len();
            if batch.len() == Self::MAX_LINES || size + cost > MAX_FRAME_LEN {
                out.push(Self::from_batch(core::mem::take(&mut batch)));
                size = COUNT_PREFIX;
            }
            size += cost;
            // Invariant: cut to MAX_LINE_BYTES above, so this is always `Some`.
            if let Some(line) = Str::new(line) {
                batch.push(line);
            }
        }
        if !batch.is_empty() {
            out.push(Self::from_batch(batch));
        }
        out
    }

    fn from_batch(batch: Vec<Str<{ Self::MAX_LINE_BYTES }>>) -> Self {
        Self {
            // Invariant: `pack` starts a new batch before one passes MAX_LINES.
            lines: Seq::new(batch).unwrap_or_default(),
        }
    }
}

/// Where peers reach a node's proxy over TLS, as the node advertises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyAdvert {
    /// `None`: the node has no peer listener, so no other node can route to it.
    pub peer: Option<PeerAddr>,
}

/// An IP address and port a peer dials. Its own type, not `SocketAddr`, so that the wire
/// never depends on how a platform's socket types serialize; [`From`] converts both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PeerAddr {
    pub ip: IpBytes,
    pub port: u16,
}

/// An IP address in network byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IpBytes {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl From<core::net::IpAddr> for IpBytes {
    fn from(ip: core::net::IpAddr) -> Self {
        match ip {
            core::net::IpAddr::V4(v4) => Self::V4(v4.octets()),
            core::net::IpAddr::V6(v6) => Self::V6(v6.octets()),
        }
    }
}

impl From<IpBytes> for core::net::IpAddr {
    fn from(ip: IpBytes) -> Self {
        match ip {
            IpBytes::V4(b) => core::net::Ipv4Addr::from(b).into(),
            IpBytes::V6(b) => core::net::Ipv6Addr::from(b).into(),
        }
    }
}

/// An IPv6 scope id and flow label do not cross the wire: a peer in another host's
/// link-local scope could not use them.
impl From<core::net::SocketAddr> for PeerAddr {
    fn from(addr: core::net::SocketAddr) -> Self {
        Self {
            ip: addr.ip().into(),
            port: addr.port(),
        }
    }
}

impl From<PeerAddr> for core::net::SocketAddr {
    fn from(addr: PeerAddr) -> Self {
        Self::new(addr.ip.into(), addr.port)
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&core::net::SocketAddr::from(*self), f)
    }
}

/// Everything a node needs to route to one exposed workload on other nodes. Replaces what
/// the node knew of that workload. Its bounds keep the largest one within a frame (about
/// 25 KiB: sixteen routes of the longest host and prefix, 64 instances), which a test pins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadRoutes {
    pub workload: Text<MAX_NAME_LEN>,
    /// The workload's generation these routes belong to.
    pub generation: u64,
    /// The workload's routes, as its assignment carries them.
    pub expose: Seq<Expose, { Assignment::MAX_EXPOSE }>,
    /// The instances that serve: `Running` on an online node that advertised a peer
    /// address. A node skips the one that is itself.
    pub instances: Seq<PeerInstance, { WorkloadRoutes::MAX_INSTANCES }>,
}

impl WorkloadRoutes {
    /// The most instances one routes message lists.
    pub const MAX_INSTANCES: usize = 64;
}

/// One instance of a workload, as another node reaches it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInstance {
    pub node: NodeId,
    /// The node's peer listener, from its [`ProxyAdvert`].
    pub peer: PeerAddr,
    /// Where the node is, from its capabilities; `None` if it did not say.
    pub location: Option<Location>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unroute {
    pub workload: Text<MAX_NAME_LEN>,
}

/// The largest index `<= max` that is a character boundary of `s`.
fn char_floor(s: &str, max: usize) -> usize {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// Bytes of postcard's varint encoding of `n`.
const fn varint_len(n: usize) -> usize {
    let mut len = 1;
    let mut rest = n >> 7;
    while rest > 0 {
        len += 1;
        rest >>= 7;
    }
    len
}
