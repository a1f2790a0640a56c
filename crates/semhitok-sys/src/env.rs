//! The launcher's environment: torchrun's variables (`MASTER_ADDR`, `MASTER_PORT`, `RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`), or SLURM's (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`) with
//! `MASTER_ADDR`/`MASTER_PORT` set by the job script.

use crate::error::{Error, Result};

/// Which c10d backend a process group runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// NCCL: CUDA tensors, GPU-to-GPU (the default on CUDA).
    Nccl,
    /// Gloo: CPU tensors over TCP (the default on CPU; what the tests run).
    Gloo,
}

impl Backend {
    /// The backend name as c10d and torchrun spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Nccl => "nccl",
            Backend::Gloo => "gloo",
        }
    }
    /// NCCL on CUDA, Gloo on CPU (torch.distributed's defaults).
    pub fn default_for(cuda: bool) -> Self {
        if cuda {
            Backend::Nccl
        } else {
            Backend::Gloo
        }
    }
    /// Whether this build has the backend (NCCL needs the CUDA headers at build time).
    pub fn compiled(self) -> bool {
        let code = match self {
            Backend::Gloo => 0,
            Backend::Nccl => 1,
        };
        // SAFETY: a pure query of the shim's compile-time configuration.
        unsafe { crate::ffi::shk_has_backend(code) != 0 }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "nccl" => Ok(Backend::Nccl),
            "gloo" => Ok(Backend::Gloo),
            _ => Err(format!(
                "unknown distributed backend `{s}` (expected nccl or gloo)"
            )),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where this process sits in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    /// Host of the TCPStore (rank 0's host, or torchrun's agent).
    pub master_addr: String,
    pub master_port: u16,
    /// Global rank in [0, world_size).
    pub rank: usize,
    pub world_size: usize,
    /// Rank on this host: the CUDA device index under NCCL.
    pub local_rank: usize,
    /// torchrun's agent already serves the store at `MASTER_ADDR:MASTER_PORT`
    /// (`TORCHELASTIC_USE_AGENT_STORE=True`): every rank connects as a client.
    pub agent_store: bool,
    /// torchrun's restart count (`TORCHELASTIC_RESTART_COUNT`), so a restarted job uses fresh
    /// store keys.
    pub restart_count: u64,
}

impl DistEnv {
    /// Read the process environment; `None` when no launcher set a world size (a plain run).
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`DistEnv::from_env`] over any variable lookup (tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let torchrun = get("WORLD_SIZE").is_some() || get("RANK").is_some();
        let slurm = !torchrun && get("SLURM_NTASKS").is_some() && get("SLURM_PROCID").is_some();
        if !torchrun && !slurm {
            return Ok(None);
        }
        let (rank_v, world_v, local_v) = if torchrun {
            ("RANK", "WORLD_SIZE", "LOCAL_RANK")
        } else {
            ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
        };
        let num = |var: &'static str, default: Option<u64>| -> Result<u64> {
            match get(var) {
                Some(v) => v.trim().parse::<u64>().map_err(|_| Error::Env {
                    var,
                    msg: format!("`{v}` is not a non-negative integer"),
                }),
                None => default.ok_or(Error::Env {
                    var,
                    msg: "not set (the launcher sets it: torchrun, srun or `cargo xtask train --gpus N`)"
                        .into(),
                }),
            }
        };
        let world_size = num(world_v, None)? as usize;
        let rank = num(rank_v, None)? as usize;
        let local_rank = num(local_v, Some(0))? as usize;
        if world_size == 0 {
            return Err(Error::Env {
                var: world_v,
                msg: "must be >= 1".into(),
            });
        }
        if rank >= world_size {
            return Err(Error::Env {
                var: rank_v,
                msg: format!("{rank} is not below the world size {world_size}"),
            });
        }
        let master_addr = get("MASTER_ADDR")
            .filter(|s| !s.is_empty())
            .ok_or(Error::Env {
                var: "MASTER_ADDR",
                msg: "not set (the host of rank 0)".into(),
            })?;
        let port = num("MASTER_PORT", None)?;
        let master_port = u16::try_from(port)
            .ok()
            .filter(|&p| p > 0)
            .ok_or(Error::Env {
                var: "MASTER_PORT",
                msg: format!("{port} is not a TCP port"),
            })?;
        let agent_store = get("TORCHELASTIC_USE_AGENT_STORE")
            .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        let restart_count = num("TORCHELASTIC_RESTART_COUNT", Some(0))?;
        Ok(Some(Self {
            master_addr,
            master_port,
            rank,
            world_size,
            local_rank,
            agent_store,
            restart_count,
        }))
    }
}
