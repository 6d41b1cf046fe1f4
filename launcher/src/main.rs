//! `launcher`: parse the command line, call the library, map errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use launcher::{changes, client};

#[derive(Parser)]
#[command(name = "launcher", version, about = "Run processes in containers")]
struct Cli {
    /// State directory (default: /run/layerfs as root, $XDG_RUNTIME_DIR/layerfs otherwise)
    #[arg(long, global = true, env = "LAUNCHER_ROOT")]
    root: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a command in a new container
    Run(Box<RunArgs>),
    /// List containers
    Ps {
        /// Show all containers (default shows just running)
        #[arg(short, long)]
        all: bool,
        /// Only display container IDs
        #[arg(short, long)]
        quiet: bool,
    },
    /// Stop running containers (SIGTERM, then SIGKILL after the timeout)
    Stop {
        /// Seconds to wait before killing the container
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Send a signal to running containers
    Kill {
        /// Signal to send (name or number)
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Block until containers stop, then print their exit codes
    Wait {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Fetch the logs of a container
    Logs {
        /// Follow log output (ends when the container has exited and the log is drained)
        #[arg(short, long)]
        follow: bool,
        /// Number of lines to show from the end of the logs
        #[arg(short = 'n', long)]
        tail: Option<String>,
        /// Show logs since a timestamp (RFC 3339) or a relative time (e.g. 42m)
        #[arg(long)]
        since: Option<String>,
        container: String,
    },
    /// Attach the terminal's standard streams to a running container
    Attach {
        /// Key sequence that detaches (e.g. ctrl-p,ctrl-q; off unless given)
        #[arg(long)]
        detach_keys: Option<String>,
        container: String,
    },
    /// Remove containers
    Rm {
        /// Kill and remove running containers
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Display detailed information on containers (JSON)
    Inspect {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Inspect changes to files or directories on a container's filesystem (A added, C changed, D deleted)
    Diff { container: String },
    /// Create a new image from a container's changes
    Commit {
        /// Apply Dockerfile instruction to the created image (CMD, ENTRYPOINT, ENV, LABEL, USER, WORKDIR)
        #[arg(short, long = "change")]
        change: Vec<String>,
        /// Commit message
        #[arg(short, long)]
        message: Option<String>,
        /// Pause a running container during commit (--pause=false to commit its live filesystem)
        #[arg(short, long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
              default_missing_value = "true", require_equals = true)]
        pause: bool,
        container: String,
        /// NAME[:TAG]
        repository: String,
    },
    /// Export a container's filesystem as a tar archive (to stdout unless -o)
    Export {
        /// Write to a file, instead of STDOUT
        #[arg(short, long)]
        output: Option<PathBuf>,
        container: String,
    },
    /// Copy files/folders between a container and the local filesystem
    #[command(after_help = "CONTAINER:SRC_PATH DEST_PATH|-  or  SRC_PATH CONTAINER:DEST_PATH\n\
                      Use '-' as the destination to write a tar archive of the source to STDOUT.")]
    Cp {
        /// CONTAINER:SRC_PATH or SRC_PATH
        src: String,
        /// DEST_PATH, CONTAINER:DEST_PATH or -
        dest: String,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Run in the background and print the container ID
    #[arg(short, long)]
    detach: bool,
    /// Keep STDIN open
    #[arg(short, long)]
    interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short, long)]
    tty: bool,
    /// Remove the container when it exits
    #[arg(long)]
    rm: bool,
    /// Container name
    #[arg(long)]
    name: Option<String>,
    /// Set environment variables (K=V, or K to copy it from the caller)
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// Working directory inside the container
    #[arg(short, long)]
    workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short, long)]
    user: Option<String>,
    /// Container host name
    #[arg(long)]
    hostname: Option<String>,
    /// Memory limit (e.g. 64m)
    #[arg(short, long)]
    memory: Option<String>,
    /// Number of CPUs (CFS quota)
    #[arg(long)]
    cpus: Option<String>,
    /// Tune the container pids limit (-1 for unlimited)
    #[arg(long, allow_hyphen_values = true)]
    pids_limit: Option<i64>,
    /// Network mode: none (own namespace, loopback up), host, or bridge (veth on the lfs0 bridge)
    #[arg(long, alias = "network")]
    net: Option<String>,
    /// Subnet of the bridge for --net bridge (default 10.209.0.0/16)
    #[arg(long, env = "LAUNCHER_SUBNET")]
    subnet: Option<String>,
    /// Mount the container's root filesystem as read only
    #[arg(long)]
    read_only: bool,
    /// Run a tiny init as PID 1 that forwards signals and reaps processes
    #[arg(long)]
    init: bool,
    /// Add Linux capabilities
    #[arg(long)]
    cap_add: Vec<String>,
    /// Drop Linux capabilities
    #[arg(long)]
    cap_drop: Vec<String>,
    /// Run on this root filesystem directory instead of an image (then no IMAGE argument)
    #[arg(long)]
    rootfs: Option<PathBuf>,
    /// Overwrite the default ENTRYPOINT of the image ("" clears it)
    #[arg(long, allow_hyphen_values = true)]
    entrypoint: Option<String>,
    /// Image store (default: /var/lib/layerfs as root, $XDG_DATA_HOME/layerfs otherwise)
    #[arg(long, env = "LAYERFS_ROOT")]
    store: Option<PathBuf>,
    /// Rotate the log when it reaches this size (e.g. 10m)
    #[arg(long)]
    log_max_size: Option<String>,
    /// Rotated log files to keep
    #[arg(long)]
    log_max_files: Option<u32>,
    /// Bind mount a host path: HOST:CTR[:ro|rw] (repeatable)
    #[arg(short = 'v', long = "volume")]
    volumes: Vec<String>,
    /// Mount a tmpfs: CTR[:OPTS], e.g. /run:size=64m,mode=1777 (repeatable)
    #[arg(long)]
    tmpfs: Vec<String>,
    /// Key sequence that detaches from the container (e.g. ctrl-p,ctrl-q; off unless given)
    #[arg(long)]
    detach_keys: Option<String>,
    /// Own cgroup: auto (only with -m/--cpus/--pids-limit), enabled, disabled
    #[arg(long)]
    cgroups: Option<String>,
    /// A layerfs mount option for the image's root, KEY=VALUE (repeatable): cache_dirs, cache_inline,
    /// passthrough, timeout, threads
    #[arg(long = "storage-opt", value_name = "KEY=VALUE")]
    storage_opt: Vec<String>,
    /// IMAGE [COMMAND] [ARG...]; with --rootfs only [COMMAND] [ARG...] (default /bin/sh)
    #[arg(value_name = "IMAGE|COMMAND", trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 125 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let root = cli.root.unwrap_or_else(launcher::state::default_root);
    let is_run = matches!(cli.cmd, Cmd::Run(_));
    let res = match cli.cmd {
        Cmd::Run(a) => client::run(
            &root,
            &client::RunOptions {
                detach: a.detach,
                interactive: a.interactive,
                tty: a.tty,
                remove: a.rm,
                name: a.name,
                env: a.env,
                workdir: a.workdir,
                user: a.user,
                hostname: a.hostname,
                memory: a.memory,
                cpus: a.cpus,
                pids_limit: a.pids_limit,
                net: a.net,
                subnet: a.subnet,
                read_only: a.read_only,
                init: a.init,
                cap_add: a.cap_add,
                cap_drop: a.cap_drop,
                rootfs: a.rootfs,
                entrypoint: a.entrypoint,
                store: a.store,
                log_max_size: a.log_max_size,
                log_max_files: a.log_max_files,
                volumes: a.volumes,
                tmpfs: a.tmpfs,
                detach_keys: a.detach_keys,
                cgroups: a.cgroups,
                storage_opt: a.storage_opt,
                args: a.args,
            },
        ),
        Cmd::Ps { all, quiet } => client::ps(&root, all, quiet),
        Cmd::Stop { time, containers } => client::stop(&root, &containers, time),
        Cmd::Kill { signal, containers } => client::kill(&root, &containers, &signal),
        Cmd::Wait { containers } => client::wait(&root, &containers),
        Cmd::Logs { follow, tail, since, container } => {
            let tail = match tail.as_deref() {
                None | Some("all") => None,
                Some(n) => match n.parse() {
                    Ok(n) => Some(n),
                    Err(_) => {
                        eprintln!("launcher: invalid --tail {n:?}");
                        return ExitCode::from(1);
                    }
                },
            };
            client::logs(&root, &container, &client::LogsOptions { follow, tail, since })
        }
        Cmd::Attach { detach_keys, container } => client::attach(&root, &container, detach_keys.as_deref()),
        Cmd::Rm { force, containers } => client::rm(&root, &containers, force),
        Cmd::Inspect { containers } => client::inspect(&root, &containers),
        Cmd::Diff { container } => changes::diff(&root, &container),
        Cmd::Commit { change, message, pause, container, repository } => {
            changes::commit(&root, &container, &repository, &changes::CommitOptions { changes: change, message, pause })
        }
        Cmd::Export { output, container } => changes::export(&root, &container, output.as_deref()),
        Cmd::Cp { src, dest } => changes::cp(&root, &src, &dest),
    };
    match res {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("launcher: {e}");
            let code = if is_run { e.exit_code() } else { 1 };
            ExitCode::from(code as u8)
        }
    }
}
