//! semhitok-train integration tests (one binary; topics in `tests/train/`).

mod train {
    mod artifact;
    mod bench;
    mod codec;
    pub mod common;
    mod config;
    mod data;
    mod demo;
    mod dist;
    mod dist_tokens;
    mod fid_ref;
    mod fmnist;
    mod generic;
    mod llava;
    mod machinery;
    mod mllm_demos;
    mod optim;
    mod reliability;
    mod roles;
    pub mod stages;
    mod t2i;
    mod t2i_run;
    mod t2i_wds;
    pub mod tensorboard;
    mod tokenize;
    mod validation;
}
