//! Container images built around busybox-static, as the container tests and benchmarks
//! deploy them: a base layer with busybox, its applets and the accounts `root` and `www`
//! (uid 1000), and an amd64 image that serves `/www` with busybox's httpd as `www`.

use edge_oci::build::{LayerTar, PlatformImage};
use serde_json::json;

/// The base layer: `busybox` at `/bin/busybox` with a link per applet, `/etc/passwd` and
/// `/etc/group`, `/etc/motd` holding `motd` when given (a new text is a new layer), and a
/// world-writable `/tmp`.
pub fn busybox_layer(busybox: &[u8], applets: &[&str], motd: Option<&str>) -> Vec<u8> {
    let mut tar = LayerTar::new()
        .dir("bin/", 0o755)
        .file("bin/busybox", 0o755, busybox)
        .dir("etc/", 0o755)
        .file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/:/bin/sh\nwww:x:1000:1000:www:/www:/bin/sh\n",
        )
        .file("etc/group", 0o644, b"root:x:0:\nwww:x:1000:\n");
    if let Some(motd) = motd {
        tar = tar.file("etc/motd", 0o644, motd.as_bytes());
    }
    tar = tar.dir("tmp/", 0o1777);
    for applet in applets {
        tar = tar.symlink(&format!("bin/{applet}"), "busybox");
    }
    tar.finish()
}

/// An amd64 image of `layers` that serves `/www` on port 8080 with busybox's httpd as user
/// `www` (a spec's `args` replace the command).
pub fn httpd_image(layers: Vec<Vec<u8>>) -> PlatformImage {
    PlatformImage::with_config(
        "amd64",
        None,
        layers,
        json!({
            "Entrypoint": ["/bin/busybox"],
            "Cmd": ["httpd", "-f", "-p", "8080", "-h", "/www"],
            "Env": ["PATH=/bin"],
            "User": "www",
            "WorkingDir": "/www"
        }),
    )
}
