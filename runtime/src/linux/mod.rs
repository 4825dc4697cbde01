//! The Linux backend: user, pid, mount, net, uts, ipc and cgroup namespaces; an idmapped
//! overlay root; cgroup limits; a netns on the host bridge; seccomp and no_new_privs.

pub mod backend;
pub mod btrfs;
pub mod btrfs_quota;
pub mod cgroup;
mod compute;
pub mod criu;
mod criu_ids;
pub mod dns;
pub mod domains;
mod identity;
mod layers;
mod memory;
pub mod net;
pub mod netdomains;
pub mod netpolicy;
pub mod nftbatch;
pub mod nftcompile;
pub mod nftrun;
pub mod nftwire;
pub mod seccomp;
pub mod sniproxy;
pub mod spawn;
pub mod spawner;
