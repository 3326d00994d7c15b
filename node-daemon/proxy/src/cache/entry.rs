//! One stored response: what the policy decided when it was stored, its head and its body.

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_cache_semantics::CachePolicy;
use node_core::proxy::cache::{CacheKey, QuickHit, StaleRules};
use ring::digest;

/// Which stored response among all: a digest of its key and its variant signature. Also its
/// file's name on disk, in hex.
pub(crate) type VariantId = [u8; 32];

/// A stored response. Immutable: an update (a revalidation) stores a new one.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) key: CacheKey,
    /// The variant signature (`node_core::proxy::cache::vary_signature`).
    pub(crate) vary: String,
    pub(crate) policy: CachePolicy,
    pub(crate) lifetime: Duration,
    pub(crate) rules: StaleRules,
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) memo: Memo,
}

/// What is worked out from an entry once, when first asked for.
#[derive(Debug, Default)]
pub(crate) struct Memo {
    id: OnceLock<VariantId>,
    quick: OnceLock<Option<QuickHit>>,
    /// The head of the latest quick answer and the age it was made for: answers within the
    /// same second of age have the same head.
    quick_head: Mutex<Option<(u64, HeaderMap)>>,
}

/// What holding an entry costs beyond its body: the policy and bookkeeping, roughly.
const OVERHEAD_BYTES: u64 = 512;
/// What a quick answer's head holds beyond the stored head: `Age`, `Cache-Status`, `Via`.
const QUICK_HEAD_EXTRA_BYTES: u64 = 160;

impl Entry {
    pub(crate) fn id(&self) -> VariantId {
        *self
            .memo
            .id
            .get_or_init(|| variant_id(&self.key, &self.vary))
    }

    /// How a plain request finds it (`node_core::proxy::cache::QuickHit`), worked out at the
    /// first ask's `now`: `None` if it was stale or varied then.
    pub(crate) fn quick(&self, now: SystemTime) -> Option<&QuickHit> {
        self.memo
            .quick
            .get_or_init(|| QuickHit::new(&self.policy, self.lifetime, &self.key, now))
            .as_ref()
    }

    /// The head of a quick answer `age_secs` old: the one made for that age last, else
    /// `make`'s (kept for the next).
    pub(crate) fn quick_head(&self, age_secs: u64, make: impl FnOnce() -> HeaderMap) -> HeaderMap {
        let mut held = self
            .memo
            .quick_head
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((age, head)) = &*held
            && *age == age_secs
        {
            return head.clone();
        }
        let head = make();
        *held = Some((age_secs, head.clone()));
        head
    }

    /// The bytes it holds in memory, as the memory bound counts them: the body, the head
    /// three times (kept for stale answers, in the policy, and as the latest quick answer's),
    /// the key and the signature.
    pub(crate) fn weight(&self) -> u64 {
        let head: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        let key = self.key.host().len() + self.key.path_and_query().len() + self.vary.len();
        (self.body.len() as u64)
            .saturating_add(3 * head as u64)
            .saturating_add(key as u64)
            .saturating_add(OVERHEAD_BYTES + QUICK_HEAD_EXTRA_BYTES)
    }
}

pub(crate) fn variant_id(key: &CacheKey, vary: &str) -> VariantId {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(key.host().as_bytes());
    ctx.update(b"\0");
    ctx.update(key.path_and_query().as_bytes());
    ctx.update(b"\0");
    ctx.update(vary.as_bytes());
    let mut id = [0u8; 32];
    id.copy_from_slice(ctx.finish().as_ref());
    id
}

pub(crate) fn hex(id: &VariantId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}
