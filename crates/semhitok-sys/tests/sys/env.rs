//! The launcher environment: torchrun's variables, SLURM's, and clear errors naming the variable.

use semhitok_sys::{Backend, DistEnv, Error};
use std::collections::HashMap;

fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let m: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| m.get(k).cloned()
}

#[test]
fn no_launcher_is_a_plain_run() {
    assert_eq!(
        DistEnv::from_lookup(lookup(&[("PATH", "/bin")])).unwrap(),
        None
    );
}

#[test]
fn torchrun_variables() {
    let e = DistEnv::from_lookup(lookup(&[
        ("MASTER_ADDR", "node7"),
        ("MASTER_PORT", "29500"),
        ("RANK", "9"),
        ("WORLD_SIZE", "16"),
        ("LOCAL_RANK", "1"),
        ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ("TORCHELASTIC_RESTART_COUNT", "2"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(
        (
            e.master_addr.as_str(),
            e.master_port,
            e.rank,
            e.world_size,
            e.local_rank
        ),
        ("node7", 29500, 9, 16, 1)
    );
    assert!(e.agent_store);
    assert_eq!(e.restart_count, 2);
}

#[test]
fn slurm_variables_when_torchrun_is_absent() {
    let e = DistEnv::from_lookup(lookup(&[
        ("MASTER_ADDR", "n1"),
        ("MASTER_PORT", "1234"),
        ("SLURM_PROCID", "3"),
        ("SLURM_NTASKS", "4"),
        ("SLURM_LOCALID", "3"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!((e.rank, e.world_size, e.local_rank), (3, 4, 3));
    assert!(!e.agent_store);
}

#[test]
fn bad_variables_are_named() {
    let var_of = |vars: &[(&str, &str)]| match DistEnv::from_lookup(lookup(vars)) {
        Err(Error::Env { var, .. }) => var,
        other => panic!("expected an Env error, got {other:?}"),
    };
    let base = [
        ("MASTER_ADDR", "h"),
        ("MASTER_PORT", "29500"),
        ("WORLD_SIZE", "2"),
    ];
    assert_eq!(var_of(&base), "RANK");
    assert_eq!(var_of(&[&base[..], &[("RANK", "2")]].concat()), "RANK");
    assert_eq!(var_of(&[&base[..], &[("RANK", "x")]].concat()), "RANK");
    assert_eq!(
        var_of(&[("MASTER_PORT", "29500"), ("WORLD_SIZE", "2"), ("RANK", "0")]),
        "MASTER_ADDR"
    );
    assert_eq!(
        var_of(&[
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "70000"),
            ("WORLD_SIZE", "2"),
            ("RANK", "0")
        ]),
        "MASTER_PORT"
    );
    assert_eq!(
        var_of(&[
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1"),
            ("WORLD_SIZE", "0"),
            ("RANK", "0")
        ]),
        "WORLD_SIZE"
    );
}

#[test]
fn backend_names_and_build() {
    assert_eq!("gloo".parse::<Backend>().unwrap(), Backend::Gloo);
    assert_eq!("nccl".parse::<Backend>().unwrap(), Backend::Nccl);
    assert!("mpi".parse::<Backend>().unwrap_err().contains("mpi"));
    assert_eq!(Backend::default_for(true), Backend::Nccl);
    assert_eq!(Backend::default_for(false), Backend::Gloo);
    assert!(Backend::Gloo.compiled());
    // `cargo xtask setup` installs the CUDA headers, so this build has the NCCL backend too.
    assert!(Backend::Nccl.compiled(), "NCCL backend not compiled in");
}
