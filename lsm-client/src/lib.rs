//! lsm-client: not built yet; see the open issues for its scope.
