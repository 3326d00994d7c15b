//! The HTTP cache.
