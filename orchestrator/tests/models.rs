//! Models pushed to the orchestrator: the checks of both readers on the shipped models and on
//! models whose metadata is wrong or hostile, `/v1/models` over real HTTP on 127.0.0.1:0 with
//! a real store on disk, and the real `edgectl model` commands.

mod common;

use common::Api;
use orchestrator::api;
use orchestrator::artifacts::ArtifactStore;
use orchestrator::auth::Role;
use orchestrator::models::check::{CheckError, check};
use orchestrator_core::store::MemStore;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../edge-ai/models")
}

fn model(name: &str) -> Vec<u8> {
    std::fs::read(models_dir().join(name)).expect("the model ships with edge-ai")
}

/// `bytes`, an ONNX model, with `entries` appended to its `metadata_props` (field 14 of
/// ModelProto; protobuf reads a repeated field's entries wherever they appear).
fn with_metadata(mut bytes: Vec<u8>, entries: &[(&str, &str)]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut n: usize) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    fn field(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
        out.push(tag);
        varint(out, body.len());
        out.extend_from_slice(body);
    }
    for (key, value) in entries {
        let mut entry = Vec::new();
        field(&mut entry, 0x0a, key.as_bytes());
        field(&mut entry, 0x12, value.as_bytes());
        field(&mut bytes, 0x72, &entry);
    }
    bytes
}

