//! Real execution of kscratch plans: SSH, rendering actions to idempotent shell,
//! known_hosts verification and private key file handling.

pub mod keyfile;
pub mod known_hosts;
pub mod pki;
pub mod render;
pub mod shell;
pub mod shell_render;
pub mod ssh;
pub mod ssh_backend;
pub mod verify;
