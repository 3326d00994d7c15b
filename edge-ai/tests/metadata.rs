//! What a model declares in its `edge.*` metadata: purpose, feature schema and golden rows,
//! checked at load and by [`Model::expect_schema`], and hostile declarations refused.
//!
//! `models/route-mlp*.onnx` and `models/two-port.onnx` are written by
//! `models/make_tiny_mlp.py`. The hostile declarations are appended here to `two-port.onnx`,
//! which declares nothing: a protobuf message read twice over merges, so entries appended to a
//! `ModelProto` add to its `metadata_props`.

mod support;

use edge_ai::{
    BUILTIN_MODEL, Direction, MAX_GOLDEN_ROWS, MAX_METADATA_ENTRIES, MAX_METADATA_KEY_BYTES,
    MAX_METADATA_VALUE_BYTES, Model, ModelError, SchemaMismatch,
};
use support::{batch_expected, field, model_bytes};

/// The schema `route-mlp.onnx` declares, as its caller writes it.
const ROUTE_INPUT: &[(&str, &str)] = &[
    ("peak_ewma_ms", "ms"),
    ("p99_ms", "ms"),
    ("in_flight", "requests"),
    ("queue_depth", "requests"),
    ("error_rate", "ratio"),
    ("cpu_util", "ratio"),
    ("mem_free", "MiB"),
    ("rtt_ms", "ms"),
    ("link", "Mbit/s"),
    ("battery", "ratio"),
    ("hops", "1"),
    ("same_site", "bool"),
    ("age", "s"),
];
const ROUTE_OUTPUT: &[(&str, &str)] = &[("score", "1"), ("p_fail", "ratio")];

fn route_mlp() -> Model {
    Model::from_bytes(&model_bytes("route-mlp.onnx")).expect("route-mlp.onnx loads")
}

/// `ModelProto.metadata_props` (field 14): a `StringStringEntryProto` {key = 1, value = 2}.
fn entry(key: &[u8], value: &[u8]) -> Vec<u8> {
    field(14, &[field(1, key), field(2, value)].concat())
}

/// `two-port.onnx` with `entries` added to its metadata.
fn two_port_with(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut bytes = model_bytes("two-port.onnx");
    for (key, value) in entries {
        bytes.extend(entry(key.as_bytes(), value.as_bytes()));
    }
    bytes
}

/// Loads `bytes`, expecting [`ModelError::Invalid`] with a message containing every one of
/// `reasons`.
fn assert_refused(bytes: &[u8], reasons: &[&str]) {
    match Model::from_bytes(bytes) {
        Err(ModelError::Invalid(message)) => {
            for reason in reasons {
                assert!(message.contains(reason), "{reason:?} not in {message:?}");
            }
        }
        other => panic!("expected Invalid with {reasons:?}, got {other:?}"),
    }
}

/// `rows` as `edge.golden.*` text: values by `,`, rows by `;`. Rust prints an `f32` so that it
/// parses back to the same value.
fn golden_text(rows: &[Vec<f32>]) -> String {
    let rows: Vec<String> = rows
        .iter()
        .map(|row| {
            let values: Vec<String> = row.iter().map(f32::to_string).collect();
            values.join(",")
        })
        .collect();
    rows.join(";")
}

/// Golden declarations for every port of `two-port.onnx`, from its first expected batch, with
/// `tamper` applied to output `u`'s rows.
fn two_port_golden(tamper: impl FnOnce(&mut Vec<Vec<f32>>)) -> Vec<(String, String)> {
    let expected = batch_expected("two-port.expected.json");
    let batch = &expected.batches[0];
    let mut u = batch.outputs["u"].clone();
    tamper(&mut u);
    vec![
        (
            "edge.golden.input.a".to_owned(),
            golden_text(&batch.inputs["a"]),
        ),
        (
            "edge.golden.input.b".to_owned(),
            golden_text(&batch.inputs["b"]),
        ),
        ("edge.golden.output.u".to_owned(), golden_text(&u)),
        (
            "edge.golden.output.v".to_owned(),
            golden_text(&batch.outputs["v"]),
        ),
    ]
}

