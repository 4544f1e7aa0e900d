//! The `rayfarm` binary: command-line glue over the library crates.

mod bake_cmd;
mod bench;
mod daemon_cmd;
mod farm_cmd;
mod live_cmd;
mod network_cmd;
mod output;
mod render_cmd;

use clap::{Parser, Subcommand};

/// rayfarm: a network render farm with its own physically based path tracer.
///
/// Render a glTF 2.0 or OBJ scene on this machine:
///
///     rayfarm render examples/cornell-box/cornell_box.gltf -o cornell.png
///
/// Render over the network (`rayfarm daemon` on each node, then `render --network`), bake
/// textures (`rayfarm bake`, locally, `--network`, or through a job manager with `--farm`),
/// and run the job manager (`rayfarm manager`). The README has a walk-through.
#[derive(Parser, Debug)]
#[command(name = "rayfarm", version, about, long_about, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Render(render_cmd::RenderArgs),
    Bake(bake_cmd::BakeArgs),
    Bench(bench::BenchArgs),
    /// Loads a scene and prints what it holds (meshes, materials, lights, cameras), or compiles
    /// it to a blob with --compile-to.
    Info(render_cmd::InfoArgs),
    Worker(network_cmd::WorkerArgs),
    Nodes(network_cmd::NodesArgs),
    Daemon(daemon_cmd::DaemonArgs),
    Key(daemon_cmd::KeyArgs),
    Manager(farm_cmd::ManagerCmd),
    Submit(farm_cmd::SubmitArgs),
    Jobs(farm_cmd::JobsArgs),
    Job(farm_cmd::JobArgs),
    Merge(farm_cmd::MergeArgs),
}

fn main() {
    let cli = Cli::parse();
    // A daemon logs its transitions (acquired, released, worker killed) by default.
    let default_filter = match cli.command {
        Command::Daemon(_) | Command::Manager(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
    let result = match cli.command {
        Command::Render(a) => render_cmd::run(a),
        Command::Bake(a) => bake_cmd::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Info(a) => render_cmd::info(a),
        Command::Worker(a) => network_cmd::worker(a),
        Command::Nodes(a) => match &a.manager {
            Some(m) => farm_cmd::manager_nodes(m, a.discovery.config.as_deref()),
            None => network_cmd::nodes(a),
        },
        Command::Daemon(a) => daemon_cmd::run(a),
        Command::Key(a) => daemon_cmd::key(a),
        Command::Manager(a) => farm_cmd::manager_cmd(a),
        Command::Submit(a) => farm_cmd::submit(a),
        Command::Jobs(a) => farm_cmd::jobs(a),
        Command::Job(a) => farm_cmd::job(a),
        Command::Merge(a) => farm_cmd::merge(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
