//! Scene relaying between workers: the shelf that holds the scene this worker has (or is
//! receiving), the peer port that serves it to other workers, and the client that fetches it
//! from one.
//!
//! The master decides who fetches from whom (`rayfarm_master::distribution`) and sends every
//! worker the chunk hashes over its own authenticated channel. A relay sends chunks in order as
//! it gets them (it need not have the whole scene), so a chain of relays forwards a chunk a few
//! milliseconds after the master sent it. Nothing a relay sends is trusted: [`fetch`] checks
//! each chunk against its hash before the worker keeps it, and any failure, stall or forged
//! byte makes the worker fetch the rest from the master (`NeedChunks`).
//!
//! The peer port admits only holders of the farm key (the same channel as every other port),
//! serves only the scene on the shelf, at most [`MAX_RELAY_PEERS`] peers at once, and gives up
//! on a peer that waits longer than [`RELAY_WAIT`] for a chunk.
//!
//! Shutdown: [`serve`] runs until its task is aborted (the worker exits); each peer's task ends
//! when its peer closes, when the scene leaves the shelf, or after [`RELAY_WAIT`].

use rayfarm_proto::scene_chunks::ChunkList;
use rayfarm_proto::{ErrorCode, FarmKey, ListenLimits, Msg, Role, SecureListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Peers one worker relays to at once (the master's plan gives each node two; fallbacks and
/// retries may add a few).
pub const MAX_RELAY_PEERS: usize = 8;
/// How long a relay waits for a chunk it does not have yet before it closes the peer's
/// connection (the peer then fetches from the master).
pub const RELAY_WAIT: Duration = Duration::from_secs(60);
/// How long a worker waits for the next chunk from its relay before it asks the master instead.
pub const FETCH_STALL: Duration = Duration::from_secs(10);
/// A relay must keep up at least this average rate, after [`RELAY_GRACE`], or the worker asks
/// the master instead: a relay sending one chunk just inside each [`FETCH_STALL`] (113 KiB/s)
/// would otherwise hold its peer for the whole scene (a 600 MB scene: 90 minutes). Low, since
/// a relay still receiving the scene forwards it no faster than the master sends it (a 100
/// Mbit/s master shipping to 40 workers at once: 300 KiB/s each).
pub const MIN_RELAY_BYTES_PER_S: f64 = 256.0 * 1024.0;
/// How long a relay may take before its rate is judged (it may be receiving the scene itself).
pub const RELAY_GRACE: Duration = Duration::from_secs(60);

/// Whether a relay that has delivered `bytes` in `elapsed` is too slow to keep
/// ([`MIN_RELAY_BYTES_PER_S`] after [`RELAY_GRACE`]).
pub fn relay_too_slow(elapsed: Duration, bytes: u64) -> bool {
    let judged = elapsed.saturating_sub(RELAY_GRACE).as_secs_f64();
    (bytes as f64) < judged * MIN_RELAY_BYTES_PER_S
}

enum Held {
    Nothing,
    Receiving {
        hash: [u8; 32],
        total: u64,
        data: Vec<u8>,
    },
    Complete {
        hash: [u8; 32],
        blob: Arc<Vec<u8>>,
    },
}

/// What [`Shelf::read`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    Data(Vec<u8>),
    /// Not received yet: wait for [`Shelf::changed`].
    NotYet,
    /// Another scene (or none) is on the shelf.
    Gone,
}

/// The scene this worker holds or is receiving, shared between the worker's loop (which fills
/// it) and its peer port (which reads it).
pub struct Shelf {
    held: Mutex<Held>,
    version: watch::Sender<u64>,
}

impl Default for Shelf {
    fn default() -> Self {
        Shelf {
            held: Mutex::new(Held::Nothing),
            version: watch::channel(0).0,
        }
    }
}

impl Shelf {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// A new scene of `total` bytes starts arriving (whatever was held is dropped).
    pub fn start(&self, hash: [u8; 32], total: u64) {
        *self.held() = Held::Receiving {
            hash,
            total,
            // Reserved once, so appending never moves the bytes.
            data: Vec::with_capacity(total as usize),
        };
        self.bump();
    }

    /// Appends the next verified bytes; returns the bytes held so far.
    pub fn append(&self, hash: &[u8; 32], bytes: &[u8]) -> Result<u64, String> {
        let held = {
            let mut g = self.held();
            match &mut *g {
                Held::Receiving {
                    hash: h,
                    total,
                    data,
                } if h == hash => {
                    if data.len() as u64 + bytes.len() as u64 > *total {
                        return Err("scene data beyond the announced size".into());
                    }
                    data.extend_from_slice(bytes);
                    data.len() as u64
                }
                _ => return Err("scene data for a scene this worker is not receiving".into()),
            }
        };
        self.bump();
        Ok(held)
    }

    /// The whole scene as received (its bytes stay on the shelf for peers).
    pub fn finish(&self, hash: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        let mut g = self.held();
        let done = match &mut *g {
            Held::Receiving {
                hash: h,
                total,
                data,
            } if h == hash && data.len() as u64 == *total => Arc::new(std::mem::take(data)),
            _ => return None,
        };
        *g = Held::Complete {
            hash: *hash,
            blob: done.clone(),
        };
        drop(g);
        self.bump();
        Some(done)
    }

    /// A whole scene (from the cache) to serve.
    pub fn hold(&self, hash: [u8; 32], blob: Arc<Vec<u8>>) {
        *self.held() = Held::Complete { hash, blob };
        self.bump();
    }

    pub fn clear(&self) {
        *self.held() = Held::Nothing;
        self.bump();
    }

    /// Bytes `[offset, offset + len)` of scene `hash`, if they are here.
    pub fn read(&self, hash: &[u8; 32], offset: u64, len: usize) -> Read {
        let g = self.held();
        let (data, total): (&[u8], u64) = match &*g {
            Held::Receiving {
                hash: h,
                total,
                data,
            } if h == hash => (data, *total),
            Held::Complete { hash: h, blob } if h == hash => (blob, blob.len() as u64),
            _ => return Read::Gone,
        };
        let end = offset.saturating_add(len as u64);
        if end > total {
            return Read::Gone;
        }
        if end > data.len() as u64 {
            return Read::NotYet;
        }
        Read::Data(data[offset as usize..end as usize].to_vec())
    }

    /// The size of scene `hash` if it is on the shelf.
    fn size_of(&self, hash: &[u8; 32]) -> Option<u64> {
        match &*self.held() {
            Held::Receiving { hash: h, total, .. } if h == hash => Some(*total),
            Held::Complete { hash: h, blob } if h == hash => Some(blob.len() as u64),
            _ => None,
        }
    }

    /// Changes whenever the shelf does.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

/// Serves the shelf's scene to peers that authenticate on `listener` until aborted.
pub async fn serve(listener: tokio::net::TcpListener, key: FarmKey, shelf: Arc<Shelf>) {
    let limits = ListenLimits {
        max_sessions: MAX_RELAY_PEERS,
        ..ListenLimits::default()
    };
    let mut listener = match SecureListener::new(listener, Role::Worker, key, limits) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("relay port: {e}");
            return;
        }
    };
    loop {
        let conn = listener.accept().await;
        let shelf = shelf.clone();
        tokio::spawn(async move {
            let peer = conn.peer;
            if let Err(e) = serve_peer(conn, &shelf).await {
                tracing::info!("relay to {peer}: {e}");
            }
        });
    }
}

