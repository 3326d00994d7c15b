//! The HTTP client: one call per request, the API's JSON error body turned into a
//! [`CliError`], and `--json` output indented as the API sent it.

use crate::CliError;
use edge_proto::digest::{sha256_reader, to_hex};
use orchestrator::api::error::ErrorBody;
use orchestrator::api::views::ARTIFACT_CONTENT_TYPE;
use std::fmt::Write as _;
use std::time::Duration;

pub(crate) struct Client {
    agent: ureq::Agent,
    api: String,
    token: Option<String>,
}

impl Client {
    pub(crate) fn new(api: &str, token: Option<&str>) -> Self {
        let config = ureq::Agent::config_builder()
            // Error statuses carry the API's JSON error body; we read it ourselves.
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build();
        Self {
            agent: config.into(),
            api: api.trim_end_matches('/').to_owned(),
            token: token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    pub(crate) fn get(&self, path: &str) -> Result<String, CliError> {
        let mut request = self.agent.get(self.url(path));
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        self.finish(request.call())
    }

    pub(crate) fn post(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<String, CliError> {
        let mut request = self.agent.post(self.url(path));
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        self.finish(request.send_json(body))
    }

    pub(crate) fn delete(&self, path: &str) -> Result<String, CliError> {
        let mut request = self.agent.delete(self.url(path));
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        self.finish(request.call())
    }

    /// Copies a streamed answer to `out` as it arrives: no deadline once it has started.
    pub(crate) fn stream(&self, path: &str, out: &mut impl std::io::Write) -> Result<(), CliError> {
        let mut request = self.agent.get(self.url(path));
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let request = request
            .config()
            .timeout_global(None)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(30)))
            .build();
        let mut response = request.call().map_err(|e| self.transport_error(e))?;
        if !response.status().is_success() {
            return self.finish(Ok(response)).map(drop);
        }
        let mut reader = response.body_mut().as_reader();
        let mut buf = [0u8; 8192];
        loop {
            let n =
                std::io::Read::read(&mut reader, &mut buf).map_err(|e| CliError::Transport {
                    api: self.api.clone(),
                    reason: e.to_string(),
                })?;
            if n == 0 {
                return Ok(());
            }
            // A closed pipe (`edgectl logs x | head`) ends the stream quietly.
            if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                return Ok(());
            }
        }
    }

    /// Uploads the file at `path` with its sha256 (hashed here first), so the orchestrator
    /// stores exactly the bytes on this disk or nothing.
    pub(crate) fn push_artifact(&self, path: &std::path::Path) -> Result<String, CliError> {
        let file_error = |e: std::io::Error| CliError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let (digest, _) =
            sha256_reader(std::fs::File::open(path).map_err(file_error)?).map_err(file_error)?;
        let file = std::fs::File::open(path).map_err(file_error)?;
        let url = format!("/v1/artifacts?sha256={}", to_hex(&digest));
        self.upload(&url, ARTIFACT_CONTENT_TYPE, file, Duration::from_secs(120))
    }

