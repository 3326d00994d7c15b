//! The operator API as the tools call it: one keep-alive connection with the admin token, as
//! `edgectl` would use it. Every answer is taken (no status is an error), its body read as
//! JSON, or as a string when it is not, or `null` when empty.

use orchestrator::app::Orchestrator;
use serde_json::Value;
use std::time::Duration;

#[derive(Debug)]
pub struct Api {
    agent: ureq::Agent,
    base: String,
    bearer: String,
}

impl Api {
    /// The API of `orch`, each request bounded by `timeout`.
    pub fn new(orch: &Orchestrator, timeout: Duration) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        Self {
            agent,
            base: format!("http://{}", orch.api_addr),
            bearer: format!("Bearer {}", orch.admin_token),
        }
    }

    pub fn post(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Value)> {
        let response = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("authorization", &self.bearer)
            .content_type(content_type)
            .send(body)?;
        read(response)
    }

    pub fn delete(&self, path: &str) -> anyhow::Result<u16> {
        let response = self
            .agent
            .delete(format!("{}{path}", self.base))
            .header("authorization", &self.bearer)
            .call()?;
        Ok(read(response)?.0)
    }
}

fn read(mut response: ureq::http::Response<ureq::Body>) -> anyhow::Result<(u16, Value)> {
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string()?;
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Ok((status, json))
}