/// The tiny MLP's inputs and outputs as numpy computed them, as golden metadata.
fn tiny_mlp_golden() -> (String, String) {
    let expected: Value = serde_json::from_slice(&model("tiny-mlp.expected.json")).expect("json");
    let rows = |key: &str| {
        expected["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .map(|case| {
                case[key]
                    .as_array()
                    .expect("values")
                    .iter()
                    .map(|v| v.as_f64().expect("number").to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect::<Vec<_>>()
            .join(";")
    };
    (rows("input"), rows("output"))
}

const FEATURES_8: &str = "a:ms,b:ms,c:ms,d:ms,e:ms,f:ms,g:ms,h:ms";

#[test]
fn the_built_in_model_passes_both_readers_without_metadata() {
    let checked = check(&model("tiny-mlp.onnx")).expect("the built-in model is accepted");
    assert_eq!(checked.purpose, None);
    assert_eq!(checked.golden_rows, 0);
    assert_eq!(checked.operators, ["Gemm", "Relu"]);
    assert_eq!((checked.inputs[0].width, checked.outputs[0].width), (8, 1));
    assert_eq!(checked.inputs[0].features, None);
}

#[test]
fn golden_rows_and_a_schema_are_checked_against_both_readers() {
    let (inputs, outputs) = tiny_mlp_golden();
    let good = with_metadata(
        model("tiny-mlp.onnx"),
        &[
            ("edge.purpose", "route"),
            ("edge.input.x", FEATURES_8),
            ("edge.output.y", "score:ratio"),
            ("edge.golden.input.x", &inputs),
            ("edge.golden.output.y", &outputs),
        ],
    );
    let checked = check(&good).expect("golden rows as numpy computed them pass");
    assert_eq!(checked.purpose.as_deref(), Some("route"));
    assert!(checked.golden_rows >= 3, "{checked:?}");
    let features = checked.inputs[0].features.as_ref().expect("declared");
    assert_eq!(features[0], ("a".to_owned(), "ms".to_owned()));

    // One golden output off by 1%: refused, naming the port, row and value.
    let mut rows: Vec<String> = outputs.split(';').map(str::to_owned).collect();
    let off: f32 = rows[1].parse::<f32>().expect("one value") * 1.01 + 0.01;
    rows[1] = off.to_string();
    let wrong = with_metadata(
        model("tiny-mlp.onnx"),
        &[
            ("edge.golden.input.x", &inputs),
            ("edge.golden.output.y", &rows.join(";")),
        ],
    );
    let err = check(&wrong).expect_err("a wrong golden row is refused");
    assert!(matches!(err, CheckError::NodeReader(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("output \"y\" row 1 column 0"),
        "names the port, row and value: {text}"
    );
}

#[test]
fn malformed_or_hostile_metadata_is_refused_with_a_clear_reason() {
    let (inputs, outputs) = tiny_mlp_golden();
    let mut huge = "1,".repeat(100_000);
    huge.push('1');
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("edge.input.x", "a:ms,b:ms")], "edge.input.x"),
        (vec![("edge.input.x", ",,,,,,,")], "edge.input.x"),
        (vec![("edge.golden.input.x", &inputs)], "golden"),
        (vec![("edge.golden.output.y", &outputs)], "golden"),
        (
            vec![
                ("edge.golden.input.x", "nan,1,1,1,1,1,1,1"),
                ("edge.golden.output.y", "1"),
            ],
            "edge.golden.input.x",
        ),
        (
            vec![
                ("edge.golden.input.x", "1,2"),
                ("edge.golden.output.y", "1"),
            ],
            "edge.golden.input.x",
        ),
        (
            vec![
                ("edge.golden.input.x", &huge),
                ("edge.golden.output.y", "1"),
            ],
            "edge.golden.input.x",
        ),
        (
            vec![
                ("edge.golden.input.x", "1e39,1,1,1,1,1,1,1"),
                ("edge.golden.output.y", "1"),
            ],
            "edge.golden.input.x",
        ),
        (
            vec![
                ("edge.golden.input.x", &inputs),
                ("edge.golden.output.y", &outputs),
                ("edge.golden.tolerance", "-1"),
            ],
            "edge.golden.tolerance",
        ),
        (
            vec![("edge.purpose", "route"), ("edge.purpose", "place")],
            "edge.purpose",
        ),
    ];
    for (i, (entries, expected)) in cases.into_iter().enumerate() {
        let bytes = with_metadata(model("tiny-mlp.onnx"), &entries);
        let err = check(&bytes).expect_err("refused");
        let text = err.to_string();
        // The nodes' reader refuses it first: no node would load it either.
        assert!(matches!(err, CheckError::NodeReader(_)), "case {i}: {text}");
        assert!(text.contains(expected), "case {i}: {text}");
        assert!(text.len() < 400, "case {i}: the message is bounded: {text}");
    }
}

#[test]
fn models_the_nodes_cannot_run_are_refused_by_their_reader_first() {
    for (bytes, expected) in [
        (model("unsupported-conv.onnx"), "Conv"),
        (model("external-data.onnx"), "external"),
        (model("tiny-mlp.undefined-output.onnx"), "invalid model"),
        (
            model("tiny-mlp.raw-string-initializer.onnx"),
            "invalid model",
        ),
        (b"not a model at all".to_vec(), "invalid model"),
        (Vec::new(), "invalid model"),
    ] {
        let err = check(&bytes).expect_err("refused");
        assert!(matches!(err, CheckError::NodeReader(_)), "{err}");
        assert!(err.to_string().contains(expected), "{expected}: {err}");
    }
}

struct Server {
    api: Api,
    data: tempfile::TempDir,
    operator: String,
    viewer: String,
    agent: ureq::Agent,
}

fn start() -> Server {
    let data = tempfile::tempdir().expect("tmp");
    let artifacts = Arc::new(ArtifactStore::open(data.path()).expect("artifact store"));
    let api = Api::start(Arc::new(MemStore::default()), Some(artifacts), api::LIMITS);
    Server {
        operator: api.token("ci", Role::Operator),
        viewer: api.token("dash", Role::Viewer),
        agent: common::agent(),
        api,
        data,
    }
}

impl Server {
    fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.api.base()))
            .header("content-type", content_type)
            .header("authorization", format!("Bearer {token}"));
        let mut response = self
            .agent
            .run(request.body(body).expect("request"))
            .expect("the server answers");
        let text = response.body_mut().read_to_string().expect("body");
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (response.status().as_u16(), json)
    }

    fn push(&self, path: &str, bytes: Vec<u8>) -> (u16, Value) {
        self.call(
            "POST",
            path,
            &self.operator,
            "application/octet-stream",
            bytes,
        )
    }

    fn list(&self) -> Value {
        let (status, list) = self.call(
            "GET",
            "/v1/models",
            &self.viewer,
            "application/json",
            Vec::new(),
        );
        assert_eq!(status, 200, "{list}");
        list
    }

    /// Every name in the artifact store's directory.
    fn stored(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.data.path().join("artifacts/sha256"))
            .expect("a directory")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    }
}