    /// Streams an image archive to `POST /v1/images`; the orchestrator checks every blob,
    /// and may take a while over the last layer once the body is sent.
    pub(crate) fn push_image(&self, path: &std::path::Path) -> Result<String, CliError> {
        let file = std::fs::File::open(path).map_err(|e| CliError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        self.upload(
            "/v1/images",
            "application/x-tar",
            file,
            Duration::from_secs(300),
        )
    }

    /// POSTs the model at `path` to `/v1/models`, for `purpose` if given.
    pub(crate) fn push_model(
        &self,
        path: &std::path::Path,
        purpose: Option<&str>,
    ) -> Result<String, CliError> {
        let file = std::fs::File::open(path).map_err(|e| CliError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let target = match purpose {
            Some(purpose) => format!("/v1/models?purpose={}", percent_encode(purpose)),
            None => "/v1/models".to_owned(),
        };
        self.upload(
            &target,
            "application/octet-stream",
            file,
            Duration::from_secs(60),
        )
    }

    /// POSTs `file` to `path`. An upload may be hundreds of MiB over a slow link: no
    /// deadline for the whole call, only for connecting and for the answer once the body is
    /// sent (`answer_within`).
    fn upload(
        &self,
        path: &str,
        content_type: &str,
        file: std::fs::File,
        answer_within: Duration,
    ) -> Result<String, CliError> {
        let mut request = self.agent.post(self.url(path)).content_type(content_type);
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let request = request
            .config()
            .timeout_global(None)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(answer_within))
            .build();
        self.finish(request.send(file))
    }

    /// The body of a successful response, or the API's error.
    fn finish(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<String, CliError> {
        let mut response = result.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| self.transport_error(e))?;
        if status.is_success() {
            return Ok(body);
        }
        let message = match serde_json::from_str::<ErrorBody>(&body) {
            Ok(e) => e.message,
            Err(_) => format!(
                "HTTP {status} without an API error body; is {} the orchestrator API?",
                self.api
            ),
        };
        Err(CliError::Api {
            status: status.as_u16(),
            message,
        })
    }

    fn transport_error(&self, e: ureq::Error) -> CliError {
        let api = self.api.clone();
        match e {
            ureq::Error::Io(io) => CliError::Unreachable {
                api,
                reason: match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                    std::io::ErrorKind::TimedOut => "timed out".into(),
                    _ => io.to_string(),
                },
            },
            ureq::Error::ConnectionFailed => CliError::Unreachable {
                api,
                reason: "connection failed".into(),
            },
            ureq::Error::HostNotFound => CliError::Unreachable {
                api,
                reason: "host not found".into(),
            },
            ureq::Error::Timeout(t) => CliError::Unreachable {
                api,
                reason: format!("timed out ({t})"),
            },
            ureq::Error::BadUri(uri) => CliError::Transport {
                api,
                reason: format!("not a usable URL: {uri}"),
            },
            other => CliError::Transport {
                api,
                reason: other.to_string(),
            },
        }
    }

    pub(crate) fn parse<T: serde::de::DeserializeOwned>(&self, body: &str) -> Result<T, CliError> {
        serde_json::from_str(body).map_err(|e| CliError::BadResponse {
            api: self.api.clone(),
            reason: e.to_string(),
        })
    }

    /// With `--json`, the API's JSON as it came (indented); otherwise `render` of it.
    pub(crate) fn show<T: serde::de::DeserializeOwned>(
        &self,
        json: bool,
        body: &str,
        render: impl FnOnce(&T) -> String,
    ) -> Result<String, CliError> {
        if json {
            return self.reindent(body);
        }
        Ok(render(&self.parse(body)?))
    }

    /// The API's JSON, indented, in the API's own key order.
    fn reindent(&self, body: &str) -> Result<String, CliError> {
        self.parse::<serde_json::Value>(body)?;
        Ok(indent_json(body))
    }
}

/// Indents JSON text (known to be valid) by two spaces, keeping key order and string contents.
fn indent_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = json.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                if let Some(&close) = chars.peek()
                    && (close == '}' || close == ']')
                {
                    // Empty: `{}` or `[]` on one line.
                    out.push(close);
                    chars.next();
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out.push('\n');
    out
}

/// Escapes a path segment (a node name or id never needs it, but a typo might).
pub(crate) fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_indented_in_order() {
        let text =
            r#"{"token":"a.b","ca_hash":"sha256:x","n":[1,{"k":"v, \"q\": {x}"}],"e":{},"f":[]}"#;
        let pretty = indent_json(text);
        let reparsed: serde_json::Value = serde_json::from_str(&pretty).expect("valid");
        let original: serde_json::Value = serde_json::from_str(text).expect("valid");
        assert_eq!(reparsed, original);
        assert!(
            pretty.starts_with("{\n  \"token\": \"a.b\",\n  \"ca_hash\""),
            "{pretty}"
        );
        assert!(pretty.contains("\"e\": {},"), "{pretty}");
    }

    #[test]
    fn segments_are_escaped() {
        assert_eq!(percent_encode("shop-1"), "shop-1");
        assert_eq!(percent_encode("a/b c"), "a%2Fb%20c");
    }
}
