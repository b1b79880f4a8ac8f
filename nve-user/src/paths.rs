//! Every runtime path of an instance derives from its name, so daemons for different
//! instances (one per network namespace in a rig) never share a socket, state or pins.
use std::path::PathBuf;

use nve_common::maps::PIN_ROOT;

pub const RUN_DIR: &str = "/run/nve";
pub const STATE_ROOT: &str = "/var/lib/nve";
pub const CONFIG_DIR: &str = "/etc/nve";

#[derive(Clone, Debug)]
pub struct Paths {
    pub instance: String,
    /// The API's Unix socket.
    pub socket: PathBuf,
    /// Held locked (flock) while a daemon runs the instance.
    pub lock: PathBuf,
    pub state_dir: PathBuf,
    /// bpffs directory of the instance's pinned maps.
    pub pin_dir: PathBuf,
    /// The daemon's config file, unless `--config` names another.
    pub config: PathBuf,
}

impl Paths {
    pub fn new(instance: &str) -> anyhow::Result<Self> {
        let ok = !instance.is_empty()
            && instance.len() <= 32
            && instance
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
        anyhow::ensure!(
            ok,
            "instance name {instance:?}: 1 to 32 characters of [A-Za-z0-9_-]"
        );
        Ok(Self {
            instance: instance.to_string(),
            socket: PathBuf::from(format!("{RUN_DIR}/{instance}.sock")),
            lock: PathBuf::from(format!("{RUN_DIR}/{instance}.lock")),
            state_dir: PathBuf::from(format!("{STATE_ROOT}/{instance}")),
            pin_dir: PathBuf::from(format!("{PIN_ROOT}/{instance}")),
            config: PathBuf::from(format!("{CONFIG_DIR}/{instance}.toml")),
        })
    }
}
