//! Every message on the wire (see PROTOCOL.md for who sends what, and when).

use rayfarm_bake::{BakeSpec, BakeWork, LayerSpec, MapSpec, Pass, Region, Workload};
use rayfarm_render::{RenderSettings, UnitResult, WorkUnit};
use rayfarm_scene::{Camera, Projection};
use serde::{Deserialize, Serialize};

/// Why the contents of a well-formed message were refused: a value out of range or unknown.
/// Each variant names the field or unit at fault.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("image size {width}x{height} is out of range")]
    ImageSize { width: u32, height: u32 },
    #[error("spp is 0")]
    ZeroSpp,
    #[error("camera has non-finite values")]
    NonFiniteCamera,
    #[error("unknown projection {0}")]
    UnknownProjection(u8),
    #[error("{maps} maps and {layers} layers exceed the limit of {limit}")]
    TooManyLayers {
        maps: usize,
        layers: usize,
        limit: usize,
    },
    #[error("unknown pass {0}")]
    UnknownPass(u8),
    #[error("unit {0:?} is malformed")]
    MalformedUnit(WireUnit),
    #[error("unit {0:?} is too large")]
    UnitTooLarge(WireUnit),
    #[error("bad unit data: {0}")]
    UnitData(#[source] crate::unit_sums::UnitSumsError),
}

/// Error classes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    Unauthorized,
    Busy,
    BadRequest,
    Internal,
}

/// A node's hardware, as its worker's probe reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct Devices {
    pub cpu_model: String,
    /// Threads the node offers (after `--threads`).
    pub threads: u32,
    /// Threads the machine has.
    pub cpu_threads: u32,
    /// GPUs found (listed only; rendering is on the CPU).
    pub gpus: Vec<String>,
}

/// What a daemon is doing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DaemonState {
    Idle,
    /// Held by a master (its `HOST:PORT`) since a Unix time in milliseconds.
    Occupied {
        master: String,
        since_unix_ms: u64,
    },
    Unhealthy {
        reason: String,
    },
}

/// The answer to discovery.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub alias: String,
    pub version: String,
    pub protocol_version: u32,
    pub devices: Devices,
    pub state: DaemonState,
}

impl DaemonInfo {
    /// The answer with every string a peer chose made safe to print ([`printable`]): its
    /// alias, version, CPU and GPU names (16 at most), master address and reason.
    pub fn printable(self) -> DaemonInfo {
        let state = match self.state {
            DaemonState::Occupied {
                master,
                since_unix_ms,
            } => DaemonState::Occupied {
                master: printable(&master, MAX_PRINTED_ADDR),
                since_unix_ms,
            },
            DaemonState::Unhealthy { reason } => DaemonState::Unhealthy {
                reason: printable(&reason, MAX_PRINTED_REASON),
            },
            idle => idle,
        };
        let devices = Devices {
            cpu_model: printable(&self.devices.cpu_model, MAX_PRINTED_ADDR),
            gpus: (self.devices.gpus.iter().take(16))
                .map(|g| printable(g, MAX_PRINTED_ADDR))
                .collect(),
            ..self.devices
        };
        DaemonInfo {
            alias: printable(&self.alias, MAX_PRINTED_ALIAS),
            version: printable(&self.version, MAX_PRINTED_ALIAS),
            devices,
            state,
            ..self
        }
    }
}

/// Most characters of a peer's alias (or version) shown: an alias is 1 to 64 characters.
pub const MAX_PRINTED_ALIAS: usize = 64;
/// Most characters of an address a peer sends (a master's `HOST:PORT`) shown.
pub const MAX_PRINTED_ADDR: usize = 128;
/// Most characters of a reason a peer sends (a worker's exit, a daemon's health) shown.
pub const MAX_PRINTED_REASON: usize = 512;

