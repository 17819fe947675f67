//! The layering test (being written).
