//! See the module list in `proxy`.
