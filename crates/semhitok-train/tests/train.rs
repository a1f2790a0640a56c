//! semhitok-train integration tests (one binary; topics in `tests/train/`).

mod train {
    mod codec;
    pub mod common;
    mod config;
    mod demo;
    mod dist;
    mod machinery;
    mod optim;
    mod reliability;
    mod stages;
}
