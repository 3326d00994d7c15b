//! The route rules of `edge_proto::field` against whatever text an operator (or an attacker
//! with access to a spec or a config file) can write: no input panics, what passes comes back
//! in a form that passes again unchanged, and fits the wire field that carries it.

use edge_proto::Str;
use edge_proto::field::{
    FieldPath, MAX_HOST_LEN, MAX_PATH_PREFIX_BYTES, check_host, check_origin_url, check_path_prefix,
};
use proptest::prelude::*;

/// Text that looks like hosts, paths and URLs often enough to pass now and then.
fn urlish() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,80}",
        "[a-zA-Z0-9.:/%\\[\\]@?#_-]{0,80}",
        "(http|HTTP|https)://[a-z0-9.-]{1,20}(:[0-9]{0,6})?(/[a-z0-9./%]{0,20})?",
        "\\[[0-9a-fA-F:.]{0,40}\\]",
    ]
}

proptest! {
    #[test]
    fn hosts_never_panic_and_pass_again_as_they_came_back(s in urlish()) {
        let path = FieldPath::new("host");
        if let Ok(host) = check_host(&path, &s) {
            prop_assert_eq!(check_host(&path, &host), Ok(host.clone()));
            prop_assert_eq!(host.to_ascii_lowercase(), host.clone());
            prop_assert!(Str::<MAX_HOST_LEN>::new(host).is_some());
        }
    }

    #[test]
    fn path_prefixes_never_panic_and_fit_the_wire(s in urlish()) {
        if check_path_prefix(&FieldPath::new("path_prefix"), &s).is_ok() {
            prop_assert!(s.starts_with('/'));
            prop_assert!(s.bytes().all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#'));
            prop_assert!(Str::<MAX_PATH_PREFIX_BYTES>::new(s).is_some());
        }
    }

    #[test]
    fn origin_urls_never_panic_and_print_as_they_parse(s in urlish()) {
        let path = FieldPath::new("origin");
        if let Ok(origin) = check_origin_url(&path, &s) {
            prop_assert!(origin.port > 0);
            prop_assert!(!origin.base_path.ends_with('/'));
            let again = check_origin_url(&path, &origin.to_string());
            prop_assert_eq!(again, Ok(origin));
        }
    }
}