#[test]
fn a_pushed_model_is_stored_once_and_serves_the_purpose_it_is_pushed_for() {
    let s = start();
    let (status, pushed) = s.push("/v1/models", model("tiny-mlp.onnx"));
    assert_eq!(status, 201, "{pushed}");
    let digest = pushed["digest"].as_str().expect("digest").to_owned();
    assert_eq!(pushed["active_for"], Value::Null, "it declares no purpose");
    assert_eq!(pushed["operators"], serde_json::json!(["Gemm", "Relu"]));
    assert_eq!(pushed["inputs"][0]["width"], 8);
    assert!(s.stored().contains(digest.trim_start_matches("sha256:")));

    let (status, again) = s.push("/v1/models?purpose=route", model("tiny-mlp.onnx"));
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["created"], false);
    assert_eq!(again["active_for"], "route");
    let list = s.list();
    assert_eq!(list["models"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["active"]["route"], digest.as_str());

    // A model that declares one purpose cannot be pushed for another.
    let routing = with_metadata(model("tiny-mlp.onnx"), &[("edge.purpose", "route")]);
    let (status, refused) = s.push("/v1/models?purpose=place", routing.clone());
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("declares it is for \"route\"")),
        "{refused}"
    );
    let (status, pushed) = s.push("/v1/models", routing);
    assert_eq!(
        (status, &pushed["active_for"]),
        (201, &Value::from("route")),
        "{pushed}"
    );
    assert_ne!(
        s.list()["active"]["route"],
        digest.as_str(),
        "the newest push serves"
    );
}

#[test]
fn refused_pushes_leave_nothing_and_say_why() {
    let s = start();
    let before = s.stored();
    let huge = vec![0u8; 16 * 1024 * 1024 + 1];
    for (path, content_type, bytes, status, expected) in [
        (
            "/v1/models",
            "application/octet-stream",
            model("unsupported-conv.onnx"),
            400,
            "Conv",
        ),
        (
            "/v1/models",
            "application/octet-stream",
            b"\x08\x07garbage".to_vec(),
            400,
            "invalid model",
        ),
        (
            "/v1/models",
            "application/octet-stream",
            Vec::new(),
            400,
            "invalid model",
        ),
        (
            "/v1/models?purpose=balance",
            "application/octet-stream",
            model("tiny-mlp.onnx"),
            400,
            "not one of route, place",
        ),
        (
            "/v1/models?purpose=route&extra=1",
            "application/octet-stream",
            model("tiny-mlp.onnx"),
            400,
            "",
        ),
        (
            "/v1/models",
            "application/json",
            model("tiny-mlp.onnx"),
            415,
            "application/octet-stream",
        ),
        ("/v1/models", "application/octet-stream", huge, 413, ""),
    ] {
        let (got, body) = s.call("POST", path, &s.operator, content_type, bytes);
        assert_eq!(got, status, "{path}: {body}");
        assert!(body["error"].is_string(), "a JSON error: {body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains(expected)),
            "{path}: {body}"
        );
    }
    assert_eq!(s.stored(), before, "nothing stored");
    assert_eq!(s.list()["models"], serde_json::json!([]));

    // A viewer cannot push; without a token nobody can.
    let (status, _) = s.call(
        "POST",
        "/v1/models",
        &s.viewer,
        "application/octet-stream",
        model("tiny-mlp.onnx"),
    );
    assert_eq!(status, 403);
    let (status, _) = s.call(
        "POST",
        "/v1/models",
        "forged",
        "application/octet-stream",
        model("tiny-mlp.onnx"),
    );
    assert_eq!(status, 401);
}

impl Server {
    /// `/metrics` as Prometheus reads it.
    fn metrics(&self) -> String {
        let mut response = self
            .agent
            .get(format!("{}/metrics", self.api.base()))
            .call()
            .expect("the server answers");
        response.body_mut().read_to_string().expect("body")
    }

    /// The value of the `edge_orchestrator_place_mode` series for `mode`.
    fn place_mode_gauge(&self, mode: &str) -> Option<String> {
        let series = format!("edge_orchestrator_place_mode{{mode=\"{mode}\"}} ");
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()).map(str::to_owned))
    }
}

