//! Hardening tests (see the module doc in main.rs).

#[allow(unused_imports)]
use crate::support::*;
