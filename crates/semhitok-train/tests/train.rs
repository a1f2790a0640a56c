//! semhitok-train integration tests (one binary; topics in `tests/train/`).

mod train {
    pub mod common;
    mod config;
    mod machinery;
    mod stages;
}