/// `s`, from a peer, made safe to print on a terminal or in a log: control characters
/// (terminal escape sequences start with one) become U+FFFD, and it is cut to `max_chars`
/// characters (an ellipsis marks the cut). A peer holding the key could otherwise rewrite the
/// operator's terminal or fill its log and memory with names megabytes long.
pub fn printable(s: &str, max_chars: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max_chars)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    if s.chars().nth(max_chars).is_some() {
        out.push('\u{2026}');
    }
    out
}

/// A work unit on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WireUnit {
    pub layer: u32,
    pub sample_start: u32,
    pub sample_end: u32,
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
}

impl From<WorkUnit> for WireUnit {
    fn from(u: WorkUnit) -> Self {
        WireUnit {
            layer: u.layer,
            sample_start: u.sample_start,
            sample_end: u.sample_end,
            x0: u.x0,
            y0: u.y0,
            x1: u.x1,
            y1: u.y1,
        }
    }
}

impl From<WireUnit> for WorkUnit {
    fn from(u: WireUnit) -> Self {
        WorkUnit {
            layer: u.layer,
            sample_start: u.sample_start,
            sample_end: u.sample_end,
            x0: u.x0,
            y0: u.y0,
            x1: u.x1,
            y1: u.y1,
        }
    }
}

/// Render settings on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireSettings {
    pub width: u32,
    pub height: u32,
    pub spp: u32,
    pub max_bounces: u32,
    pub seed: u64,
    pub camera_name: String,
    /// 0 = perspective (a = yfov, b = aspect or 0), 1 = orthographic (a = xmag, b = ymag).
    pub projection: u8,
    pub proj_a: f32,
    pub proj_b: f32,
    pub position: [f32; 3],
    pub right: [f32; 3],
    pub up: [f32; 3],
    pub forward: [f32; 3],
}

/// Largest image side accepted from the wire.
pub const MAX_IMAGE_SIDE: u32 = 32768;
/// Most pixels an image from the wire may have (as `rayfarm render` allows: the film keeps 48
/// bytes a pixel).
pub const MAX_IMAGE_PIXELS: u64 = 1 << 28;

impl WireSettings {
    pub fn from_settings(s: &RenderSettings) -> WireSettings {
        let (projection, proj_a, proj_b) = match s.camera.projection {
            Projection::Perspective { yfov, aspect } => (0, yfov, aspect.unwrap_or(0.0)),
            Projection::Orthographic { xmag, ymag } => (1, xmag, ymag),
        };
        WireSettings {
            width: s.width,
            height: s.height,
            spp: s.spp,
            max_bounces: s.max_bounces,
            seed: s.seed,
            camera_name: s.camera.name.clone(),
            projection,
            proj_a,
            proj_b,
            position: s.camera.position,
            right: s.camera.right,
            up: s.camera.up,
            forward: s.camera.forward,
        }
    }

    /// Checks limits and converts; errors name the bad field.
    pub fn to_settings(&self) -> Result<RenderSettings, WireError> {
        if self.width == 0
            || self.height == 0
            || self.width > MAX_IMAGE_SIDE
            || self.height > MAX_IMAGE_SIDE
            || u64::from(self.width) * u64::from(self.height) > MAX_IMAGE_PIXELS
        {
            return Err(WireError::ImageSize {
                width: self.width,
                height: self.height,
            });
        }
        if self.spp == 0 {
            return Err(WireError::ZeroSpp);
        }
        let vals = [self.proj_a, self.proj_b]
            .into_iter()
            .chain(self.position)
            .chain(self.right)
            .chain(self.up)
            .chain(self.forward);
        if vals.into_iter().any(|v| !v.is_finite()) {
            return Err(WireError::NonFiniteCamera);
        }
        let projection = match self.projection {
            0 => Projection::Perspective {
                yfov: self.proj_a,
                aspect: (self.proj_b > 0.0).then_some(self.proj_b),
            },
            1 => Projection::Orthographic {
                xmag: self.proj_a,
                ymag: self.proj_b,
            },
            p => return Err(WireError::UnknownProjection(p)),
        };
        Ok(RenderSettings {
            width: self.width,
            height: self.height,
            spp: self.spp,
            max_bounces: self.max_bounces,
            seed: self.seed,
            camera: Camera {
                name: self.camera_name.clone(),
                projection,
                position: self.position,
                right: self.right,
                up: self.up,
                forward: self.forward,
            },
        })
    }
}