#[test]
fn pushing_the_placement_model_switches_placement_to_it_and_a_broken_one_is_refused() {
    let s = start();
    // Nothing pushed: the fixed rule places, and says why.
    let placement = &s.list()["placement"];
    assert_eq!(placement["mode"], "fallback", "{placement}");
    assert_eq!(placement["reason"], "no_model", "{placement}");
    assert_eq!(s.place_mode_gauge("no_model").as_deref(), Some("1"));
    assert_eq!(s.place_mode_gauge("model").as_deref(), Some("0"));

    // The trained model declares it is for placement: it places from now on, no restart.
    let (status, pushed) = s.push("/v1/models", model("place.onnx"));
    assert_eq!(status, 201, "{pushed}");
    assert_eq!(pushed["active_for"], "place");
    let digest = pushed["digest"].as_str().expect("digest").to_owned();
    let placement = &s.list()["placement"];
    assert_eq!(placement["mode"], "model", "{placement}");
    assert_eq!(placement["reason"], Value::Null, "{placement}");
    assert_eq!(placement["model"], digest.as_str(), "{placement}");
    assert_eq!(placement["drift_samples"], 0, "{placement}");
    assert_eq!(s.place_mode_gauge("model").as_deref(), Some("1"));
    assert_eq!(s.place_mode_gauge("no_model").as_deref(), Some("0"));

    // A model of the wrong shape pushed for placement is refused, and changes nothing.
    let before = s.stored();
    let (status, refused) = s.push("/v1/models?purpose=place", model("tiny-mlp.onnx"));
    assert_eq!(status, 400, "{refused}");
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("not a placement model") && message.contains("15 features"),
        "{refused}"
    );
    assert_eq!(s.stored(), before, "nothing of it is stored");
    let list = s.list();
    assert_eq!(list["active"]["place"], digest.as_str());
    assert_eq!(list["placement"]["mode"], "model", "{list}");
    assert_eq!(list["placement"]["model"], digest.as_str(), "{list}");
    assert_eq!(s.place_mode_gauge("model").as_deref(), Some("1"));

    // `edgectl model list` says it too.
    let out = Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .env_remove("EDGE_API")
        .env_remove("EDGE_TOKEN")
        .args([
            "--api",
            &s.api.base(),
            "--token",
            &s.viewer,
            "model",
            "list",
        ])
        .output()
        .expect("run edgectl");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!("Placement: model {digest}")),
        "{table}"
    );
}

#[test]
fn edgectl_pushes_a_model_and_lists_the_active_one() {
    let s = start();
    let edgectl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_edgectl"))
            .env_remove("EDGE_API")
            .env_remove("EDGE_TOKEN")
            .args(["--api", &s.api.base(), "--token", &s.operator])
            .args(args)
            .output()
            .expect("run edgectl")
    };
    let file = models_dir().join("tiny-mlp.onnx");
    let file = file.to_str().expect("utf-8");
    let out = edgectl(&["model", "push", file, "--purpose", "route", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushed: Value = serde_json::from_slice(&out.stdout).expect("json");
    let digest = pushed["digest"].as_str().expect("digest");

    let out = edgectl(&["model", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(digest) && table.contains("route"), "{table}");

    let out = edgectl(&[
        "model",
        "push",
        models_dir()
            .join("unsupported-conv.onnx")
            .to_str()
            .expect("utf-8"),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Conv"), "{stderr}");
}

/// The differential test: every model shipped in edge-ai/models (the built-in one, the test
/// models, the trained ones) that the nodes' reader loads, tract-onnx loads too, and the two
/// agree on its golden rows and on rows of their own; the others are refused by the nodes'
/// reader, never passed.
#[test]
fn every_shipped_model_gets_the_same_answers_from_both_readers() {
    let mut checked = 0;
    for entry in std::fs::read_dir(models_dir()).expect("edge-ai/models") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "onnx") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("read");
        let name = path.display();
        match edge_ai::Model::from_bytes(&bytes) {
            Ok(_) => {
                check(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
                checked += 1;
            }
            Err(_) => {
                let err = check(&bytes).expect_err("refused");
                assert!(matches!(err, CheckError::NodeReader(_)), "{name}: {err}");
            }
        }
    }
    assert!(checked >= 5, "only {checked} models were compared");
}
