//! Wire values as a real fleet sends them: a Raspberry Pi 5 with an NPU hat, a camera and GPIO,
//! eight labels and a location. Fixed values, so every run encodes the same bytes and a
//! simulated node costs no `sysinfo` call.

use edge_proto::{
    Accelerator, AcceleratorKind, Capabilities, Der, EnrollRequest, Hello, Intent, Label, List,
    Location, NodeId, NodeMsg, Status, text,
};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

/// What a node reports about itself: every optional field set, four accelerators, eight labels.
pub fn capabilities(hostname: &str) -> Capabilities {
    let accelerators = [
        (AcceleratorKind::Gpu, "v3d", "/dev/dri/renderD128"),
        (AcceleratorKind::Npu, "Hailo-8L", "/dev/hailo0"),
        (AcceleratorKind::Video, "rpi-hevc-dec", "/dev/video19"),
        (AcceleratorKind::Gpio, "gpiochip0", "/dev/gpiochip0"),
    ];
    let labels = [
        ("site", "berlin-mitte"),
        ("region", "eu-central"),
        ("zone", "store-0042"),
        ("role", "camera-gateway"),
        ("owner", "retail-ops"),
        ("tier", "production"),
        ("power", "poe"),
        ("network", "lte-backup"),
    ];
    Capabilities {
        arch: text("aarch64"),
        os: text("linux"),
        os_version: text("Debian GNU/Linux 12 (bookworm)"),
        kernel: text("6.6.51+rpt-rpi-2712"),
        hostname: text(hostname),
        cpus: 4,
        cpu_model: text("Cortex-A76"),
        memory_bytes: 8 * 1024 * 1024 * 1024,
        disk_bytes: 64_000_000_000,
        disk_free_bytes: 41_234_567_890,
        accelerators: accelerators_of(&accelerators),
        board: Some(text("Raspberry Pi 5 Model B Rev 1.0")),
        labels: labels_of(&labels),
        location: Some(Location {
            lat: 52.520_008,
            lon: 13.404_954,
            alt_m: Some(34.0),
        }),
    }
}

/// The wire form of `(kind, name, device path)` triples.
pub fn accelerators_of(list: &[(AcceleratorKind, &str, &str)]) -> List<Accelerator, 16> {
    list.iter()
        .map(|(kind, name, path)| Accelerator {
            kind: *kind,
            name: text(name),
            path: text(path),
        })
        .collect()
}

/// The wire form of `(key, value)` labels.
pub fn labels_of(pairs: &[(&str, &str)]) -> List<Label, 32> {
    pairs
        .iter()
        .map(|(k, v)| Label {
            key: text(k),
            value: text(v),
        })
        .collect()
}

/// Live load, as sent every status interval.
pub fn status(uptime_secs: u64) -> Status {
    Status {
        cpu_percent: 12.5,
        memory_used_bytes: 1_234_567_890,
        disk_free_bytes: 41_234_567_890,
        uptime_secs,
    }
}

/// The first frame of a connection.
pub fn hello(intent: Intent, node_id: Option<NodeId>) -> NodeMsg {
    NodeMsg::Hello(Hello {
        versions: List::from_iter(edge_proto::SUPPORTED_VERSIONS.iter().copied()),
        intent,
        node_id,
        agent: text(concat!("fleet-sim/", env!("CARGO_PKG_VERSION"))),
        sync: None,
    })
}

/// A PKCS#10 request of roughly `target_len` bytes: a full subject and as many DNS names as
/// it takes. The node's own CSR (a CN only, P-256) is smaller; this one stands for a node whose
/// request carries its hostnames.
pub fn csr_of_about(key: &KeyPair, target_len: usize) -> Result<Vec<u8>, rcgen::Error> {
    let mut sans = 0usize;
    loop {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "shop-berlin-0042-gw");
        dn.push(DnType::OrganizationName, "Example Retail GmbH");
        dn.push(DnType::OrganizationalUnitName, "Store Operations");
        dn.push(DnType::CountryName, "DE");
        dn.push(DnType::LocalityName, "Berlin");
        params.distinguished_name = dn;
        params.subject_alt_names = (0..sans)
            .map(|i| {
                let name = format!("gw-{i}.store-0042.edge.example.net");
                name.try_into().map(SanType::DnsName)
            })
            .collect::<Result<_, _>>()?;
        let der = params.serialize_request(key)?.der().to_vec();
        if der.len() >= target_len || sans >= 64 {
            return Ok(der);
        }
        sans += 1;
    }
}

/// A join request with the given CSR.
pub fn enroll_request(token: &str, name: &str, csr_der: Vec<u8>) -> Option<EnrollRequest> {
    Some(EnrollRequest {
        token: text(token),
        name: text(name),
        csr_der: Der::new(csr_der)?,
        capabilities: capabilities(name),
    })
}