async fn serve_peer(mut conn: rayfarm_proto::Conn, shelf: &Shelf) -> Result<(), String> {
    if conn.peer_role != Role::Worker {
        return Err(format!("refused a {:?} on the relay port", conn.peer_role));
    }
    let (hash, chunk_bytes, from) = match conn
        .recv_timeout(Duration::from_secs(10), "waiting for FetchScene")
        .await
        .map_err(|e| e.to_string())?
    {
        Msg::FetchScene {
            scene_hash,
            chunk_bytes,
            from_chunk,
        } if rayfarm_proto::SCENE_CHUNK_BYTES_RANGE.contains(&chunk_bytes) => {
            (scene_hash, chunk_bytes, from_chunk)
        }
        other => {
            let _ = conn
                .send(&Msg::Error {
                    code: ErrorCode::BadRequest,
                    message: "the relay port serves FetchScene only".into(),
                })
                .await;
            return Err(format!("unexpected {}", other.name()));
        }
    };
    let mut changed = shelf.changed();
    let mut index = from;
    loop {
        let offset = u64::from(index) * u64::from(chunk_bytes);
        let total = match shelf.size_of(&hash) {
            Some(t) => t,
            None => return gone(&mut conn).await,
        };
        if offset >= total {
            // Everything is sent: wait for the peer to close (it has what it needs).
            let _ = conn.recv_timeout(RELAY_WAIT, "the peer's goodbye").await;
            return Ok(());
        }
        let len = (total - offset).min(u64::from(chunk_bytes)) as usize;
        match shelf.read(&hash, offset, len) {
            Read::Data(data) => {
                conn.send(&Msg::SceneChunk { offset, data })
                    .await
                    .map_err(|e| e.to_string())?;
                index += 1;
            }
            Read::NotYet => match tokio::time::timeout(RELAY_WAIT, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err("no new scene data for too long".into()),
            },
            Read::Gone => return gone(&mut conn).await,
        }
    }
}

async fn gone(conn: &mut rayfarm_proto::Conn) -> Result<(), String> {
    let _ = conn
        .send(&Msg::Error {
            code: ErrorCode::BadRequest,
            message: "this worker no longer holds that scene".into(),
        })
        .await;
    Err("asked for a scene this worker does not hold".into())
}

/// What the fetching task tells the worker's loop.
#[derive(Debug)]
pub enum Fetched {
    /// Chunk `index`, checked against its hash.
    Chunk { index: u32, data: Vec<u8> },
    /// The relay failed; chunks from `next` on must come from elsewhere.
    Failed { next: u32, why: String },
}