/// One map of a bake on the wire (see `rayfarm_bake::MapSpec`); `region` is `[x0, y0, x1, y1]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireMap {
    pub meshes: Vec<u32>,
    pub width: u32,
    pub height: u32,
    pub region: [u32; 4],
}

/// A bake on the wire (see `rayfarm_bake::BakeSpec`); `layers` are `(map, pass)` with passes
/// numbered complete 0, lightmap 1, ao 2, albedo 3, normal 4.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireBake {
    pub uv_set: u8,
    pub spp: u32,
    pub max_bounces: u32,
    pub seed: u64,
    pub ao_distance: f32,
    pub maps: Vec<WireMap>,
    pub layers: Vec<(u32, u8)>,
}

/// What a job computes, on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WireWork {
    Render(WireSettings),
    Bake(WireBake),
}

fn pass_code(p: Pass) -> u8 {
    match p {
        Pass::Complete => 0,
        Pass::Lightmap => 1,
        Pass::Ao => 2,
        Pass::Albedo => 3,
        Pass::Normal => 4,
    }
}

impl WireWork {
    /// BLAKE3 of the work's wire encoding: equal exactly when two jobs ask for the same work.
    pub fn digest(&self) -> [u8; 32] {
        // Encoding plain data into a Vec cannot fail; an empty encoding would still hash.
        let bytes = postcard::to_stdvec(self).unwrap_or_default();
        *blake3::hash(&bytes).as_bytes()
    }

    pub fn from_workload(w: &Workload) -> WireWork {
        match w {
            Workload::Render(s) => WireWork::Render(WireSettings::from_settings(s)),
            Workload::Bake(b) => {
                let s = &b.spec;
                WireWork::Bake(WireBake {
                    uv_set: s.uv_set,
                    spp: s.spp,
                    max_bounces: s.max_bounces,
                    seed: s.seed,
                    ao_distance: s.ao_distance,
                    maps: s
                        .maps
                        .iter()
                        .map(|m| WireMap {
                            meshes: m.meshes.iter().map(|&i| i as u32).collect(),
                            width: m.width,
                            height: m.height,
                            region: [m.region.x0, m.region.y0, m.region.x1, m.region.y1],
                        })
                        .collect(),
                    layers: s
                        .layers
                        .iter()
                        .map(|l| (l.map as u32, pass_code(l.pass)))
                        .collect(),
                })
            }
        }
    }

    /// Converts and checks what can be checked without the scene (the worker checks the rest
    /// with `BakeSpec::check` once the scene is loaded); errors name the bad field.
    pub fn to_workload(&self) -> Result<Workload, WireError> {
        match self {
            WireWork::Render(s) => Ok(Workload::Render(s.to_settings()?)),
            WireWork::Bake(b) => {
                if b.layers.len() > rayfarm_bake::workload::MAX_LAYERS
                    || b.maps.len() > rayfarm_bake::workload::MAX_LAYERS
                {
                    return Err(WireError::TooManyLayers {
                        maps: b.maps.len(),
                        layers: b.layers.len(),
                        limit: rayfarm_bake::workload::MAX_LAYERS,
                    });
                }
                let mut layers = Vec::with_capacity(b.layers.len());
                for &(map, pass) in &b.layers {
                    let pass = *Pass::ALL
                        .get(pass as usize)
                        .ok_or(WireError::UnknownPass(pass))?;
                    layers.push(LayerSpec {
                        map: map as usize,
                        pass,
                    });
                }
                Ok(Workload::Bake(BakeWork::new(BakeSpec {
                    uv_set: b.uv_set,
                    spp: b.spp,
                    max_bounces: b.max_bounces,
                    seed: b.seed,
                    ao_distance: b.ao_distance,
                    maps: b
                        .maps
                        .iter()
                        .map(|m| MapSpec {
                            meshes: m.meshes.iter().map(|&i| i as usize).collect(),
                            width: m.width,
                            height: m.height,
                            region: Region {
                                x0: m.region[0],
                                y0: m.region[1],
                                x1: m.region[2],
                                y1: m.region[3],
                            },
                        })
                        .collect(),
                    layers,
                })))
            }
        }
    }
}

