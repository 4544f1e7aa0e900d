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
    /// Decodes an AVIF image from standard input to standard output (width and height as u32
    /// little-endian, then RGBA8): the importer's child process, so that a decoder abort on
    /// corrupt data cannot take the importing process with it.
    #[command(name = "internal-decode-avif", hide = true)]
    InternalDecodeAvif,
}

/// Largest AVIF file the child process reads (an image's compressed bytes).
const AVIF_INPUT_MAX_BYTES: u64 = 512 << 20;

/// The importer's AVIF decoder: this executable, run as a child process.
fn decode_avif_in_child(bytes: &[u8]) -> Result<(u32, u32, Vec<u8>), String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find the rayfarm executable to decode AVIF with: {e}"))?;
    let mut child = Command::new(exe)
        .arg("internal-decode-avif")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the AVIF decoder process: {e}"))?;
    // The child reads all of its input before it writes, so writing first cannot deadlock; a
    // child that died early shows in its exit status below.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(bytes);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("the AVIF decoder process failed: {e}"))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        let msg = msg.trim();
        return Err(match out.status.code() {
            Some(2) if !msg.is_empty() => msg.to_string(),
            _ => "the AV1 decoder crashed on this data (the image is corrupt or unsupported)"
                .to_string(),
        });
    }
    let o = out.stdout;
    if o.len() < 8 {
        return Err("the AVIF decoder process returned no image".into());
    }
    let w = u32::from_le_bytes([o[0], o[1], o[2], o[3]]);
    let h = u32::from_le_bytes([o[4], o[5], o[6], o[7]]);
    Ok((w, h, o[8..].to_vec()))
}

/// `rayfarm internal-decode-avif`: standard input to standard output; an error is one line on
/// standard error and exit status 2.
fn internal_decode_avif() -> ! {
    use std::io::{Read, Write};
    let mut bytes = Vec::new();
    let read = std::io::stdin()
        .take(AVIF_INPUT_MAX_BYTES + 1)
        .read_to_end(&mut bytes);
    let result = match read {
        Err(e) => Err(format!("cannot read the AVIF data: {e}")),
        Ok(_) if bytes.len() as u64 > AVIF_INPUT_MAX_BYTES => Err(format!(
            "the AVIF file is larger than {} MiB",
            AVIF_INPUT_MAX_BYTES >> 20
        )),
        Ok(_) => rayfarm_scene::gltf_import::decode_avif(&bytes),
    };
    match result {
        Ok((w, h, rgba)) => {
            let mut out = std::io::stdout().lock();
            let ok = out
                .write_all(&w.to_le_bytes())
                .and_then(|_| out.write_all(&h.to_le_bytes()))
                .and_then(|_| out.write_all(&rgba))
                .and_then(|_| out.flush());
            std::process::exit(if ok.is_ok() { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    }
}

fn main() {
    let cli = Cli::parse();
    if let Command::InternalDecodeAvif = cli.command {
        internal_decode_avif();
    }
    rayfarm_scene::gltf_import::set_isolated_avif_decoder(decode_avif_in_child);
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
    // A forced code path the CPU cannot run is an error before any work starts.
    if let Err(e) = rayfarm_render::isa::Isa::from_env() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
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
        Command::InternalDecodeAvif => unreachable!("handled before the logger starts"),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
