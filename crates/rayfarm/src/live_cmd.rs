//! `--view`: the live view of a render or bake, served on a thread of its own while the job
//! runs (rayfarm-master's `live` state, rayfarm-farm's `live` server, rayfarm-web's page).

use anyhow::{anyhow, Context, Result};
use clap::Args;
use rayfarm_master::live::LiveView;
use std::sync::Arc;

/// Live view options of `render` and `bake`.
#[derive(Args, Debug, Clone, Default)]
pub struct ViewArgs {
    /// Serve a live view of the job at ADDR:PORT and print its address: the image as it
    /// converges, the nodes and their share, who rendered which region, the ETA, and a stop
    /// button that ends the job and writes what is done. Default 127.0.0.1 and a free port;
    /// on any other address the page asks for the farm's API token (`rayfarm key api-token`)
    #[arg(long, value_name = "ADDR:PORT", num_args = 0..=1, default_missing_value = "127.0.0.1:0")]
    pub view: Option<String>,
    /// Hand out work in passes (1, 2, 4, 8 ... spp) so the whole image refines at once; the
    /// default with --view. The image is the same bytes either way
    #[arg(long, conflicts_with = "no_progressive")]
    pub progressive: bool,
    /// Hand out work tile by tile at 16 spp even with --view
    #[arg(long)]
    pub no_progressive: bool,
}

impl ViewArgs {
    pub fn progressive(&self) -> bool {
        self.progressive || (self.view.is_some() && !self.no_progressive)
    }
}

/// A live view being served; stops serving when dropped.
pub struct Served {
    pub view: Arc<LiveView>,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    /// Leaves the page a moment to show the end (state and last image) before the process
    /// exits.
    pub fn linger(&self) {
        std::thread::sleep(std::time::Duration::from_millis(1200));
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts serving `view` at `addr` when `--view` was given, printing the address. `key` (the
/// farm key, if this machine has one) is needed beyond loopback.
pub fn serve(
    args: &ViewArgs,
    view: impl FnOnce() -> Arc<LiveView>,
    key: Option<rayfarm_proto::FarmKey>,
) -> Result<Option<Served>> {
    let Some(addr) = args.view.clone() else {
        return Ok(None);
    };
    let view = view();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let v = view.clone();
    let thread = std::thread::Builder::new()
        .name("live-view".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow!("cannot start the live view: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let page = rayfarm_web::live_routes();
                match rayfarm_farm::live::start(&addr, v, key, page, stop_rx).await {
                    Ok((server, serving)) => {
                        let _ = ready_tx.send(Ok((server.url(), server.needs_token)));
                        serving.await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("--view {e}")));
                    }
                }
            });
        })
        .context("cannot start the live view's thread")?;
    let (url, needs_token) = ready_rx
        .recv()
        .map_err(|_| anyhow!("the live view's thread ended before it listened"))??;
    if needs_token {
        eprintln!(
            "live view: {url} (the page asks for the farm's API token: `rayfarm key api-token`)"
        );
    } else {
        eprintln!("live view: {url}");
    }
    Ok(Some(Served {
        view,
        stop,
        thread: Some(thread),
    }))
}

/// The farm key from the config file or `RAYFARM_KEY`, if this machine has one.
pub fn farm_key_if_any(config: Option<&std::path::Path>) -> Option<rayfarm_proto::FarmKey> {
    let (cfg, _) = rayfarm_node::config::load(config).ok()?;
    rayfarm_node::config::farm_key(&cfg).ok()
}

/// The farm key a live view needs beyond loopback: the network job's, else this machine's.
pub fn view_key(
    args: &ViewArgs,
    network: Option<&crate::network_cmd::NetworkRender>,
    config: Option<&std::path::Path>,
) -> Option<rayfarm_proto::FarmKey> {
    match network {
        Some(n) => Some(n.options.key.clone()),
        None if args.view.is_some() => farm_key_if_any(config),
        None => None,
    }
}

/// How a job runs through the master's scheduler: over the network (with its compiled scene),
/// or, when a live view watches, on this machine's `threads` alone; `None` for a plain local
/// job on the thread pool.
pub fn master_run(
    network: Option<crate::network_cmd::NetworkRender>,
    blob: Option<Vec<u8>>,
    served: Option<&Served>,
    threads: usize,
) -> Option<(crate::network_cmd::NetworkRender, Vec<u8>)> {
    match (network, served) {
        (Some(nr), _) => Some((nr, blob.unwrap_or_default())),
        (None, Some(_)) => Some((
            crate::network_cmd::NetworkRender {
                options: rayfarm_master::NetworkOptions::local(threads),
            },
            Vec::new(),
        )),
        (None, None) => None,
    }
}
