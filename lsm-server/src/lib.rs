//! lsm-server: not built yet; see the open issues for its scope.
