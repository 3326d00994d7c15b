//! Heap-backed strings and lists with a bound checked while decoding.
//!
//! `heapless` types hold their capacity inline, which suits short fields (a name, a label) but
//! not a workload's arguments: sixty-four inline 4 KiB strings would be a 256 KiB value on the
//! stack. These types allocate only what the peer actually sent, and refuse more than `N`
//! before allocating anything.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;
use serde::de::{Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A string of at most `N` bytes.
#[derive(Clone, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct Str<const N: usize>(String);

impl<const N: usize> Str<N> {
    /// `None` if `s` is longer than `N` bytes.
    pub fn new(s: impl Into<String>) -> Option<Self> {
        let s = s.into();
        (s.len() <= N).then_some(Self(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn into_string(self) -> String {
        self.0
    }
}

impl<const N: usize> fmt::Debug for Str<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<const N: usize> fmt::Display for Str<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<const N: usize> Serialize for Str<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de, const N: usize> Deserialize<'de> for Str<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const N: usize>;
        impl<const N: usize> Visitor<'_> for V<N> {
            type Value = Str<N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a string of at most {N} bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Str<N>, E> {
                if v.len() > N {
                    return Err(E::invalid_length(v.len(), &self));
                }
                Ok(Str(v.into()))
            }
        }
        d.deserialize_str(V::<N>)
    }
}

/// A list of at most `N` items.
#[derive(Clone, PartialEq, Eq)]
pub struct Seq<T, const N: usize>(Vec<T>);

// By hand: an empty list needs no `T: Default`.
impl<T, const N: usize> Default for Seq<T, N> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T, const N: usize> Seq<T, N> {
    /// `None` if there are more than `N` items.
    pub fn new(items: Vec<T>) -> Option<Self> {
        (items.len() <= N).then_some(Self(items))
    }
    pub fn as_slice(&self) -> &[T] {
        &self.0
    }
    pub fn into_vec(self) -> Vec<T> {
        self.0
    }
}

impl<T: fmt::Debug, const N: usize> fmt::Debug for Seq<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<T: Serialize, const N: usize> Serialize for Seq<T, N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for Seq<T, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, const N: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for V<T, N> {
            type Value = Seq<T, N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a list of at most {N} items")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Seq<T, N>, A::Error> {
                let announced = seq.size_hint().unwrap_or(0);
                if announced > N {
                    return Err(A::Error::invalid_length(announced, &self));
                }
                let mut items = Vec::with_capacity(announced);
                while let Some(item) = seq.next_element()? {
                    if items.len() == N {
                        return Err(A::Error::invalid_length(N + 1, &self));
                    }
                    items.push(item);
                }
                Ok(Seq(items))
            }
        }
        d.deserialize_seq(V::<T, N>(PhantomData))
    }
}