/// Fetches scene `hash`'s chunks from `from` on from the relay at `addr`, checking each, and
/// passes them to `tx` in order. Ends after the last chunk, or with one `Failed`.
pub async fn fetch(
    addr: String,
    key: FarmKey,
    hash: [u8; 32],
    chunks: Arc<ChunkList>,
    from: u32,
    tx: tokio::sync::mpsc::Sender<Fetched>,
) {
    let mut next = from;
    let r = fetch_inner(&addr, &key, hash, &chunks, &mut next, &tx).await;
    if let Err(why) = r {
        let _ = tx
            .send(Fetched::Failed {
                next,
                why: format!("relay {addr}: {why}"),
            })
            .await;
    }
}

async fn fetch_inner(
    addr: &str,
    key: &FarmKey,
    hash: [u8; 32],
    chunks: &ChunkList,
    next: &mut u32,
    tx: &tokio::sync::mpsc::Sender<Fetched>,
) -> Result<(), String> {
    let mut conn = rayfarm_proto::connect(addr, Role::Worker, key, Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    conn.send(&Msg::FetchScene {
        scene_hash: hash,
        chunk_bytes: chunks.chunk_bytes,
        from_chunk: *next,
    })
    .await
    .map_err(|e| e.to_string())?;
    let (started, mut bytes) = (std::time::Instant::now(), 0u64);
    while *next < chunks.count() {
        if relay_too_slow(started.elapsed(), bytes) {
            return Err(format!(
                "{bytes} bytes in {:.0} s, below {} MiB/s",
                started.elapsed().as_secs_f64(),
                MIN_RELAY_BYTES_PER_S / (1024.0 * 1024.0)
            ));
        }
        match conn
            .recv_timeout(FETCH_STALL, "the next scene chunk")
            .await
            .map_err(|e| e.to_string())?
        {
            Msg::SceneChunk { offset, data } => {
                if chunks.index_at(offset) != Some(*next) {
                    return Err(format!("sent offset {offset}, expected chunk {next}"));
                }
                // Hashing a chunk (1 MiB, ~0.3 ms) off the event loop would cost more.
                chunks.verify(*next, &data).map_err(|e| e.to_string())?;
                bytes += data.len() as u64;
                if tx
                    .send(Fetched::Chunk { index: *next, data })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                *next += 1;
            }
            Msg::Error { message, .. } => return Err(message),
            other => return Err(format!("sent {}", other.name())),
        }
    }
    let _ = conn
        .send(&Msg::Goodbye {
            reason: "scene received".into(),
        })
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attack (a worker holding the key, relaying): one valid chunk just inside each
    /// `FETCH_STALL`, which kept its peers waiting for the whole scene. Judged on the average
    /// rate after a grace period, such a relay is left after about 110 s; a relay that waits
    /// for the scene itself at first, then sends at LAN speed, or forwards a busy master's
    /// slow stream, is kept.
    #[test]
    fn a_relay_that_trickles_chunks_is_left_and_a_fast_one_kept() {
        let mib = 1024 * 1024;
        let s = Duration::from_secs;
        assert!(!relay_too_slow(s(59), 0), "within the grace period");
        // A chunk of 1 MiB every 9 s.
        let trickle = |t: u64| relay_too_slow(s(t), t / 9 * mib);
        assert!(!trickle(60));
        assert!((61..120).any(trickle), "a trickle is left within 120 s");
        // Nothing for 50 s (it receives the scene itself), then 50 MiB/s.
        let late_fast = |t: u64| relay_too_slow(s(t), t.saturating_sub(50) * 50 * mib);
        assert!(!(0..600).any(late_fast));
        // Forwarding a busy master's 300 KiB/s from the start.
        assert!(!(0..3600).any(|t| relay_too_slow(s(t), t * 300 * 1024)));
    }

    #[test]
    fn the_shelf_serves_what_it_has_and_nothing_else() {
        let s = Shelf::default();
        let h = [3; 32];
        assert_eq!(s.read(&h, 0, 4), Read::Gone);
        s.start(h, 10);
        assert_eq!(s.read(&h, 0, 4), Read::NotYet);
        s.append(&h, &[1, 2, 3, 4, 5]).unwrap();
        assert_eq!(s.read(&h, 0, 4), Read::Data(vec![1, 2, 3, 4]));
        assert_eq!(s.read(&h, 4, 4), Read::NotYet);
        assert_eq!(s.read(&h, 8, 4), Read::Gone, "beyond the scene");
        assert!(s.append(&h, &[0; 6]).is_err(), "beyond the announced size");
        assert!(s.append(&[4; 32], &[0]).is_err(), "another scene");
        assert!(s.finish(&h).is_none(), "not complete");
        s.append(&h, &[6, 7, 8, 9, 10]).unwrap();
        let blob = s.finish(&h).unwrap();
        assert_eq!(blob.len(), 10);
        assert_eq!(s.read(&h, 8, 2), Read::Data(vec![9, 10]));
        assert_eq!(s.read(&[4; 32], 0, 2), Read::Gone);
        s.clear();
        assert_eq!(s.read(&h, 0, 2), Read::Gone);
    }
}
