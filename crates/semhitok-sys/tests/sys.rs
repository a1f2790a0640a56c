//! semhitok-sys integration tests (one binary; topics in `tests/sys/`). The multi-rank tests run
//! each rank on its own thread of this process, each with its own c10d process group over a
//! localhost TCPStore on a free port (Gloo); the trainer's tests run ranks as processes.

mod sys {
    pub mod common;
    mod crash;
    mod custom_fn;
    mod env;
    mod gloo;
    mod host_memory;
    mod nccl;
    mod parallel;
    mod reducer;
}
