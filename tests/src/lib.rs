//! Cross-crate integration tests for lsm live in `tests/`.