/// Every message. Variants are never reordered or removed within one protocol version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    // -- any port (after the channel handshake) --
    /// Client -> daemon: asks for `DaemonInfo` (what `rayfarm nodes` and scans send).
    Discover,
    Error {
        code: ErrorCode,
        message: String,
    },

    // -- daemon port --
    DaemonInfo(DaemonInfo),
    /// Master -> daemon: start a worker that connects to `master_addr` and hold the node for
    /// this connection's lifetime (renewed by `Heartbeat`).
    Acquire {
        master_addr: String,
        lease_timeout_ms: u64,
    },
    Acquired {
        pid: u32,
    },
    Refused {
        reason: String,
    },
    /// Either direction, to show liveness.
    Heartbeat,
    /// Master -> daemon: stop the worker and free the node.
    Release,
    Released,
    /// Daemon -> master: the worker ended (killed for a reason, crashed or exited).
    WorkerExited {
        reason: String,
    },

    // -- master port --
    /// Worker -> master after authentication.
    WorkerHello {
        alias: String,
        threads: u32,
        version: String,
        /// The port on which this worker relays scenes to other workers (`FetchScene`), on
        /// the address it connected to the master from; 0 when it does not.
        peer_port: u16,
    },
    /// Master -> worker: what to render.
    Job {
        job_id: u64,
        scene_hash: [u8; 32],
        scene_bytes: u64,
        work: WireWork,
    },
    /// Worker -> master: the scene is not in my cache, send it.
    NeedScene,
    /// Master -> worker, the answer to `NeedScene`: the scene's chunks and where to get them.
    /// Chunk `i` is bytes `[i * chunk_bytes, min((i + 1) * chunk_bytes, scene_bytes))` of the
    /// blob and its BLAKE3 hash is `chunk_hashes[i]`. With a `peer` the worker fetches the
    /// chunks from that worker (`FetchScene`); without one the master sends them at once.
    SceneSource {
        chunk_bytes: u32,
        chunk_hashes: Vec<[u8; 32]>,
        peer: Option<String>,
    },
    /// Worker -> master: my peer failed or stalled; send the chunks from `from_chunk` on.
    NeedChunks {
        from_chunk: u32,
    },
    /// Master or relaying worker -> worker: a piece of the compiled scene blob.
    SceneChunk {
        offset: u64,
        /// As one byte string (the same bytes on the wire as a sequence of `u8`, decoded with
        /// one copy instead of element by element).
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Worker -> relaying worker (its peer port): send me the chunks of this scene from
    /// `from_chunk` on, as you get them.
    FetchScene {
        scene_hash: [u8; 32],
        chunk_bytes: u32,
        from_chunk: u32,
    },
    /// Worker -> master: scene loaded, ready for units.
    Ready,
    /// Master -> worker: render these units.
    Assign {
        units: Vec<WireUnit>,
    },
    /// Worker -> master: one unit's per-pixel fixed-point sums (RGB) in the compact codec
    /// ([`crate::unit_sums`]: zigzag varints, zstd).
    UnitDone {
        unit: WireUnit,
        #[serde(with = "serde_bytes")]
        sums: Vec<u8>,
        nonfinite: u64,
    },
    /// Worker -> master: units it will not render (shutting down).
    GiveBack {
        units: Vec<WireUnit>,
    },
    /// Either direction: closing on purpose.
    Goodbye {
        reason: String,
    },

    // -- manager tasks (the manager's worker port; after `Job` as above) --
    /// Manager -> worker: render all of `units` (every sample range of one region of one
    /// layer) and write the result as the part file `part` into the job folder.
    Task {
        task_id: i64,
        units: Vec<WireUnit>,
        part: WirePart,
    },
    /// Worker -> manager: the part is written (atomically); its BLAKE3 checksum.
    TaskDone {
        task_id: i64,
        checksum: [u8; 32],
    },
    /// Worker -> manager: the task could not be done (e.g. the job folder is unreachable).
    TaskFailed {
        task_id: i64,
        error: String,
    },
    /// Manager -> worker: the task was canceled, deleted or given to another node: stop
    /// rendering it and write nothing. No answer is sent.
    CancelTask {
        task_id: i64,
    },
}

