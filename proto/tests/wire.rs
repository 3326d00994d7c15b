//! The wire format, pinned: golden bytes for every message, round trips for generated values,
//! and hostile input that must decode to an error, never a panic or a peer-sized allocation.

use edge_proto::*;
use proptest::prelude::*;

fn caps() -> Capabilities {
    Capabilities {
        arch: text("aarch64"),
        os: text("linux"),
        os_version: text("Debian 12"),
        kernel: text("6.6.51"),
        hostname: text("pi"),
        cpus: 4,
        cpu_model: text("Cortex-A53"),
        memory_bytes: 512 << 20,
        disk_bytes: 32 << 30,
        disk_free_bytes: 16 << 30,
        accelerators: List::from_iter([Accelerator {
            kind: AcceleratorKind::Gpio,
            name: text("gpiochip0"),
            path: text("/dev/gpiochip0"),
        }]),
        board: Some(text("Raspberry Pi Zero 2 W Rev 1.0")),
        labels: List::from_iter([Label {
            key: text("site"),
            value: text("berlin"),
        }]),
        location: Some(Location {
            lat: 52.52,
            lon: 13.405,
            alt_m: None,
        }),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Changing any of these strings changes the wire format: append new fields and variants instead,
/// or bump the protocol version.
#[test]
fn golden_bytes() {
    let id = NodeId([0xab; 16]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            encode(&NodeMsg::Hello(Hello {
                versions: List::from_iter([1]),
                intent: Intent::Session,
                node_id: Some(id),
                agent: text("edge-node/0.1.0"),
                sync: None,
            })),
            "000000260001010101abababababababababababababababab0f656467652d6e6f64652f302e312e3000",
        ),
        (
            encode(&NodeMsg::Enroll(Box::new(EnrollRequest {
                token: text("abcdef.0123456789abcdef0123456789abcdef"),
                name: text("n1"),
                csr_der: Der::new(vec![0x30, 0x03, 1, 2, 3]).expect("fits"),
                capabilities: caps(),
            }))),
            "000000c901276162636465662e3031323334353637383961626364656630313233343536373839616263646566026e310530030102030761617263683634056c696e75780944656269616e20313206362e362e3531027069040a436f727465782d413533808080800280808080800180808080400103096770696f63686970300e2f6465762f6770696f6368697030011d526173706265727279205069205a65726f203220572052657620312e30010473697465066265726c696e01c3f5285c8f424a408fc2f5285ccf2a4000",
        ),
        (
            encode(&NodeMsg::Status(Status {
                cpu_percent: 12.5,
                memory_used_bytes: 1000,
                disk_free_bytes: 2000,
                uptime_secs: 3600,
            })),
            "0000000b0300004841e807d00f901c",
        ),
        (
            encode(&OrchMsg::Welcome(Welcome {
                version: 1,
                node_id: id,
                time_ms: 1_765_000_000_000,
            })),
            "000000180001abababababababababababababababab80e4ca91af33",
        ),
        (
            encode(&OrchMsg::Reject(Reject {
                code: RejectCode::TokenExpired,
                message: text("token abcdef expired"),
            })),
            "00000017020214746f6b656e206162636465662065787069726564",
        ),
        (
            encode(&OrchMsg::Reject(Reject {
                code: RejectCode::IdentityConflict,
                message: text("identity in use"),
            })),
            "00000012020c0f6964656e7469747920696e20757365",
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(hex(&bytes), want);
    }
}

fn arb_text<const N: usize>() -> impl Strategy<Value = Text<N>> {
    proptest::collection::vec(any::<char>(), 0..N).prop_map(|chars| {
        let s: String = chars.into_iter().collect();
        text::<N>(&s)
    })
}

fn arb_caps() -> impl Strategy<Value = Capabilities> {
    (
        (
            arb_text::<16>(),
            arb_text::<64>(),
            any::<u16>(),
            any::<u64>(),
        ),
        proptest::collection::vec((arb_text::<63>(), arb_text::<63>()), 0..32),
        proptest::option::of((-90.0..=90.0f64, -180.0..=180.0f64)),
        proptest::collection::vec(arb_text::<64>(), 0..16),
    )
        .prop_map(
            |((arch, host, cpus, mem), labels, loc, accels)| Capabilities {
                arch,
                os: text("linux"),
                os_version: Text::new(),
                kernel: Text::new(),
                hostname: host,
                cpus,
                cpu_model: Text::new(),
                memory_bytes: mem,
                disk_bytes: mem / 2,
                disk_free_bytes: mem / 3,
                accelerators: accels
                    .into_iter()
                    .map(|name| Accelerator {
                        kind: AcceleratorKind::Npu,
                        path: text(&name),
                        name,
                    })
                    .collect(),
                board: None,
                labels: labels
                    .into_iter()
                    .map(|(key, value)| Label { key, value })
                    .collect(),
                location: loc.map(|(lat, lon)| Location {
                    lat,
                    lon,
                    alt_m: Some(34.0),
                }),
            },
        )
}

fn arb_node_msg() -> impl Strategy<Value = NodeMsg> {
    prop_oneof![
        (
            proptest::collection::vec(any::<u16>(), 0..8),
            any::<Option<[u8; 16]>>(),
            arb_text::<64>()
        )
            .prop_map(|(versions, id, agent)| NodeMsg::Hello(Hello {
                versions: versions.into_iter().collect(),
                intent: if id.is_some() {
                    Intent::Session
                } else {
                    Intent::Enroll
                },
                node_id: id.map(NodeId),
                agent,
                sync: None,
            })),
        (
            arb_text::<64>(),
            arb_text::<63>(),
            proptest::collection::vec(any::<u8>(), 0..2048),
            arb_caps()
        )
            .prop_map(|(token, name, csr, capabilities)| NodeMsg::Enroll(Box::new(
                EnrollRequest {
                    token,
                    name,
                    csr_der: Der::new(csr).expect("under the bound"),
                    capabilities,
                }
            ))),
        arb_caps().prop_map(|c| NodeMsg::Capabilities(Box::new(c))),
        (0.0..=100.0f32, any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(c, m, d, u)| {
            NodeMsg::Status(Status {
                cpu_percent: c,
                memory_used_bytes: m,
                disk_free_bytes: d,
                uptime_secs: u,
            })
        }),
    ]
}

proptest! {
    #[test]
    fn node_messages_round_trip(msg in arb_node_msg()) {
        let frame = encode(&msg);
        prop_assert!(frame.len() - 4 <= MAX_FRAME_LEN);
        let mut dec = FrameDecoder::new();
        // Arrive in two pieces, as bytes off a stream do.
        let cut = frame.len() / 2;
        dec.push(&frame[..cut]);
        dec.push(&frame[cut..]);
        let back: NodeMsg = dec.next_msg()?.expect("a whole frame was pushed");
        prop_assert_eq!(back, msg);
        prop_assert!(dec.finish().is_ok());
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<NodeMsg>(&bytes);
        let _ = decode::<OrchMsg>(&bytes);
        let mut dec = FrameDecoder::new();
        dec.push(&bytes);
        while let Ok(Some(_)) = dec.next_msg::<NodeMsg>() {}
    }
}

#[test]
fn huge_length_prefix_is_refused_before_buffering() {
    let mut dec = FrameDecoder::new();
    dec.push(&u32::MAX.to_be_bytes());
    assert_eq!(
        dec.next_msg::<NodeMsg>(),
        Err(DecodeError::TooLarge {
            len: u32::MAX as usize,
            max: MAX_FRAME_LEN
        })
    );
}

#[test]
fn truncated_frame_is_an_error_at_end_of_stream() {
    let frame = encode(&OrchMsg::Welcome(Welcome {
        version: 1,
        node_id: NodeId([1; 16]),
        time_ms: 1_765_000_000_000,
    }));
    let mut dec = FrameDecoder::new();
    dec.push(&frame[..frame.len() - 1]);
    assert_eq!(dec.next_msg::<OrchMsg>(), Ok(None));
    assert_eq!(dec.finish(), Err(DecodeError::Truncated));
    // A body cut short inside the message, with an honest prefix, is malformed.
    let body = &frame[4..frame.len() - 1];
    assert!(matches!(
        decode::<OrchMsg>(body),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn unknown_variant_is_malformed() {
    // Far past the last variant, so that appending one does not make it known.
    assert_eq!(
        decode::<NodeMsg>(&[0x7f]),
        Err(DecodeError::Malformed(
            "unknown variant or field over its bound"
        ))
    );
}

#[test]
fn trailing_bytes_are_refused() {
    let mut frame = encode(&NodeMsg::Status(Status {
        cpu_percent: 1.0,
        memory_used_bytes: 1,
        disk_free_bytes: 1,
        uptime_secs: 1,
    }));
    frame.push(0);
    assert_eq!(
        decode::<NodeMsg>(&frame[4..]),
        Err(DecodeError::TrailingBytes(1))
    );
}

#[test]
fn oversized_fields_are_decode_errors() {
    // A Hello whose agent string claims 65 bytes (the bound is 64): variant 0, one version,
    // intent, no node id, then the string.
    let mut body = vec![0u8, 1, 1, 0, 0, 65];
    body.extend([b'a'; 65]);
    assert_eq!(
        decode::<NodeMsg>(&body),
        Err(DecodeError::Malformed(
            "unknown variant or field over its bound"
        ))
    );
    // Nine versions where eight fit.
    let body = [0u8, 9, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0];
    assert!(matches!(
        decode::<NodeMsg>(&body),
        Err(DecodeError::Malformed(_))
    ));
    // A CSR blob that claims far more than its bound must not allocate what it claims.
    let mut body = vec![1u8, 0, 0];
    body.extend([0xff, 0xff, 0xff, 0xff, 0x0f]); // varint length u32::MAX
    assert!(matches!(
        decode::<NodeMsg>(&body),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn node_id_text_round_trips() {
    let id = NodeId([0x0f, 0xa0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 0xff]);
    let s = id.to_string();
    assert_eq!(s, "0fa0010203040506070809...".replace("...", "0a0b0c0dff"));
    assert_eq!(NodeId::parse(&s), Some(id));
    assert_eq!(NodeId::parse("zz"), None);
    assert_eq!(NodeId::parse(&"g".repeat(32)), None);
}

#[test]
fn versions_negotiate_to_the_highest_common() {
    assert_eq!(negotiate_version(&[1, 7]), Some(1));
    assert_eq!(negotiate_version(&[1, 2]), Some(2));
    assert_eq!(negotiate_version(&[2]), Some(2));
    assert_eq!(negotiate_version(&[3, 4]), None);
}

#[test]
fn a_model_purpose_is_offered_only_on_versions_that_decode_it() {
    use edge_proto::ModelPurpose;
    assert_eq!(ModelPurpose::Route.since(), 1);
    assert_eq!(ModelPurpose::Warm.since(), 2);
    for purpose in [ModelPurpose::Route, ModelPurpose::Warm] {
        assert!(
            edge_proto::SUPPORTED_VERSIONS.contains(&purpose.since()),
            "{purpose:?} needs a version this build speaks"
        );
    }
}

#[test]
fn text_cuts_at_a_char_boundary() {
    let t: Text<4> = text("añbc");
    assert_eq!(t.as_str(), "añb");
}

#[test]
fn reject_codes_round_trip_through_close_codes() {
    for (i, code) in RejectCode::ALL.iter().enumerate() {
        assert_eq!(*code as usize, i, "ALL is in wire order");
        assert_eq!(
            RejectCode::from_close_code(code.close_code().into()),
            Some(*code)
        );
        // The wire tag is the same position.
        assert_eq!(encode(code)[4..], [i as u8]);
    }
    assert_eq!(RejectCode::from_close_code(0), None);
    assert_eq!(RejectCode::from_close_code(u64::MAX), None);
}

fn assignment() -> Assignment {
    Assignment {
        workload: text("hello"),
        version: text("1.0.0"),
        generation: 3,
        artifact: [0x11; 32],
        artifact_size: 5 << 20,
        args: Seq::new(vec![
            Str::new("--port").expect("fits"),
            Str::new("8080").expect("fits"),
        ])
        .expect("fits"),
        env: Seq::new(vec![(
            Str::new("GREETING").expect("fits"),
            Str::new("hi").expect("fits"),
        )])
        .expect("fits"),
        working_dir: None,
        cpu_millis: Some(250),
        memory_bytes: Some(32 << 20),
        disk_bytes: None,
        restart: RestartPolicy::Always,
        health: Some(HealthProbe {
            check: HealthCheck::Http {
                port: 8080,
                path: Str::new("/healthz").expect("fits"),
            },
            interval_secs: 5,
            timeout_secs: 2,
            success_threshold: 1,
            failure_threshold: 3,
        }),
        expose: Seq::new(vec![
            Expose {
                port: 8080,
                host: Some(Str::new("shop.example").expect("fits")),
                path_prefix: Some(Str::new("/api").expect("fits")),
                weight: 100,
                timeout_secs: 30,
                retries: 2,
                cache: true,
                stale_if_offline_secs: 86_400,
                balance: Balance::PeakEwma,
            },
            Expose {
                port: 8081,
                host: None,
                path_prefix: Some(Str::new("/").expect("fits")),
                weight: 0,
                timeout_secs: 1,
                retries: 0,
                cache: false,
                stale_if_offline_secs: 0,
                balance: Balance::RoundRobin,
            },
        ])
        .expect("fits"),
        scale_to_zero_idle_secs: Some(300),
        image: None,
    }
}

/// The workload messages, pinned like the rest.
#[test]
fn golden_bytes_of_workload_messages() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            encode(&OrchMsg::Assign(Box::new(assignment()))),
            concat!(
                "00000097030568656c6c6f05312e302e30031111111111111111111111111111111111111111111111",
                "1111111111111111118080c00202062d2d706f7274043830383001084752454554494e470268690001",
                "fa01018080801000000100903f082f6865616c74687a05020103",
                // expose: two routes, then scale_to_zero_idle_secs = Some(300).
                "02903f010c73686f702e6578616d706c6501042f617069641e020180a30500",
                "913f0001012f000100000001",
                // scale_to_zero_idle_secs = Some(300), then no image.
                "01ac0200",
            ),
        ),
        (
            encode(&OrchMsg::Assign(Box::new(Assignment {
                image: Some(Image {
                    platforms: Seq::new(vec![ImagePlatform {
                        arch: text("aarch64"),
                        manifest: [0x22; 32],
                        manifest_size: 529,
                        download_bytes: 1_048_576,
                        unpacked_bytes: 2_097_152,
                    }])
                    .expect("fits"),
                    allow_setuid: true,
                    read_only_root: true,
                }),
                ..assignment()
            }))),
            concat!(
                "000000cb030568656c6c6f05312e302e30031111111111111111111111111111111111111111111111",
                "1111111111111111118080c00202062d2d706f7274043830383001084752454554494e470268690001",
                "fa01018080801000000100903f082f6865616c74687a05020103",
                "02903f010c73686f702e6578616d706c6501042f617069641e020180a30500",
                "913f0001012f000100000001",
                "01ac02",
                // image: one platform, aarch64, its manifest's digest and size, the download
                // and the unpacked bytes; then setuid files allowed, and a read-only root.
                "010107616172636836342222222222222222222222222222222222222222222222222222222222222222",
                "9104808040808080010101",
            ),
        ),
        (
            encode(&NodeMsg::Workload(Box::new(WorkloadReport {
                workload: text("hello"),
                generation: 3,
                state: WorkloadState::Running,
                restarts: 1,
                pid: Some(4242),
                exit_code: None,
                message: Text::new(),
            }))),
            "0000000f060568656c6c6f0303010192210000",
        ),
        (
            encode(&NodeMsg::Admission(Box::new(AdmissionReply {
                workload: text("hello"),
                generation: 3,
                rejected: Some(text("needs 32 MiB, 20 MiB free")),
            }))),
            "00000023050568656c6c6f0301196e65656473203332204d69422c203230204d69422066726565",
        ),
        (
            encode(&NodeMsg::Runtime(Box::new(RuntimeInfo {
                limits: LimitsKind::CgroupV1,
                container_runtimes: [text("runc")].into_iter().collect(),
                model_operators: [text("Gemm"), text("Relu")].into_iter().collect(),
            }))),
            // cgroup v1, then one runtime: runc, then two model operators.
            "000000130401010472756e63020447656d6d0452656c75",
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(hex(&bytes), want);
    }
}

#[test]
fn assignments_round_trip_and_oversized_ones_are_refused() {
    let a = OrchMsg::Assign(Box::new(assignment()));
    let frame = encode(&a);
    assert_eq!(decode::<OrchMsg>(&frame[4..]), Ok(a));
    // Sixty-four 4 KiB arguments are within every field bound but not within one frame:
    // try_encode says so instead of building a frame the peer would refuse.
    let mut big = assignment();
    big.args = Seq::new(vec![Str::new("x".repeat(4096)).expect("fits"); 64]).expect("fits");
    assert!(matches!(
        try_encode(&OrchMsg::Assign(Box::new(big))),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn routes_over_their_bounds_are_refused() {
    let frame = encode(&OrchMsg::Assign(Box::new(assignment())));
    let body = &frame[4..];
    // The first route's host is "shop.example" (12 bytes): make it claim 254, one over the
    // bound, followed by that many bytes.
    let at = body
        .windows(13)
        .position(|w| w == b"\x0cshop.example")
        .expect("the host is in the message");
    let mut long = body[..at].to_vec();
    long.extend([0xfe, 0x01]); // varint 254
    long.extend([b'h'; 254]);
    long.extend(&body[at + 13..]);
    assert!(matches!(
        decode::<OrchMsg>(&long),
        Err(DecodeError::Malformed(_))
    ));
    let mut fits = body[..at].to_vec();
    fits.extend([0xfd, 0x01]); // varint 253
    fits.extend([b'h'; 253]);
    fits.extend(&body[at + 13..]);
    assert!(
        decode::<OrchMsg>(&fits).is_ok(),
        "253 bytes is the bound itself"
    );

    // Seventeen routes where sixteen fit: an assignment without routes ends in their count
    // (0), no scale to zero (0) and no image (0); the count and the routes are spliced in
    // there.
    let mut bare = assignment();
    bare.expose = Seq::default();
    bare.scale_to_zero_idle_secs = None;
    let bare = encode(&OrchMsg::Assign(Box::new(bare)));
    let head = &bare[4..bare.len() - 3];
    let route = encode(&assignment().expose.as_slice()[1]);
    let with_routes = |n: u8| {
        let mut body = head.to_vec();
        body.push(n);
        for _ in 0..n {
            body.extend(&route[4..]);
        }
        body.extend([0, 0]);
        body
    };
    let sixteen = u8::try_from(Assignment::MAX_EXPOSE).expect("small");
    match decode::<OrchMsg>(&with_routes(sixteen)) {
        Ok(OrchMsg::Assign(a)) => assert_eq!(a.expose.as_slice().len(), Assignment::MAX_EXPOSE),
        other => panic!("sixteen routes fit: {other:?}"),
    }
    assert!(matches!(
        decode::<OrchMsg>(&with_routes(sixteen + 1)),
        Err(DecodeError::Malformed(_))
    ));
    // A path prefix one byte over its bound.
    let prefix_of = |len: u16, varint: &[u8]| {
        let mut body = vec![0x90, 0x3f, 0, 1]; // port 8080, no host, a prefix
        body.extend(varint);
        body.extend(vec![b'/'; usize::from(len)]);
        body.extend([0x64, 0x1e, 2, 1, 0, 0]);
        body
    };
    let at_bound = decode::<Expose>(&prefix_of(1024, &[0x80, 0x08])).expect("1024 bytes fit");
    assert_eq!(
        at_bound.path_prefix.map(|p| p.as_str().len()),
        Some(Expose::MAX_PATH_PREFIX_BYTES)
    );
    assert!(matches!(
        decode::<Expose>(&prefix_of(1025, &[0x81, 0x08])),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn bounded_heap_fields_refuse_before_allocating() {
    assert!(Str::<4>::new("abcde").is_none());
    assert!(Seq::<u8, 2>::new(vec![1, 2, 3]).is_none());
    // A Seq<u8, 2> announcing u32::MAX items.
    let body = [0xff, 0xff, 0xff, 0xff, 0x0f];
    assert!(matches!(
        decode::<Seq<u8, 2>>(&body),
        Err(DecodeError::Malformed(_))
    ));
    // Three items where two fit.
    assert!(decode::<Seq<u8, 2>>(&[3, 1, 2, 3]).is_err());
    assert_eq!(
        decode::<Seq<u8, 2>>(&[2, 1, 2]).map(Seq::into_vec),
        Ok(vec![1, 2])
    );
    // A string one byte over its bound.
    let mut body = vec![5u8];
    body.extend(b"abcde");
    assert!(decode::<Str<4>>(&body).is_err());
    assert_eq!(
        decode::<Str<5>>(&body).map(|s| s.into_string()),
        Ok("abcde".to_owned())
    );
}

#[test]
fn golden_bytes_of_artifact_streams() {
    let open = encode(&StreamOpen::Artifact(ArtifactRequest {
        digest: [0x22; 32],
        offset: 1 << 20,
    }));
    assert_eq!(
        hex(&open),
        format!("00000024{}{}{}", "00", "22".repeat(32), "808040")
    );
    let reply = encode(&ArtifactReply::Sending {
        size: 5 << 20,
        offset: 1 << 20,
    });
    assert_eq!(hex(&reply), "00000008008080c002808040");
}

#[test]
fn a_stream_of_frames_in_odd_pieces_decodes_in_order() {
    let frames: Vec<Vec<u8>> = (0..500u64)
        .map(|i| {
            encode(&NodeMsg::Status(Status {
                cpu_percent: 1.0,
                memory_used_bytes: i,
                disk_free_bytes: i * 2,
                uptime_secs: i * 3,
            }))
        })
        .collect();
    let stream: Vec<u8> = frames.concat();
    let mut dec = FrameDecoder::new();
    let mut seen = Vec::new();
    for piece in stream.chunks(7) {
        dec.push(piece);
        while let Some(NodeMsg::Status(s)) = dec.next_msg::<NodeMsg>().expect("valid") {
            seen.push(s.memory_used_bytes);
        }
    }
    assert_eq!(seen, (0..500).collect::<Vec<_>>());
    assert!(dec.finish().is_ok());
}

#[test]
fn golden_bytes_of_logs_streams() {
    let open = encode(&OrchStreamOpen::Logs(LogsRequest {
        workload: text("hello"),
        tail_lines: 100,
        follow: true,
    }));
    assert_eq!(hex(&open), "00000009000568656c6c6f6401");
    assert_eq!(hex(&encode(&LogsReply::Streaming)), "0000000100");
    assert_eq!(hex(&encode(&LogsReply::NotFound)), "0000000101");
    let lines = encode(&LogLines {
        lines: Seq::new(vec![
            Str::new("a").expect("fits"),
            Str::new("bc").expect("fits"),
        ])
        .expect("fits"),
    });
    assert_eq!(hex(&lines), "00000006020161026263");
}

#[test]
fn logs_requests_round_trip() {
    for follow in [false, true] {
        let open = OrchStreamOpen::Logs(LogsRequest {
            workload: text("a-workload-name-of-some-length"),
            tail_lines: u32::MAX,
            follow,
        });
        let frame = encode(&open);
        assert_eq!(decode::<OrchStreamOpen>(&frame[4..]), Ok(open));
    }
    for reply in [LogsReply::Streaming, LogsReply::NotFound] {
        assert_eq!(decode::<LogsReply>(&encode(&reply)[4..]), Ok(reply));
    }
}

#[test]
fn log_lines_over_their_bounds_are_refused() {
    // 257 empty lines where 256 fit.
    let mut body = vec![0x81, 0x02];
    body.extend([0u8; 257]);
    assert!(matches!(
        decode::<LogLines>(&body),
        Err(DecodeError::Malformed(_))
    ));
    // One line a byte over 4096: varint 4097, then the bytes.
    let mut body = vec![1u8, 0x81, 0x20];
    body.extend([b'x'; 4097]);
    assert!(matches!(
        decode::<LogLines>(&body),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn packed_log_lines_fit_frames_even_at_their_largest() {
    // 256 lines of the longest kind are 1 MiB: they need several frames.
    let lines = vec!["x".repeat(LogLines::MAX_LINE_BYTES); LogLines::MAX_LINES];
    let packed = LogLines::pack(lines.clone());
    assert!(packed.len() > 1);
    let mut back = Vec::new();
    for frame in &packed {
        let bytes = try_encode(frame).expect("each packed frame fits");
        // Full: one more line of this size would not have fitted.
        assert!(
            bytes.len() - 4 + LogLines::MAX_LINE_BYTES + 2 > MAX_FRAME_LEN
                || frame == packed.last().expect("some")
        );
        let decoded: LogLines = decode(&bytes[4..]).expect("decodes");
        back.extend(decoded.lines.into_vec().into_iter().map(Str::into_string));
    }
    assert_eq!(back, lines);
    // Many short lines are capped by the line count, not the size.
    let packed = LogLines::pack((0..600).map(|i| i.to_string()));
    let counts: Vec<usize> = packed.iter().map(|l| l.lines.as_slice().len()).collect();
    assert_eq!(counts, [256, 256, 88]);
    assert!(LogLines::pack(Vec::new()).is_empty());
}

#[test]
fn packing_cuts_long_lines_at_a_character_boundary() {
    // 4095 ASCII bytes then a 2-byte character straddling the bound.
    let line = format!("{}ñ and more", "x".repeat(LogLines::MAX_LINE_BYTES - 1));
    let packed = LogLines::pack([line, "next".to_owned()]);
    let lines: Vec<&str> = packed[0].lines.as_slice().iter().map(Str::as_str).collect();
    assert_eq!(
        lines,
        ["x".repeat(LogLines::MAX_LINE_BYTES - 1).as_str(), "next"]
    );
}

proptest! {
    #[test]
    fn packed_log_lines_round_trip_in_order(
        lines in proptest::collection::vec(
            proptest::collection::vec(any::<char>(), 0..1500).prop_map(String::from_iter),
            0..400,
        )
    ) {
        let packed = LogLines::pack(lines.clone());
        let mut back = Vec::new();
        for frame in &packed {
            let bytes = try_encode(frame).expect("each packed frame fits");
            prop_assert!(!frame.lines.as_slice().is_empty());
            let decoded: LogLines = decode(&bytes[4..]).expect("decodes");
            prop_assert_eq!(&decoded, frame);
            back.extend(decoded.lines.into_vec().into_iter().map(Str::into_string));
        }
        let want: Vec<String> = lines
            .iter()
            .map(|l| {
                let mut end = l.len().min(LogLines::MAX_LINE_BYTES);
                while !l.is_char_boundary(end) {
                    end -= 1;
                }
                l[..end].to_owned()
            })
            .collect();
        prop_assert_eq!(back, want);
    }

    #[test]
    fn random_bytes_never_panic_logs_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<OrchStreamOpen>(&bytes);
        let _ = decode::<LogsReply>(&bytes);
        let _ = decode::<LogLines>(&bytes);
    }
}

/// The variants the messages above do not carry, pinned too: a unit variant is its index
/// alone, the others their index and then their fields.
#[test]
fn golden_bytes_of_every_other_variant() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            // The tail of the `Enroll` above: the same capabilities.
            encode(&NodeMsg::Capabilities(Box::new(caps()))),
            "00000098020761617263683634056c696e75780944656269616e20313206362e362e3531027069040a436f727465782d413533808080800280808080800180808080400103096770696f63686970300e2f6465762f6770696f6368697030011d526173706265727279205069205a65726f203220572052657620312e30010473697465066265726c696e01c3f5285c8f424a408fc2f5285ccf2a4000",
        ),
        (
            encode(&OrchMsg::Enrolled(Enrolled {
                node_id: NodeId([0xab; 16]),
                cert_der: Der::new(vec![0x30, 0x01, 0x01]).expect("fits"),
                ca_der: Der::new(vec![0x30, 0x00]).expect("fits"),
            })),
            "0000001801abababababababababababababababab03300101023000",
        ),
        (
            encode(&OrchMsg::Unassign(Unassign {
                workload: text("hello"),
            })),
            "00000007040568656c6c6f",
        ),
        (encode(&HealthCheck::Tcp { port: 8080 }), "0000000301903f"),
        (
            encode(&HealthCheck::Exec {
                command: Str::new("/bin/check").expect("fits"),
                args: Seq::new(vec![Str::new("-q").expect("fits")]).expect("fits"),
            }),
            "00000010020a2f62696e2f636865636b01022d71",
        ),
        (
            encode(&ArtifactReply::BadOffset { size: 10 }),
            "00000002020a",
        ),
        (
            encode(&OrchMsg::Model(Box::new(FleetModel {
                purpose: ModelPurpose::Route,
                digest: [0xab; 32],
                size: 4096,
            }))),
            // Variant 12, the purpose, the 32 digest bytes as they are, the size as a varint.
            "000000240c00abababababababababababababababababababababababababababababababab8020",
        ),
        (
            encode(&OrchMsg::Model(Box::new(FleetModel {
                purpose: ModelPurpose::Warm,
                digest: [0xab; 32],
                size: 4096,
            }))),
            // The same with purpose 1.
            "000000240c01abababababababababababababababababababababababababababababababab8020",
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(hex(&bytes), want);
    }
    let units: Vec<(Vec<u8>, u8)> = vec![
        (encode(&Intent::Enroll), 0),
        (encode(&RejectCode::UnsupportedVersion), 0),
        (encode(&RejectCode::BadToken), 1),
        (encode(&RejectCode::TokenSpent), 3),
        (encode(&RejectCode::NameTaken), 4),
        (encode(&RejectCode::IdentityMismatch), 5),
        (encode(&RejectCode::UnknownNode), 6),
        (encode(&RejectCode::WrongIntent), 7),
        (encode(&RejectCode::Malformed), 8),
        (encode(&RejectCode::BadCsr), 9),
        (encode(&RejectCode::Internal), 10),
        (encode(&RejectCode::Timeout), 11),
        (encode(&AcceleratorKind::Gpu), 0),
        (encode(&AcceleratorKind::Npu), 1),
        (encode(&AcceleratorKind::Video), 2),
        (encode(&AcceleratorKind::Other), 4),
        (encode(&LimitsKind::CgroupV2), 0),
        (encode(&LimitsKind::Rlimit), 2),
        (encode(&RestartPolicy::OnFailure), 1),
        (encode(&RestartPolicy::Never), 2),
        (encode(&WorkloadState::Pending), 0),
        (encode(&WorkloadState::Downloading), 1),
        (encode(&WorkloadState::Starting), 2),
        (encode(&WorkloadState::Unhealthy), 4),
        (encode(&WorkloadState::Backoff), 5),
        (encode(&WorkloadState::Failed), 6),
        (encode(&WorkloadState::Stopped), 7),
        (encode(&ArtifactReply::NotFound), 1),
        (encode(&Balance::PeakEwma), 0),
        (encode(&Balance::RoundRobin), 1),
        (encode(&Balance::LeastRequests), 2),
    ];
    for (bytes, tag) in units {
        assert_eq!(hex(&bytes), format!("00000001{tag:02x}"));
    }
}

fn routes() -> WorkloadRoutes {
    WorkloadRoutes {
        workload: text("hello"),
        generation: 3,
        expose: Seq::new(vec![assignment().expose.as_slice()[1].clone()]).expect("fits"),
        instances: Seq::new(vec![
            PeerInstance {
                node: NodeId([0xab; 16]),
                peer: PeerAddr {
                    ip: IpBytes::V4([10, 0, 0, 7]),
                    port: 8443,
                },
                location: Some(Location {
                    lat: 52.52,
                    lon: 13.405,
                    alt_m: None,
                }),
            },
            PeerInstance {
                node: NodeId([0xcd; 16]),
                peer: PeerAddr {
                    ip: IpBytes::V6(core::net::Ipv6Addr::LOCALHOST.octets()),
                    port: 443,
                },
                location: None,
            },
        ])
        .expect("fits"),
    }
}

/// The messages of peer routing, pinned like the rest.
#[test]
fn golden_bytes_of_peer_routing() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            encode(&NodeMsg::Proxy(ProxyAdvert {
                peer: Some(PeerAddr {
                    ip: IpBytes::V4([192, 168, 1, 20]),
                    port: 8443,
                }),
            })),
            "00000009070100c0a80114fb41",
        ),
        (
            encode(&NodeMsg::Proxy(ProxyAdvert { peer: None })),
            "000000020700",
        ),
        (
            encode(&OrchMsg::Routes(Box::new(routes()))),
            "00000063050568656c6c6f0301913f0001012f00010000000102abababababababababababababababab000a000007fb4101c3f5285c8f424a408fc2f5285ccf2a4000cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd0100000000000000000000000000000001bb0300",
        ),
        (
            encode(&OrchMsg::Unroute(Unroute {
                workload: text("hello"),
            })),
            "00000007060568656c6c6f",
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(hex(&bytes), want);
    }
}

#[test]
fn peer_addresses_convert_to_and_from_socket_addresses() {
    use std::net::SocketAddr;
    for text in [
        "192.168.1.20:8443",
        "[::1]:443",
        "[2001:db8::7]:65535",
        "0.0.0.0:0",
    ] {
        let addr: SocketAddr = text.parse().expect("a socket address");
        let peer = PeerAddr::from(addr);
        assert_eq!(SocketAddr::from(peer), addr);
        assert_eq!(peer.to_string(), text);
    }
    // A scope id has no meaning on another host: it does not cross the wire.
    let scoped: SocketAddr = "[fe80::1%3]:8443".parse().expect("a scoped address");
    assert_eq!(
        SocketAddr::from(PeerAddr::from(scoped)).to_string(),
        "[fe80::1]:8443"
    );
}

/// The largest routes message the bounds allow: sixteen routes with the longest host and
/// path prefix, 64 instances with IPv6 addresses and locations.
fn largest_routes() -> WorkloadRoutes {
    let route = Expose {
        port: u16::MAX,
        host: Some(Str::new("h".repeat(Expose::MAX_HOST_LEN)).expect("fits")),
        path_prefix: Some(Str::new("/".repeat(Expose::MAX_PATH_PREFIX_BYTES)).expect("fits")),
        weight: u16::MAX,
        timeout_secs: u32::MAX,
        retries: u8::MAX,
        cache: true,
        stale_if_offline_secs: u32::MAX,
        balance: Balance::LeastRequests,
    };
    let instance = PeerInstance {
        node: NodeId([0xff; 16]),
        peer: PeerAddr {
            ip: IpBytes::V6([0xff; 16]),
            port: u16::MAX,
        },
        location: Some(Location {
            lat: -89.999_999,
            lon: 179.999_999,
            alt_m: Some(8848.86),
        }),
    };
    WorkloadRoutes {
        workload: text(&"w".repeat(MAX_NAME_LEN)),
        generation: u64::MAX,
        expose: Seq::new(vec![route; Assignment::MAX_EXPOSE]).expect("fits"),
        instances: Seq::new(vec![instance; WorkloadRoutes::MAX_INSTANCES]).expect("fits"),
    }
}

#[test]
fn the_largest_routes_message_fits_one_frame_and_round_trips() {
    for msg in [
        OrchMsg::Routes(Box::new(largest_routes())),
        OrchMsg::Routes(Box::new(routes())),
        OrchMsg::Unroute(Unroute {
            workload: text(&"w".repeat(MAX_NAME_LEN)),
        }),
    ] {
        let frame = try_encode(&msg).expect("the bounds keep it within a frame");
        assert!(frame.len() - 4 <= MAX_FRAME_LEN);
        assert_eq!(decode::<OrchMsg>(&frame[4..]), Ok(msg));
    }
    for advert in [
        ProxyAdvert { peer: None },
        ProxyAdvert {
            peer: Some(PeerAddr {
                ip: IpBytes::V6([0xff; 16]),
                port: u16::MAX,
            }),
        },
    ] {
        let msg = NodeMsg::Proxy(advert);
        assert_eq!(decode::<NodeMsg>(&encode(&msg)[4..]), Ok(msg));
    }
}

#[test]
fn routes_over_their_bounds_or_malformed_are_refused() {
    let malformed = |body: &[u8]| {
        assert!(
            matches!(decode::<OrchMsg>(body), Err(DecodeError::Malformed(_))),
            "{} decoded",
            hex(body)
        );
    };
    // Sixty-five instances where sixty-four fit: the body of a routes message without
    // instances ends in their count (0), where the count and the instances are spliced in.
    let mut bare = routes();
    bare.instances = Seq::default();
    let bare = encode(&OrchMsg::Routes(Box::new(bare)));
    let head = &bare[4..bare.len() - 1];
    let one = encode(&routes().instances.as_slice()[1]);
    let with_instances = |n: u8| {
        let mut body = head.to_vec();
        body.push(n);
        for _ in 0..n {
            body.extend(&one[4..]);
        }
        body
    };
    let most = u8::try_from(WorkloadRoutes::MAX_INSTANCES).expect("small");
    match decode::<OrchMsg>(&with_instances(most)) {
        Ok(OrchMsg::Routes(r)) => {
            assert_eq!(r.instances.as_slice().len(), WorkloadRoutes::MAX_INSTANCES)
        }
        other => panic!("64 instances fit: {other:?}"),
    }
    malformed(&with_instances(most + 1));
    // A count that claims far more than the bound allocates nothing it claims.
    let mut body = head.to_vec();
    body.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
    malformed(&body);
    // An address family that does not exist (tag 2), and an IPv4 address cut short.
    let mut body = with_instances(1);
    let family = head.len() + 1 + 16;
    assert_eq!(body[family], 1, "the instance's address is IPv6");
    body[family] = 2;
    malformed(&body);
    let mut short = head.to_vec();
    short.push(1);
    short.extend([0xcd; 16]);
    short.extend([0, 127, 0]);
    malformed(&short);
    // Seventeen routes where sixteen fit.
    let mut many = largest_routes();
    many.instances = Seq::default();
    let frame = encode(&OrchMsg::Routes(Box::new(many)));
    let body = &frame[4..];
    let count_at = 1 + 1 + MAX_NAME_LEN + 10;
    assert_eq!(usize::from(body[count_at]), Assignment::MAX_EXPOSE);
    let route_len = (body.len() - count_at - 2) / Assignment::MAX_EXPOSE;
    let mut seventeen = body[..count_at].to_vec();
    seventeen.push(17);
    seventeen.extend(&body[count_at + 1..body.len() - 1]);
    seventeen.extend(&body[count_at + 1..count_at + 1 + route_len]);
    seventeen.push(0);
    malformed(&seventeen);
    // A workload name one byte over its bound in an unroute.
    let mut body = vec![6u8, 64];
    body.extend([b'w'; 64]);
    malformed(&body);
    // A port that overflows u16 in an advert.
    malformed_node(&[7, 1, 0, 127, 0, 0, 1, 0xff, 0xff, 0x04]);
}

fn malformed_node(body: &[u8]) {
    assert!(matches!(
        decode::<NodeMsg>(body),
        Err(DecodeError::Malformed(_))
    ));
}

proptest! {
    #[test]
    fn random_bytes_never_panic_routing_decoders(
        tail in proptest::collection::vec(any::<u8>(), 0..512),
        tag in 5u8..=6,
    ) {
        let mut body = vec![tag];
        body.extend(&tail);
        let _ = decode::<OrchMsg>(&body);
        let mut body = vec![7u8];
        body.extend(&tail);
        let _ = decode::<NodeMsg>(&body);
    }
}

fn traffic() -> TrafficReport {
    TrafficReport {
        epoch: 0x102,
        routes: Seq::new(vec![RouteTraffic {
            route: text("shop"),
            requests: 10,
            hit: 4,
            miss: 5,
            stale: 1,
            revalidated: 0,
            bypass: 0,
            errors_5xx: 1,
            retries: 2,
            breaker_opens: 0,
            latency: Seq::new(vec![3, 7]).expect("fits"),
        }])
        .expect("fits"),
    }
}

fn largest_traffic() -> TrafficReport {
    let name = "r".repeat(MAX_NAME_LEN);
    let route = RouteTraffic {
        route: text(&name),
        requests: u64::MAX,
        hit: u64::MAX,
        miss: u64::MAX,
        stale: u64::MAX,
        revalidated: u64::MAX,
        bypass: u64::MAX,
        errors_5xx: u64::MAX,
        retries: u64::MAX,
        breaker_opens: u64::MAX,
        latency: Seq::new(vec![u64::MAX; TrafficReport::MAX_LATENCY_SLOTS]).expect("fits"),
    };
    TrafficReport {
        epoch: u64::MAX,
        routes: Seq::new(vec![route; TrafficReport::MAX_ROUTES]).expect("fits"),
    }
}

/// The proxy's traffic report, pinned like the rest.
#[test]
fn golden_bytes_of_traffic() {
    assert_eq!(
        hex(&encode(&NodeMsg::Traffic(Box::new(traffic())))),
        "00000015088202010473686f700a0405010000010200020307",
    );
    assert_eq!(
        hex(&encode(&NodeMsg::Traffic(Box::default()))),
        "00000003080000",
    );
    assert_eq!(
        LATENCY_BUCKETS_US.len() + 1,
        17,
        "the node's slots fit the wire's"
    );
    const { assert!(LATENCY_BUCKETS_US.len() < TrafficReport::MAX_LATENCY_SLOTS) };
}

#[test]
fn the_largest_traffic_report_fits_one_frame_and_round_trips() {
    let msg = NodeMsg::Traffic(Box::new(largest_traffic()));
    let frame = try_encode(&msg).expect("fits a frame");
    assert!(frame.len() <= MAX_FRAME_LEN + 4, "{} bytes", frame.len());
    assert_eq!(decode::<NodeMsg>(&frame[4..]), Ok(msg));
}

#[test]
fn traffic_over_its_bounds_or_malformed_is_refused() {
    // 129 routes where 128 fit: the count is the byte after the tag and the epoch.
    let mut report = largest_traffic();
    let one = report.routes.as_slice()[0].clone();
    report.routes = Seq::new(vec![one; 1]).expect("fits");
    let frame = encode(&NodeMsg::Traffic(Box::new(report)));
    let body = &frame[4..];
    let count_at = 1 + 10;
    assert_eq!(body[count_at], 1);
    let entry = &body[count_at + 1..];
    let with_routes = |n: usize| {
        let mut out = body[..count_at].to_vec();
        let mut count = n;
        while count >= 0x80 {
            out.push((count as u8 & 0x7f) | 0x80);
            count >>= 7;
        }
        out.push(count as u8);
        for _ in 0..n {
            out.extend(entry);
        }
        out
    };
    assert!(decode::<NodeMsg>(&with_routes(TrafficReport::MAX_ROUTES)).is_ok());
    malformed_node(&with_routes(TrafficReport::MAX_ROUTES + 1));
    // A count that claims far more allocates nothing it claims.
    let mut huge = body[..count_at].to_vec();
    huge.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
    malformed_node(&huge);
    // 33 latency slots where 32 fit: the slots end the entry.
    let mut body33 = body.to_vec();
    let slots_at = body33.len() - 1 - 10 * TrafficReport::MAX_LATENCY_SLOTS;
    assert_eq!(
        usize::from(body33[slots_at]),
        TrafficReport::MAX_LATENCY_SLOTS
    );
    body33[slots_at] += 1;
    body33.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    malformed_node(&body33);
    // A route name one byte over its bound.
    let mut long = vec![8u8, 1, 1, 64];
    long.extend([b'r'; 64]);
    long.extend([0; 9]);
    long.push(0);
    malformed_node(&long);
    // Cut short, and a counter that overflows u64.
    malformed_node(&body[..body.len() - 3]);
    let mut over = vec![8u8, 1, 1, 1, b's'];
    over.extend([0xff; 10]);
    over.push(0x7f);
    malformed_node(&over);
}

#[test]
fn golden_bytes_of_purge_streams() {
    let key = encode(&OrchStreamOpen::Purge(PurgeRequest::Key {
        host: Str::new("a.b").expect("fits"),
        path_and_query: Str::new("/m?x").expect("fits"),
    }));
    assert_eq!(hex(&key), "0000000b010003612e62042f6d3f78");
    let prefix = encode(&OrchStreamOpen::Purge(PurgeRequest::Prefix {
        host: None,
        path_prefix: Str::new("/img/").expect("fits"),
    }));
    assert_eq!(hex(&prefix), "00000009010100052f696d672f");
    let on_host = encode(&PurgeRequest::Prefix {
        host: Some(Str::new("a.b").expect("fits")),
        path_prefix: Str::new("/").expect("fits"),
    });
    assert_eq!(hex(&on_host), "00000008010103612e62012f");
    assert_eq!(
        hex(&encode(&PurgeReply::Purged { count: 300 })),
        "0000000300ac02"
    );
    assert_eq!(hex(&encode(&PurgeReply::NoCache)), "0000000101");
}

#[test]
fn purge_messages_round_trip() {
    let longest = PurgeRequest::Key {
        host: Str::new("h".repeat(Expose::MAX_HOST_LEN)).expect("fits"),
        path_and_query: Str::new(format!(
            "/{}",
            "q".repeat(PurgeRequest::MAX_PATH_AND_QUERY_BYTES - 1)
        ))
        .expect("fits"),
    };
    for req in [
        longest,
        PurgeRequest::Prefix {
            host: Some(Str::new("[::1]").expect("fits")),
            path_prefix: Str::new("/img/").expect("fits"),
        },
    ] {
        let open = OrchStreamOpen::Purge(req);
        let frame = try_encode(&open).expect("the largest purge fits a frame");
        assert_eq!(decode::<OrchStreamOpen>(&frame[4..]), Ok(open));
    }
    for reply in [
        PurgeReply::Purged { count: 0 },
        PurgeReply::Purged { count: u64::MAX },
        PurgeReply::NoCache,
    ] {
        assert_eq!(decode::<PurgeReply>(&encode(&reply)[4..]), Ok(reply));
    }
}

#[test]
fn purge_messages_over_their_bounds_or_malformed_are_refused() {
    let refused = |body: &[u8]| {
        assert!(
            matches!(
                decode::<OrchStreamOpen>(body),
                Err(DecodeError::Malformed(_))
            ),
            "{body:?}"
        );
    };
    // A key's host one byte over 253.
    let mut body = vec![1u8, 0, 0xfe, 0x01];
    body.extend([b'h'; 254]);
    body.extend([1, b'/']);
    refused(&body);
    // A key's path and query one byte over 8 KiB: varint 8193.
    let mut body = vec![1u8, 0, 1, b'h', 0x81, 0x40];
    body.extend([b'/'; 8193]);
    refused(&body);
    // A prefix one byte over 1 KiB: varint 1025.
    let mut body = vec![1u8, 1, 0, 0x81, 0x08];
    body.extend([b'/'; 1025]);
    refused(&body);
    // An unknown kind of purge, an option tag that is neither 0 nor 1, a cut-off frame.
    refused(&[1, 2]);
    refused(&[1, 1, 2, 1, b'/']);
    refused(&[1, 0, 3, b'a']);
    // Trailing bytes after a whole reply; an unknown reply.
    assert!(decode::<PurgeReply>(&[1, 0]).is_err());
    assert!(decode::<PurgeReply>(&[2]).is_err());
    // A count that overflows u64.
    assert!(
        decode::<PurgeReply>(&[
            0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f
        ])
        .is_err()
    );
}

proptest! {
    #[test]
    fn random_bytes_never_panic_the_traffic_decoder(
        tail in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        let mut body = vec![8u8];
        body.extend(&tail);
        let _ = decode::<NodeMsg>(&body);
    }

    #[test]
    fn traffic_reports_round_trip(
        epoch in any::<u64>(),
        counts in proptest::collection::vec((arb_text::<63>(), any::<u64>(), proptest::collection::vec(any::<u64>(), 0..32)), 0..8),
    ) {
        let routes = counts
            .into_iter()
            .map(|(route, n, latency)| RouteTraffic {
                route,
                requests: n,
                hit: n / 2,
                errors_5xx: n / 3,
                latency: Seq::new(latency).expect("fits"),
                ..RouteTraffic::default()
            })
            .collect();
        let msg = NodeMsg::Traffic(Box::new(TrafficReport {
            epoch,
            routes: Seq::new(routes).expect("fits"),
        }));
        prop_assert_eq!(decode::<NodeMsg>(&encode(&msg)[4..]), Ok(msg));
    }

    #[test]
    fn random_bytes_never_panic_purge_decoders(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut body = vec![1u8];
        body.extend(&tail);
        let _ = decode::<OrchStreamOpen>(&body);
        let _ = decode::<PurgeReply>(&tail);
    }
}

fn instance_event(seq: u64) -> NodeEvent {
    NodeEvent {
        seq,
        at_ms: 1_765_000_000_000,
        kind: EventKind::Instance(WorkloadReport {
            workload: text("till"),
            generation: 2,
            state: WorkloadState::Running,
            restarts: 1,
            pid: Some(4242),
            exit_code: None,
            message: Text::new(),
        }),
    }
}

/// The outbox's events and their acknowledgement, pinned like the rest.
#[test]
fn golden_bytes_of_events() {
    let batch = EventBatch {
        events: List::from_iter([instance_event(7)]),
        gaps: List::from_iter([EventGap {
            first: 3,
            last: 5,
            count: 2,
            first_at_ms: 1_000,
            last_at_ms: 2_000,
        }]),
    };
    assert_eq!(
        hex(&encode(&NodeMsg::Events(Box::new(batch)))),
        "0000001f09010780e4ca91af33000474696c6c020301019221000001030502e807d00f",
    );
    assert_eq!(
        hex(&encode(&OrchMsg::EventsStored(Box::new(EventsStored {
            seqs: List::from_iter([7, 9]),
            gaps_through: 5,
        })))),
        "000000050702070905",
    );
}

/// A local operator's actions, as the outbox keeps and sends them.
#[test]
fn golden_bytes_of_operator_events() {
    let action = |verb| NodeEvent {
        seq: 8,
        at_ms: 1_000,
        kind: EventKind::Operator(OperatorAction {
            verb,
            workload: text("till"),
            uid: Some(0),
        }),
    };
    let refused = NodeEvent {
        seq: 9,
        at_ms: 1_000,
        kind: EventKind::Refused(AdmissionReply {
            workload: text("till"),
            generation: 2,
            rejected: Some(text("no room")),
        }),
    };
    let batch = EventBatch {
        events: List::from_iter([
            action(OperatorVerb::Restart),
            action(OperatorVerb::Stop),
            refused,
        ]),
        gaps: List::new(),
    };
    assert_eq!(
        hex(&encode(&NodeMsg::Events(Box::new(batch)))),
        "0000002e090308e80701000474696c6c010008e80701010474696c6c010009e807020474696c6c0201076e6f20726f6f6d00",
    );
}

/// The answer to a hello the orchestrator cannot take now, and the code it closes with.
#[test]
fn golden_bytes_of_busy() {
    assert_eq!(
        hex(&encode(&OrchMsg::Busy(Busy {
            retry_after_ms: 1_500
        }))),
        "0000000308dc0b",
    );
    assert_eq!(
        hex(&encode(&OrchMsg::Busy(Busy {
            retry_after_ms: u32::MAX
        }))),
        "0000000608ffffffff0f",
    );
    assert_eq!(hex(&encode(&RejectCode::Busy)), "000000010d");
    assert_eq!(RejectCode::Busy.close_code(), 14);
    assert!(RejectCode::Busy.retryable());
}

#[test]
fn golden_bytes_of_the_expired_certificate_reject() {
    assert_eq!(hex(&encode(&RejectCode::CertificateExpired)), "000000010e");
    assert_eq!(RejectCode::CertificateExpired.close_code(), 15);
    assert!(
        !RejectCode::CertificateExpired.retryable(),
        "the same certificate never works again"
    );
}

#[test]
fn a_busy_longer_than_a_u32_is_refused() {
    // A varint of five bytes whose value is past u32::MAX.
    assert!(decode::<OrchMsg>(&[0x08, 0xff, 0xff, 0xff, 0xff, 0x1f]).is_err());
    // Cut short.
    assert!(decode::<OrchMsg>(&[0x08, 0xdc]).is_err());
    // Trailing bytes after a whole message.
    assert!(decode::<OrchMsg>(&[0x08, 0x01, 0x00]).is_err());
}

#[test]
fn the_largest_event_batch_fits_one_frame_and_round_trips() {
    let mut event = instance_event(u64::MAX);
    let EventKind::Instance(report) = &mut event.kind else {
        panic!("instance_event makes an instance event")
    };
    report.workload = text(&"w".repeat(MAX_NAME_LEN));
    report.message = text(&"m".repeat(256));
    report.exit_code = Some(i32::MIN);
    let gap = EventGap {
        first: u64::MAX,
        last: u64::MAX,
        count: u64::MAX,
        first_at_ms: u64::MAX,
        last_at_ms: u64::MAX,
    };
    let msg = NodeMsg::Events(Box::new(EventBatch {
        events: List::from_iter(std::iter::repeat_n(event, EventBatch::MAX_EVENTS)),
        gaps: List::from_iter(std::iter::repeat_n(gap, EventBatch::MAX_GAPS)),
    }));
    let frame = try_encode(&msg).expect("fits a frame");
    assert!(frame.len() <= MAX_FRAME_LEN + 4, "{} bytes", frame.len());
    assert_eq!(decode::<NodeMsg>(&frame[4..]), Ok(msg));
    // One event more than a batch holds is refused while decoding.
    let mut body = frame[4..].to_vec();
    assert_eq!(
        body[1],
        EventBatch::MAX_EVENTS as u8,
        "the count after the tag"
    );
    body[1] += 1;
    assert!(decode::<NodeMsg>(&body).is_err());
}

/// The sync at reconnect: what a node says it holds at hello, and the end of the answer.
#[test]
fn golden_bytes_of_sync() {
    let hello = NodeMsg::Hello(Hello {
        versions: List::from_iter([1]),
        intent: Intent::Session,
        node_id: Some(NodeId([0xab; 16])),
        agent: text("n/1"),
        sync: Some(Box::new(SyncState {
            applied: List::from_iter([Applied {
                workload: text("web"),
                generation: 3,
            }]),
            complete: true,
            outbox_next: 300,
            outbox_oldest: 290,
            outbox_fresh: false,
        })),
    });
    assert_eq!(
        hex(&encode(&hello)),
        "000000260001010101abababababababababababababababab036e2f310101037765620301ac02a20200",
    );
    assert_eq!(
        hex(&encode(&OrchMsg::Synced(Synced {
            mode: SyncMode::Changes,
            assigned: 1,
            unassigned: 2,
            events_through: Some(299),
        }))),
        "000000070900010201ab02",
    );
    assert_eq!(
        hex(&encode(&OrchMsg::Synced(Synced {
            mode: SyncMode::Snapshot,
            assigned: 0,
            unassigned: 0,
            events_through: None,
        }))),
        "000000050901000000",
    );
}

#[test]
fn a_hello_listing_more_workloads_than_it_may_is_refused() {
    let applied = |n: usize| SyncState {
        applied: (0..n)
            .map(|i| Applied {
                workload: text(&format!("w{i}")),
                generation: 1,
            })
            .collect::<Vec<_>>()
            .into_iter()
            .take(SyncState::MAX_APPLIED)
            .collect(),
        complete: true,
        outbox_next: 1,
        outbox_oldest: 1,
        outbox_fresh: false,
    };
    let hello = |sync| {
        NodeMsg::Hello(Hello {
            versions: List::from_iter([1]),
            intent: Intent::Session,
            node_id: None,
            agent: text("n/1"),
            sync: Some(Box::new(sync)),
        })
    };
    // The largest hello fits a frame.
    let full = encode(&hello(applied(SyncState::MAX_APPLIED)));
    assert!(full.len() <= edge_proto::MAX_FRAME_LEN, "{}", full.len());
    // One more entry on the wire (the count bumped by hand) does not decode.
    let mut body = full[4..].to_vec();
    let count_at = body
        .windows(2)
        .position(|w| w == [0x80, 0x01])
        .expect("the list's length, 128 as a varint");
    body[count_at] = 0x81;
    assert!(decode::<NodeMsg>(&full[4..]).is_ok());
    assert!(decode::<NodeMsg>(&body).is_err());
}

/// The node's load in the outbox: a status while it had no session, and a window's summary.
#[test]
fn golden_bytes_of_status_and_metric_events() {
    let status = NodeEvent {
        seq: 10,
        at_ms: 1_000,
        kind: EventKind::Status(Status {
            cpu_percent: 50.0,
            memory_used_bytes: 1 << 20,
            disk_free_bytes: 1 << 30,
            uptime_secs: 60,
        }),
    };
    let metrics = NodeEvent {
        seq: 11,
        at_ms: 2_000,
        kind: EventKind::Metrics(MetricSummary {
            window_secs: 300,
            samples: 30,
            cpu_percent_min: 1.0,
            cpu_percent_mean: 2.0,
            cpu_percent_max: 4.0,
            memory_used_bytes_min: 1,
            memory_used_bytes_mean: 2,
            memory_used_bytes_max: 3,
            disk_free_bytes_min: 4,
        }),
    };
    let batch = EventBatch {
        events: List::from_iter([status, metrics]),
        gaps: List::new(),
    };
    assert_eq!(
        hex(&encode(&NodeMsg::Events(Box::new(batch)))),
        "0000002b09020ae807030000484280804080808080043c0bd00f04ac021e0000803f00000040000080400102030400",
    );
}

/// A point of the node's track in the outbox: a 3D fix with its accuracy and the receiver's
/// time, then a fixed point (no fix, no time). A report off the globe or with a negative
/// accuracy decodes (the bytes are well formed) and is invalid.
#[test]
fn golden_bytes_of_location_events() {
    let fix = NodeEvent {
        seq: 12,
        at_ms: 3_000,
        kind: EventKind::Location(LocationReport {
            location: Location {
                lat: 52.5,
                lon: 13.25,
                alt_m: Some(34.0),
            },
            source: LocationSource::Gpsd,
            quality: FixQuality::ThreeD,
            accuracy_m: Some(4.5),
            fix_ms: Some(1_796_000_000_000),
        }),
    };
    let fixed = NodeEvent {
        seq: 13,
        at_ms: 4_000,
        kind: EventKind::Location(LocationReport {
            location: Location {
                lat: -33.75,
                lon: 151.0,
                alt_m: None,
            },
            source: LocationSource::Fixed,
            quality: FixQuality::None,
            accuracy_m: None,
            fix_ms: None,
        }),
    };
    let batch = EventBatch {
        events: List::from_iter([fix, fixed]),
        gaps: List::new(),
    };
    let bytes = encode(&NodeMsg::Events(Box::new(batch)));
    assert_eq!(
        hex(&bytes),
        concat!(
            "00000047",   // frame length
            "09020cb817", // Events, two events, seq 12, at 3000 ms
            // Location: lat, lon, Some(alt), Gpsd, ThreeD, Some(4.5 m), Some(fix time)
            "050000000000404a400000000000802a40010000000000004140010201000090400180d0c4cfa234",
            // seq 13 at 4000 ms, Location: lat, lon, no alt, Fixed, no fix, no accuracy or time
            "0da01f050000000000e040c00000000000e062400000000000",
            "00", // no gaps
        )
    );
    let NodeMsg::Events(back) = decode::<NodeMsg>(&bytes[4..]).expect("decodes") else {
        panic!("an event batch");
    };
    let EventKind::Location(report) = back.events.as_slice()[0].kind else {
        panic!("a location");
    };
    // A 2D fix: the quality is the byte after the source.
    let two_d = LocationReport {
        quality: FixQuality::TwoD,
        ..report
    };
    let one = |r: LocationReport| {
        encode(&NodeMsg::Events(Box::new(EventBatch {
            events: List::from_iter([NodeEvent {
                seq: 1,
                at_ms: 1,
                kind: EventKind::Location(r),
            }]),
            gaps: List::new(),
        })))
    };
    assert_eq!(
        hex(&one(two_d)),
        "0000002d090101010500000000\
         00404a400000000000802a4001000000000000414001010100009040\
         0180d0c4cfa23400"
    );
    assert!(report.is_valid());
    for bad in [
        LocationReport {
            location: Location {
                lat: 91.0,
                ..report.location
            },
            ..report
        },
        LocationReport {
            location: Location {
                lon: f64::NAN,
                ..report.location
            },
            ..report
        },
        LocationReport {
            accuracy_m: Some(-1.0),
            ..report
        },
        LocationReport {
            accuracy_m: Some(f32::INFINITY),
            ..report
        },
    ] {
        assert!(!bad.is_valid(), "{bad:?}");
    }
}

/// A window of the proxy's attempts in the outbox: two samples (a fast success with two
/// features, a failure with one), of 1,000 attempts over a minute. A sample with more
/// features than the bound does not decode.
#[test]
fn golden_bytes_of_route_samples() {
    let samples = RouteSamples {
        window_secs: 60,
        attempts: 1_000,
        samples: List::from_iter([
            RouteSample {
                features: List::from_iter([1.0, 2.5]),
                latency_ms: 4.0,
                failed: false,
            },
            RouteSample {
                features: List::from_iter([0.5]),
                latency_ms: 1_000.0,
                failed: true,
            },
        ]),
    };
    let batch = EventBatch {
        events: List::from_iter([NodeEvent {
            seq: 14,
            at_ms: 5_000,
            kind: EventKind::RouteSamples(Box::new(samples.clone())),
        }]),
        gaps: List::new(),
    };
    let bytes = encode(&NodeMsg::Events(Box::new(batch)));
    assert_eq!(
        hex(&bytes),
        concat!(
            "00000023",   // frame length
            "09010e8827", // Events, one event, seq 14, at 5000 ms
            "06",         // RouteSamples
            "3ce80702",   // 60 s, 1000 attempts, two samples
            "020000803f00002040",
            "0000804000", // [1.0, 2.5], 4 ms, ok
            "010000003f",
            "00007a4401", // [0.5], 1000 ms, failed
            "00",         // no gaps
        )
    );
    let NodeMsg::Events(back) = decode::<NodeMsg>(&bytes[4..]).expect("decodes") else {
        panic!("an event batch");
    };
    assert_eq!(
        back.events.as_slice()[0].kind,
        EventKind::RouteSamples(Box::new(samples))
    );
    // 33 features: one over the bound.
    let mut long = postcard::to_allocvec(&EventKind::RouteSamples(Box::new(RouteSamples {
        window_secs: 60,
        attempts: 1,
        samples: List::new(),
    })))
    .expect("encodes");
    long.pop();
    long.push(1);
    long.push(33);
    long.extend(std::iter::repeat_n(0u8, 33 * 4 + 5));
    assert!(postcard::from_bytes::<EventKind>(&long).is_err());
}

/// Certificate renewal on an established session: the request (no node id: the session's
/// certificate names the node), the new certificate with the CAs to trust, and a refusal.
#[test]
fn golden_bytes_of_renewal() {
    assert_eq!(
        hex(&encode(&NodeMsg::Renew(Box::new(RenewRequest {
            csr_der: Der::new(vec![0x30, 0x00]).expect("fits"),
        })))),
        "000000040a023000",
    );
    assert_eq!(
        hex(&encode(&NodeMsg::CertificateStored(Box::new(
            CertificateStored {
                cert_der: Der::new(vec![0x30, 0x01, 0x01]).expect("fits"),
            }
        )))),
        "000000050b03300101",
    );
    assert_eq!(
        hex(&encode(&OrchMsg::Renewed(Box::new(Renewed {
            cert_der: Der::new(vec![0x30, 0x01, 0x01]).expect("fits"),
            trust: List::from_iter([
                Der::new(vec![0x30, 0x00]).expect("fits"),
                Der::new(vec![0x31, 0x00]).expect("fits"),
            ]),
        })))),
        "0000000c0a0330010102023000023100",
    );
    assert_eq!(
        hex(&encode(&OrchMsg::RenewRefused(Box::new(RenewRefused {
            reason: RenewRefusal::KeyMismatch,
            message: text("other key"),
        })))),
        "0000000c0b01096f74686572206b6579",
    );
    let reasons: Vec<(Vec<u8>, u8)> = vec![
        (encode(&RenewRefusal::BadCsr), 0),
        (encode(&RenewRefusal::KeyMismatch), 1),
        (encode(&RenewRefusal::Internal), 2),
    ];
    for (bytes, index) in reasons {
        assert_eq!(bytes[4..], [index]);
    }
}

#[test]
fn hostile_renewals_are_decode_errors() {
    // A CSR one byte longer than a DER blob may be: refused from its length, before any
    // allocation of that size.
    let mut body = vec![0x0a];
    body.extend_from_slice(&[0x81, 0x40]); // varint 8193
    body.extend(std::iter::repeat_n(0x30, 8193));
    assert!(decode::<NodeMsg>(&body).is_err());
    // A length far past the frame, with nothing behind it.
    assert!(decode::<NodeMsg>(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    // Cut short, and trailing bytes.
    assert!(decode::<NodeMsg>(&[0x0a, 0x02, 0x30]).is_err());
    assert!(decode::<NodeMsg>(&[0x0a, 0x01, 0x30, 0x00]).is_err());
    // Three CAs where a bundle holds two.
    assert!(
        decode::<OrchMsg>(&[0x0a, 0x01, 0x30, 0x03, 0x01, 0x30, 0x01, 0x30, 0x01, 0x30]).is_err()
    );
    // A refusal reason past the last.
    assert!(decode::<OrchMsg>(&[0x0b, 0x03, 0x00]).is_err());
    // A stored certificate longer than a DER blob may be, or cut short.
    let mut body = vec![0x0b];
    body.extend_from_slice(&[0x81, 0x40]);
    body.extend(std::iter::repeat_n(0x30, 8193));
    assert!(decode::<NodeMsg>(&body).is_err());
    assert!(decode::<NodeMsg>(&[0x0b, 0x03, 0x30, 0x01]).is_err());
    // The largest renewal fits a frame.
    let big = NodeMsg::Renew(Box::new(RenewRequest {
        csr_der: Der::new(vec![0x30; 8192]).expect("fits"),
    }));
    let frame = try_encode(&big).expect("fits a frame");
    assert_eq!(decode::<NodeMsg>(&frame[4..]), Ok(big));
    let bundle = OrchMsg::Renewed(Box::new(Renewed {
        cert_der: Der::new(vec![0x30; 8192]).expect("fits"),
        trust: List::from_iter(std::iter::repeat_n(
            Der::new(vec![0x30; 8192]).expect("fits"),
            Renewed::MAX_TRUST,
        )),
    }));
    let frame = try_encode(&bundle).expect("fits a frame");
    assert_eq!(decode::<OrchMsg>(&frame[4..]), Ok(bundle));
}