fn as_refs(entries: &[(String, String)]) -> Vec<(&str, &str)> {
    entries
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect()
}

/// Metadata entries, and what the refusal of a model carrying them must say.
type Entries<'a> = &'a [(&'a str, &'a str)];
type Reasons<'a> = &'a [&'a str];

// ---------------------------------------------------------------------------------------------
// Declared purpose and schema.

#[test]
fn route_mlp_declares_its_purpose_and_schema() {
    let model = route_mlp();
    assert_eq!(model.purpose(), Some("route"));
    let schema = model.schema().expect("route-mlp.onnx declares a schema");
    let features = |port: &edge_ai::PortSchema| -> Vec<(String, String)> {
        port.features()
            .iter()
            .map(|feature| (feature.name().to_owned(), feature.unit().to_owned()))
            .collect()
    };
    let owned = |features: &[(&str, &str)]| -> Vec<(String, String)> {
        features
            .iter()
            .map(|(name, unit)| ((*name).to_owned(), (*unit).to_owned()))
            .collect()
    };
    assert_eq!(schema.inputs().len(), 1);
    assert_eq!(schema.inputs()[0].name(), "candidates");
    assert_eq!(features(&schema.inputs()[0]), owned(ROUTE_INPUT));
    assert_eq!(schema.outputs()[0].name(), "score");
    assert_eq!(features(&schema.outputs()[0]), owned(ROUTE_OUTPUT));

    model
        .expect_schema(
            "route",
            &[("candidates", ROUTE_INPUT)],
            &[("score", ROUTE_OUTPUT)],
        )
        .expect("the schema the model was trained with");
}

#[test]
fn expect_schema_names_the_first_difference() {
    let model = route_mlp();
    let expect = |purpose: &str, inputs: &[edge_ai::ExpectedPort<'_>]| {
        model
            .expect_schema(purpose, inputs, &[("score", ROUTE_OUTPUT)])
            .expect_err("a difference")
    };

    let error = expect("place", &[("candidates", ROUTE_INPUT)]);
    assert_eq!(
        error,
        SchemaMismatch::Purpose {
            expected: "place".to_owned(),
            declared: "route".to_owned()
        }
    );
    assert_eq!(
        error.to_string(),
        "the model's purpose is \"route\", expected \"place\""
    );

    let error = expect("route", &[("candidates", ROUTE_INPUT), ("extra", &[])]);
    assert_eq!(error.to_string(), "the model has 1 input ports, expected 2");

    let error = expect("route", &[("nodes", ROUTE_INPUT)]);
    assert_eq!(
        error.to_string(),
        "input port 0 is \"candidates\", expected \"nodes\""
    );

    let error = expect("route", &[("candidates", &ROUTE_INPUT[..12])]);
    assert_eq!(
        error,
        SchemaMismatch::Width {
            direction: Direction::Input,
            port: "candidates".to_owned(),
            expected: 12,
            got: 13
        }
    );
    assert_eq!(
        error.to_string(),
        "input \"candidates\" has width 13, expected 12"
    );

    let mut renamed = ROUTE_INPUT.to_vec();
    renamed[4] = ("errors", "ratio");
    // Column 6 differs too: the first difference is reported.
    renamed[6] = ("mem_free", "MB");
    let error = expect("route", &[("candidates", &renamed)]);
    assert_eq!(
        error.to_string(),
        "input \"candidates\" column 4 is feature \"error_rate\", expected \"errors\""
    );

    renamed[4] = ROUTE_INPUT[4];
    let error = expect("route", &[("candidates", &renamed)]);
    assert_eq!(
        error,
        SchemaMismatch::Unit {
            direction: Direction::Input,
            port: "candidates".to_owned(),
            position: 6,
            feature: "mem_free".to_owned(),
            expected: "MB".to_owned(),
            got: "MiB".to_owned()
        }
    );
    assert_eq!(
        error.to_string(),
        "input \"candidates\" column 6 (mem_free) is in \"MiB\", expected \"MB\""
    );

    let error = model
        .expect_schema(
            "route",
            &[("candidates", ROUTE_INPUT)],
            &[("score", &[("score", "1"), ("p_ok", "ratio")])],
        )
        .expect_err("a difference");
    assert_eq!(
        error.to_string(),
        "output \"score\" column 1 is feature \"p_fail\", expected \"p_ok\""
    );
}

/// One input and one output, whatever their names: the shape is checked before anything
/// the model declares, then the schema as `expect_schema` checks it.
#[test]
fn expect_one_to_one_checks_the_shape_then_the_schema_under_the_model_s_own_port_names() {
    let model = route_mlp();
    model
        .expect_one_to_one("route", ROUTE_INPUT, ROUTE_OUTPUT)
        .expect("route-mlp is a routing model");
    // A declared purpose that differs is said first, then a shape.
    let error = model
        .expect_one_to_one("place", &ROUTE_INPUT[..12], ROUTE_OUTPUT)
        .expect_err("another purpose and width");
    assert!(matches!(error, SchemaMismatch::Purpose { .. }), "{error}");
    let error = model
        .expect_one_to_one("route", &ROUTE_INPUT[..12], ROUTE_OUTPUT)
        .expect_err("another width");
    assert_eq!(
        error,
        SchemaMismatch::Width {
            direction: Direction::Input,
            port: "candidates".to_owned(),
            expected: 12,
            got: 13
        }
    );
    let error = model
        .expect_one_to_one("route", ROUTE_INPUT, &ROUTE_OUTPUT[..1])
        .expect_err("another output width");
    assert_eq!(
        error.to_string(),
        "output \"score\" has width 2, expected 1"
    );
    let error = model
        .expect_one_to_one("place", ROUTE_INPUT, ROUTE_OUTPUT)
        .expect_err("another purpose");
    assert!(matches!(error, SchemaMismatch::Purpose { .. }), "{error}");

    // Two inputs are not one.
    let two = Model::from_bytes(&model_bytes("two-port.onnx")).expect("two-port loads");
    let error = two
        .expect_one_to_one("route", ROUTE_INPUT, ROUTE_OUTPUT)
        .expect_err("two ports");
    assert!(
        matches!(error, SchemaMismatch::PortCount { expected: 1, .. }),
        "{error}"
    );
}

/// The built-in model declares nothing: it loads, runs, and passes on its widths alone.
#[test]
fn a_model_without_a_schema_is_checked_on_its_ports_and_widths_only() {
    let model = Model::from_bytes(BUILTIN_MODEL).expect("the built-in model loads");
    assert_eq!(model.purpose(), None);
    assert!(model.schema().is_none());
    let eight: &[(&str, &str)] = &[("anything", "at all"); 8];
    model
        .expect_schema("route", &[("x", eight)], &[("y", &[("score", "1")])])
        .expect("widths match");
    let error = model
        .expect_schema("place", &[("x", &eight[..7])], &[("y", &[("score", "1")])])
        .expect_err("widths differ");
    assert_eq!(error.to_string(), "input \"x\" has width 8, expected 7");
    let error = model
        .expect_schema("route", &[("x", eight)], &[("z", &[("score", "1")])])
        .expect_err("another output");
    assert_eq!(error.to_string(), "output port 0 is \"y\", expected \"z\"");
}

#[test]
fn a_schema_whose_feature_count_is_not_the_width_is_refused_at_load() {
    assert_refused(
        &model_bytes("route-mlp.schema-mismatch.onnx"),
        &[
            "edge.input.candidates",
            "declares 12 features",
            "input \"candidates\" has width 13",
        ],
    );
}

#[test]
fn malformed_schemas_are_refused_naming_the_key() {
    let cases: &[(Entries, Reasons)] = &[
        (
            &[("edge.input.a", "f0:1,f1:1")],
            &["\"edge.input.a\"", "declares 2 features", "width 3"],
        ),
        (
            &[("edge.input.a", "f0:1,f1:1,f2:1,f3:1")],
            &["declares 4 features", "width 3"],
        ),
        (
            &[("edge.input.a", "f0:1,f1,f2:1")],
            &["column 1", "\"f1\"", "not feature:unit"],
        ),
        (
            &[("edge.input.a", "f0:1,f1:,f2:1")],
            &["column 1", "not feature:unit"],
        ),
        (
            &[("edge.input.a", "f0:1,f 1:1,f2:1")],
            &["column 1", "not feature:unit"],
        ),
        (
            &[("edge.input.a", "f0:1,f0:1,f2:1")],
            &["names feature \"f0\" twice"],
        ),
        (&[("edge.input.a", "")], &["column 0", "not feature:unit"]),
        // Declared for one port of four: all or nothing.
        (
            &[("edge.input.a", "f0:1,f1:1,f2:1")],
            &["\"edge.input.b\"", "for every input and output or for none"],
        ),
        (
            &[("edge.input.zz", "f0:1")],
            &["names input \"zz\"", "\"a\", \"b\""],
        ),
        (
            &[("edge.output.a", "f0:1")],
            &["names output \"a\"", "\"u\", \"v\""],
        ),
        (
            &[("edge.purpose", "")],
            &["edge.purpose", "printable ASCII"],
        ),
        (&[("edge.purpose", "route nodes")], &["edge.purpose"]),
        (
            &[("edge.purposes", "route")],
            &["\"edge.purposes\" is not one edge-ai knows"],
        ),
        (
            &[("edge.purpose", "route"), ("edge.purpose", "place")],
            &["declared twice"],
        ),
    ];
    for (entries, reasons) in cases {
        assert_refused(&two_port_with(entries), reasons);
    }

    let complete = [
        ("edge.purpose", "place"),
        ("edge.input.a", "cpu:ratio,mem:MiB,disk:GiB"),
        ("edge.input.b", "rtt:ms,loss:ratio"),
        ("edge.output.u", "s0:1,s1:1,s2:1,s3:1"),
        ("edge.output.v", "p:ratio"),
        // Other tools' keys are theirs.
        ("author", "edge-ai tests"),
    ];
    let model = Model::from_bytes(&two_port_with(&complete)).expect("a complete schema loads");
    assert_eq!(model.purpose(), Some("place"));
    let schema = model.schema().expect("declared");
    assert_eq!(schema.inputs()[1].features()[0].name(), "rtt");
    assert_eq!(schema.outputs()[1].features()[0].unit(), "ratio");
}

// ---------------------------------------------------------------------------------------------
// Golden rows.

#[test]
fn golden_rows_the_model_reproduces_load() {
    let entries = two_port_golden(|_| {});
    Model::from_bytes(&two_port_with(&as_refs(&entries))).expect("the golden rows hold");
}

#[test]
fn golden_rows_the_model_does_not_reproduce_are_refused_naming_the_value() {
    // Written by make_tiny_mlp.py with output "score" row 2 column 1 off by 0.5.
    assert_refused(
        &model_bytes("route-mlp.wrong-golden.onnx"),
        &[
            "golden check",
            "output \"score\" row 2 column 1",
            "expected",
            "got",
        ],
    );

    let mut wrong = None;
    let entries = two_port_golden(|u| {
        u[5][3] += 0.01;
        wrong = Some(u[5][3]);
    });
    let wrong = wrong.expect("tampered");
    assert_refused(
        &two_port_with(&as_refs(&entries)),
        &[
            "output \"u\" row 5 column 3",
            &format!("expected {wrong}"),
            "tolerance 0.0001",
        ],
    );

    // A looser tolerance, declared by the model, accepts the same rows.
    let mut entries = as_refs(&entries);
    entries.push(("edge.golden.tolerance", "0.05"));
    Model::from_bytes(&two_port_with(&entries)).expect("within the declared tolerance");
}

#[test]
fn hostile_golden_rows_are_refused_naming_the_key() {
    let good = two_port_golden(|_| {});
    let with = |key: &str, value: &str| -> Vec<u8> {
        let entries: Vec<(&str, &str)> = good
            .iter()
            .map(|(k, v)| (k.as_str(), if k == key { value } else { v.as_str() }))
            .collect();
        two_port_with(&entries)
    };
    let a = "edge.golden.input.a";
    let too_many = vec!["1,2,3"; MAX_GOLDEN_ROWS + 1].join(";");
    let cases: &[(&str, &str, &[&str])] = &[
        (
            a,
            "NaN,1,2",
            &[
                "\"edge.golden.input.a\" row 0 column 0",
                "not a finite number",
            ],
        ),
        (
            a,
            "1,inf,2",
            &["row 0 column 1", "\"inf\"", "not a finite number"],
        ),
        (a, "1,2,-1e39", &["row 0 column 2", "not a finite number"]),
        (a, "1,2,three", &["\"three\"", "not a finite number"]),
        (a, "1,2", &["row 0 has 2 values", "width is 3"]),
        (a, "1,2,3,4", &["row 0 has more than 3 values"]),
        (
            a,
            "1,2,3;;4,5,6",
            &["row 1 column 0", "not a finite number"],
        ),
        (a, "", &["row 0 column 0"]),
        (a, &too_many, &["more than 64 rows"]),
        // One row where the other ports have eight.
        (a, "1,2,3", &["different row counts", "[1, 8, 8, 8]"]),
    ];
    for (key, value, reasons) in cases {
        assert_refused(&with(key, value), reasons);
    }

    // Declared for some ports only.
    let partial: Vec<(&str, &str)> = as_refs(&good)
        .into_iter()
        .filter(|(key, _)| *key != "edge.golden.output.v")
        .collect();
    assert_refused(
        &two_port_with(&partial),
        &[
            "\"edge.golden.output.v\"",
            "for every input and output or for none",
        ],
    );

    for tolerance in ["-1", "NaN", "inf", "loose"] {
        let mut entries = as_refs(&good);
        entries.push(("edge.golden.tolerance", tolerance));
        assert_refused(
            &two_port_with(&entries),
            &["edge.golden.tolerance", "finite number of 0 or more"],
        );
    }
    assert_refused(
        &two_port_with(&[("edge.golden.tolerance", "0.1")]),
        &["declares no golden rows"],
    );
}

// ---------------------------------------------------------------------------------------------
// Bounds on the metadata itself.

#[test]
fn metadata_beyond_its_caps_is_refused_before_it_is_read() {
    let entries: Vec<(String, String)> = (0..=MAX_METADATA_ENTRIES)
        .map(|i| (format!("tool.key{i}"), "v".to_owned()))
        .collect();
    assert_refused(
        &two_port_with(&as_refs(&entries)),
        &["more than 64 metadata_props entries"],
    );
    let entries: Vec<(String, String)> = (0..MAX_METADATA_ENTRIES)
        .map(|i| (format!("tool.key{i}"), "v".to_owned()))
        .collect();
    Model::from_bytes(&two_port_with(&as_refs(&entries))).expect("64 entries are allowed");

    let long_value = "1".repeat(MAX_METADATA_VALUE_BYTES + 1);
    assert_refused(
        &two_port_with(&[("edge.golden.input.a", &long_value)]),
        &[
            "\"edge.golden.input.a\"",
            "65537 bytes",
            "over the 65536 byte limit",
        ],
    );
    let long_key = "k".repeat(MAX_METADATA_KEY_BYTES + 1);
    assert_refused(
        &two_port_with(&[(&long_key, "v")]),
        &["key is 1025 bytes", "over the 1024 byte limit"],
    );

    // Not UTF-8, and a value whose length runs past the end of the file.
    let mut bytes = model_bytes("two-port.onnx");
    bytes.extend(entry(b"edge.purpose", &[0xff, 0xfe]));
    assert_refused(&bytes, &["StringStringEntryProto.value is not UTF-8"]);
    let mut bytes = model_bytes("two-port.onnx");
    bytes.extend([0x72, 0x10, 0x0a, 0x7f]);
    assert_refused(&bytes, &["cut short"]);
}