/// Where a task's part goes: `job_dir` as the manager sees it (workers apply their path map),
/// and the part's name, layer, region `[x0, y0, x1, y1]` and samples per texel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WirePart {
    pub job_dir: String,
    pub name: String,
    pub layer: u32,
    pub region: [u32; 4],
    pub spp: u32,
}

impl Msg {
    /// Name for log lines.
    pub fn name(&self) -> &'static str {
        match self {
            Msg::Discover => "Discover",
            Msg::Error { .. } => "Error",
            Msg::DaemonInfo(_) => "DaemonInfo",
            Msg::Acquire { .. } => "Acquire",
            Msg::Acquired { .. } => "Acquired",
            Msg::Refused { .. } => "Refused",
            Msg::Heartbeat => "Heartbeat",
            Msg::Release => "Release",
            Msg::Released => "Released",
            Msg::WorkerExited { .. } => "WorkerExited",
            Msg::WorkerHello { .. } => "WorkerHello",
            Msg::Job { .. } => "Job",
            Msg::NeedScene => "NeedScene",
            Msg::SceneSource { .. } => "SceneSource",
            Msg::NeedChunks { .. } => "NeedChunks",
            Msg::SceneChunk { .. } => "SceneChunk",
            Msg::FetchScene { .. } => "FetchScene",
            Msg::Ready => "Ready",
            Msg::Assign { .. } => "Assign",
            Msg::UnitDone { .. } => "UnitDone",
            Msg::GiveBack { .. } => "GiveBack",
            Msg::Goodbye { .. } => "Goodbye",
            Msg::Task { .. } => "Task",
            Msg::TaskDone { .. } => "TaskDone",
            Msg::TaskFailed { .. } => "TaskFailed",
            Msg::CancelTask { .. } => "CancelTask",
        }
    }
}

/// Encodes a unit result's sums for `Msg::UnitDone` ([`crate::unit_sums`]).
pub fn encode_sums(r: &UnitResult) -> Vec<u8> {
    crate::unit_sums::encode(&r.sums)
}

/// Decodes `Msg::UnitDone` sums ([`crate::unit_sums`]), checking the unit's size first.
pub fn decode_sums(unit: &WireUnit, data: &[u8], nonfinite: u64) -> Result<UnitResult, WireError> {
    if unit.x1 <= unit.x0
        || unit.y1 <= unit.y0
        || unit.x1 > MAX_IMAGE_SIDE
        || unit.y1 > MAX_IMAGE_SIDE
    {
        return Err(WireError::MalformedUnit(*unit));
    }
    let pixels = (unit.x1 - unit.x0) as usize * (unit.y1 - unit.y0) as usize;
    // A unit cannot drop more samples than it has.
    let samples = u64::from(unit.sample_end.saturating_sub(unit.sample_start)) * pixels as u64;
    if nonfinite > samples {
        return Err(WireError::MalformedUnit(*unit));
    }
    if crate::unit_sums::max_varint_bytes(pixels) > crate::MAX_FRAME_BYTES * 8 {
        return Err(WireError::UnitTooLarge(*unit));
    }
    let sums = crate::unit_sums::decode(data, pixels).map_err(WireError::UnitData)?;
    Ok(UnitResult {
        unit: (*unit).into(),
        sums,
        nonfinite_samples: nonfinite,
    })
}
