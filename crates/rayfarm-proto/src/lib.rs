//! rayfarm's wire protocol: the only crate whose types are serialized onto the network.
//!
//! A connection starts with a fixed 16-byte preamble in each direction (magic, protocol version,
//! role), so that peers of different versions can still tell each other which versions they
//! speak. Then the farm channel ([`channel`]): a Noise `NNpsk0` handshake keyed by the farm key,
//! after which every message is one postcard-encoded [`Msg`] carried in encrypted, authenticated
//! records. Nothing at all is served to a peer that has not completed the handshake, so every
//! peer that is served holds the farm key, and a relay or man in the middle can neither read,
//! inject nor change a message. [`listener`] is the one accept loop of every rayfarm TCP port
//! (daemon, master, the manager's worker port): it bounds connections, handshakes and sessions.
//! See PROTOCOL.md.

pub mod addr;
pub mod auth;
pub mod channel;
pub mod listener;
pub mod messages;
pub mod scene_chunks;
pub mod sums;
pub mod unit_sums;

pub use auth::{FarmKey, KeyError};
pub use channel::ChannelError;
pub use listener::{ListenLimits, SecureListener};
pub use messages::*;

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Version of the messages and handshake below, and of the bytes a unit renders. Bump on any
/// incompatible change, including a renderer change that alters a unit's result: results of
/// two renderer versions must never be merged into one image.
/// Version 3: the Noise channel replaced the challenge-response MACs. Version 4: compact unit
/// sums. Version 5: workers relay scenes to each other (`SceneSource`, `NeedChunks`,
/// `FetchScene`, `WorkerHello::peer_port`). Version 6: the renderer's samples changed
/// (roulette, sampling dimensions, libm maths, environment-map sampling); no message did.
/// Version 7: the renderer's own 8-wide BVH, whose traversal order can pick another of two
/// triangles hit at the same distance; no message changed. Version 8: the sampler's 4-D points
/// (a bounce's BSDF direction stratified with the next vertex's light point); no message changed.
/// Version 9: emissive triangles are weighed as lights by their emission texture (black ones are
/// no lights); no message changed. Version 10: branch-free sines and cosines of sampled azimuths.
/// Version 11: a glossy first vertex splits into two BSDF samples; no message changed.
/// Version 12: the BVH of large scenes is built in chunks on all cores (another tree, so ties
/// between triangles at the same distance can go the other way); no message changed.
/// Version 13: light samples pick their light through a light tree. Version 14: a light
/// sample's shadow ray runs from its offset origin to the sampled point (it ran beside that
/// segment, and a low lamp shadowed itself); no message changed.
pub const PROTOCOL_VERSION: u32 = 14;
/// First bytes of every connection, in both directions.
pub const PREAMBLE_MAGIC: [u8; 8] = *b"RAYFARM\0";
/// Largest frame accepted (scene data travels in chunks of [`SCENE_CHUNK_BYTES`]).
pub const MAX_FRAME_BYTES: usize = 32 << 20;
/// Largest message a server accepts before it expects bulk from the peer (and always, where
/// it never does): requests, hellos, discovery answers. A keyholder could otherwise make each
/// of a server's sessions hold a 32 MiB half-sent message, or have a scanning master decode
/// 32 MiB of one-byte strings into 800 MB ([`Conn::set_max_message_bytes`]).
pub const MAX_CONTROL_MESSAGE_BYTES: usize = 64 << 10;

/// The largest message a ready worker of `threads` threads needs to send to a master whose
/// largest unit has `unit_pixels` pixels: a `UnitDone` of the longest encoded sums, or a
/// `GiveBack` of every unit it may hold (two per thread, 64 bytes each is generous), and never
/// less than a control message or more than a frame. A keyholder's half-sent result then holds
/// this much of the master's memory per session, not 32 MiB.
pub fn max_worker_message_bytes(unit_pixels: usize, threads: u32) -> usize {
    let result = unit_sums::max_encoded_bytes(unit_pixels).saturating_add(1 << 10);
    let give_back = (threads as usize).saturating_mul(2 * 64);
    result
        .max(give_back)
        .clamp(MAX_CONTROL_MESSAGE_BYTES, MAX_FRAME_BYTES)
}
/// Largest Noise handshake message accepted (ours are 48 bytes each way).
pub const MAX_HANDSHAKE_MESSAGE_BYTES: usize = 256;
/// Size of one scene chunk: small enough that a relay forwards it after a few ms (each level
/// of the distribution tree adds one chunk's time), large enough that framing costs nothing.
pub const SCENE_CHUNK_BYTES: usize = 1 << 20;
/// Chunk sizes a worker accepts in `SceneSource`.
pub const SCENE_CHUNK_BYTES_RANGE: std::ops::RangeInclusive<u32> = (64 << 10)..=(8 << 20);
/// Time allowed for the preamble and the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default daemon port.
pub const DAEMON_PORT: u16 = 48000;
/// Default master port.
pub const MASTER_PORT: u16 = 21000;

/// Who opened the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    Master = 1,
    Worker = 2,
    Cli = 3,
    Daemon = 4,
}

impl Role {
    fn from_u8(v: u8) -> Option<Role> {
        Some(match v {
            1 => Role::Master,
            2 => Role::Worker,
            3 => Role::Cli,
            4 => Role::Daemon,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("{peer}: {source}")]
    Io {
        peer: String,
        source: std::io::Error,
    },
    #[error("{peer}: not a rayfarm peer (bad preamble)")]
    NotRayfarm { peer: String },
    #[error("{peer}: protocol version mismatch: the peer speaks version {theirs}, this rayfarm speaks version {ours}; run the same rayfarm version on every machine")]
    VersionMismatch {
        peer: String,
        ours: u32,
        theirs: u32,
    },
    #[error("{peer}: authentication failed: {reason}")]
    AuthFailed { peer: String, reason: String },
    /// The peer closed the connection before its handshake answer: it is shedding handshakes
    /// (too many at once from this address) or, rarely, refused our key without saying so.
    #[error("{peer}: closed the connection during the handshake (it may be busy with too many handshakes at once, or it refused our farm key: check RAYFARM_KEY on both machines)")]
    HandshakeClosed { peer: String },
    #[error("{peer}: {what}")]
    Protocol { peer: String, what: String },
    #[error("{peer}: connection closed")]
    Closed { peer: String },
    #[error("{peer}: timed out {what}")]
    Timeout { peer: String, what: String },
    #[error("{peer}: {source}; closing the connection")]
    Channel {
        peer: String,
        source: channel::ChannelError,
    },
    #[error("{peer}: message of {bytes} bytes is larger than the {limit}-byte limit")]
    TooLarge {
        peer: String,
        bytes: usize,
        limit: usize,
    },
}

impl ProtoError {
    /// Whether the peer closed or reset the connection (as opposed to breaking the protocol).
    pub fn is_closed(&self) -> bool {
        use std::io::ErrorKind::*;
        match self {
            ProtoError::Closed { .. } => true,
            ProtoError::Io { source, .. } => matches!(
                source.kind(),
                BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof
            ),
            _ => false,
        }
    }
}

/// A connection through the farm channel: both sides hold the farm key, and every message is
/// encrypted and authenticated. `recv` is cancellation-safe (it may be a `select!` arm): bytes
/// read so far stay in the connection's buffer.
pub struct Conn {
    stream: TcpStream,
    transport: channel::Transport,
    rbuf: bytes::BytesMut,
    wbuf: Vec<u8>,
    /// Bytes of `wbuf` already written.
    wpos: usize,
    max_message_bytes: usize,
    pub peer: SocketAddr,
    /// The role the peer announced.
    pub peer_role: Role,
    /// A slot in the listener's session limit, freed when the connection is dropped.
    _session: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Conn {
    fn new(
        stream: TcpStream,
        transport: channel::Transport,
        peer: SocketAddr,
        peer_role: Role,
    ) -> Conn {
        let _ = stream.set_nodelay(true);
        Conn {
            stream,
            transport,
            rbuf: bytes::BytesMut::with_capacity(64 << 10),
            wbuf: Vec::new(),
            wpos: 0,
            max_message_bytes: MAX_FRAME_BYTES,
            peer,
            peer_role,
            _session: None,
        }
    }

    /// The largest message [`Conn::recv`] accepts from now on: [`MAX_FRAME_BYTES`] on a
    /// connection this side opened, [`MAX_CONTROL_MESSAGE_BYTES`] on one it accepted until the
    /// server raises it (a master, once its worker is ready to send results). A message
    /// announced longer is refused before any of it is kept.
    pub fn set_max_message_bytes(&mut self, limit: usize) {
        self.max_message_bytes = limit.min(MAX_FRAME_BYTES);
    }

    pub(crate) fn hold_session(&mut self, permit: tokio::sync::OwnedSemaphorePermit) {
        self._session = Some(permit);
    }

    /// This side's address of the connection.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    fn peer_name(&self) -> String {
        self.peer.to_string()
    }

    pub async fn send(&mut self, m: &Msg) -> Result<(), ProtoError> {
        let bytes = postcard::to_stdvec(m).map_err(|e| ProtoError::Protocol {
            peer: self.peer_name(),
            what: format!("cannot encode message: {e}"),
        })?;
        // What the peer accepts: a frame of at most [`MAX_FRAME_BYTES`] (its limit on what it
        // receives from this side, set by its state, is its own to enforce).
        if bytes.len() > MAX_FRAME_BYTES {
            return Err(ProtoError::TooLarge {
                peer: self.peer_name(),
                bytes: bytes.len(),
                limit: MAX_FRAME_BYTES,
            });
        }
        // A send cancelled half way (e.g. a `select!` that stopped waiting) left the rest of its
        // records here: they go first, so the stream stays whole.
        self.flush_pending().await?;
        self.wbuf.clear();
        self.wpos = 0;
        self.transport
            .seal(&bytes, &mut self.wbuf)
            .map_err(|e| ProtoError::Channel {
                peer: self.peer.to_string(),
                source: e,
            })?;
        self.flush_pending().await
    }

    /// Writes what is left of the last message. Cancellation-safe: `write` writes some bytes or
    /// none, and the position is kept.
    async fn flush_pending(&mut self) -> Result<(), ProtoError> {
        while self.wpos < self.wbuf.len() {
            let n = self
                .stream
                .write(&self.wbuf[self.wpos..])
                .await
                .map_err(|e| ProtoError::Io {
                    peer: self.peer.to_string(),
                    source: e,
                })?;
            if n == 0 {
                return Err(ProtoError::Closed {
                    peer: self.peer_name(),
                });
            }
            self.wpos += n;
        }
        self.wbuf.clear();
        self.wpos = 0;
        // Scene chunks make this buffer megabytes large; don't keep that per connection.
        if self.wbuf.capacity() > (1 << 20) {
            self.wbuf = Vec::new();
        }
        Ok(())
    }

    /// Receives one message. A record that fails authentication, an oversized or undecodable
    /// message is an error; the caller should then drop the connection.
    pub async fn recv(&mut self) -> Result<Msg, ProtoError> {
        let bytes = self.next_message(self.max_message_bytes).await?;
        postcard::from_bytes(&bytes).map_err(|e| ProtoError::Protocol {
            peer: self.peer_name(),
            what: format!("undecodable message of {} bytes ({e})", bytes.len()),
        })
    }

    /// Reads the initiator's key confirmation (an empty message).
    async fn recv_confirmation(&mut self) -> Result<(), ProtoError> {
        self.next_message(0).await.map(|_| ())
    }

    /// The next whole message's bytes, at most `limit` of them. Cancellation-safe: bytes read
    /// so far stay in `rbuf` and in the transport's partial message.
    async fn next_message(&mut self, limit: usize) -> Result<Vec<u8>, ProtoError> {
        loop {
            let opened =
                self.transport
                    .open(&mut self.rbuf, limit)
                    .map_err(|e| ProtoError::Channel {
                        peer: self.peer.to_string(),
                        source: e,
                    })?;
            if let Some(bytes) = opened {
                return Ok(bytes);
            }
            // Room for at least one whole record per read.
            self.rbuf.reserve(channel::MAX_NOISE_MESSAGE + 2);
            // `read_buf` either appends what it read or nothing.
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| ProtoError::Io {
                    peer: self.peer.to_string(),
                    source: e,
                })?;
            if n == 0 {
                return Err(ProtoError::Closed {
                    peer: self.peer_name(),
                });
            }
        }
    }

    /// `recv` with a deadline.
    pub async fn recv_timeout(&mut self, t: Duration, what: &str) -> Result<Msg, ProtoError> {
        match tokio::time::timeout(t, self.recv()).await {
            Ok(r) => r,
            Err(_) => Err(ProtoError::Timeout {
                peer: self.peer_name(),
                what: what.to_string(),
            }),
        }
    }
}

fn preamble(role: Role) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&PREAMBLE_MAGIC);
    p[8..12].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    p[12] = role as u8;
    p
}

/// Exchanges preambles; returns the peer's role and its preamble.
async fn exchange_preamble(
    stream: &mut TcpStream,
    peer: &str,
    role: Role,
) -> Result<(Role, [u8; 16]), ProtoError> {
    let io = |e| ProtoError::Io {
        peer: peer.to_string(),
        source: e,
    };
    stream.write_all(&preamble(role)).await.map_err(io)?;
    let mut theirs = [0u8; 16];
    stream.read_exact(&mut theirs).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProtoError::NotRayfarm {
                peer: peer.to_string(),
            }
        } else {
            io(e)
        }
    })?;
    if theirs[..8] != PREAMBLE_MAGIC {
        return Err(ProtoError::NotRayfarm {
            peer: peer.to_string(),
        });
    }
    let v = u32::from_le_bytes([theirs[8], theirs[9], theirs[10], theirs[11]]);
    if v != PROTOCOL_VERSION {
        return Err(ProtoError::VersionMismatch {
            peer: peer.to_string(),
            ours: PROTOCOL_VERSION,
            theirs: v,
        });
    }
    let r = Role::from_u8(theirs[12]).ok_or_else(|| ProtoError::NotRayfarm {
        peer: peer.to_string(),
    })?;
    Ok((r, theirs))
}

/// Reads one length-prefixed handshake message (an empty one is a refusal).
async fn read_handshake(stream: &mut TcpStream, peer: &str) -> Result<Vec<u8>, ProtoError> {
    let io = |e| ProtoError::Io {
        peer: peer.to_string(),
        source: e,
    };
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.map_err(io)?;
    let n = u16::from_le_bytes(len) as usize;
    if n > MAX_HANDSHAKE_MESSAGE_BYTES {
        return Err(ProtoError::Protocol {
            peer: peer.to_string(),
            what: format!(
                "bad handshake: a message of {n} bytes (at most {MAX_HANDSHAKE_MESSAGE_BYTES})"
            ),
        });
    }
    let mut m = vec![0u8; n];
    stream.read_exact(&mut m).await.map_err(io)?;
    Ok(m)
}

/// How many host-name lookups may run at once (each takes a blocking thread).
pub const MAX_NAME_LOOKUPS: usize = 32;
static NAME_LOOKUPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_NAME_LOOKUPS);

/// Opens a TCP connection to `addr` (`IP:PORT` or `NAME:PORT`). A name is looked up in a task
/// of its own holding one of [`MAX_NAME_LOOKUPS`] permits until the lookup ends: a caller's
/// timeout does not cancel a system lookup, and names of a slow domain (a manager scans every
/// registered address every few seconds) would otherwise tie up tokio's blocking threads.
async fn connect_tcp(addr: &str) -> std::io::Result<TcpStream> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return TcpStream::connect(a).await;
    }
    let permit = NAME_LOOKUPS
        .acquire()
        .await
        .map_err(|_| std::io::Error::other("name lookups are closed"))?;
    let name = addr.to_string();
    let lookup = tokio::spawn(async move {
        let _permit = permit;
        tokio::net::lookup_host(name)
            .await
            .map(|a| a.collect::<Vec<SocketAddr>>())
    });
    let addrs = lookup
        .await
        .map_err(|e| std::io::Error::other(format!("name lookup failed: {e}")))??;
    let mut last = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{addr}: the name has no address"),
    );
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Connects to `addr`, exchanges preambles and runs the channel handshake: on success both
/// sides hold the farm key and every message is encrypted.
pub async fn connect(
    addr: &str,
    role: Role,
    key: &FarmKey,
    connect_timeout: Duration,
) -> Result<Conn, ProtoError> {
    let mut stream = match tokio::time::timeout(connect_timeout, connect_tcp(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(ProtoError::Io {
                peer: addr.to_string(),
                source: e,
            })
        }
        Err(_) => {
            return Err(ProtoError::Timeout {
                peer: addr.to_string(),
                what: "connecting".into(),
            })
        }
    };
    let peer = stream.peer_addr().map_err(|e| ProtoError::Io {
        peer: addr.to_string(),
        source: e,
    })?;
    let handshake = async {
        let (peer_role, theirs) = exchange_preamble(&mut stream, addr, role).await?;
        let ours = preamble(role);
        let channel_err = |e| {
            ProtoError::AuthFailed {
            peer: addr.to_string(),
            reason: match e {
                channel::ChannelError::Refused => "the peer refused our farm key (wrong farm key: check RAYFARM_KEY or the config file on both machines)".to_string(),
                channel::ChannelError::WrongKey => "the peer does not hold our farm key (wrong farm key: check RAYFARM_KEY or the config file on both machines)".to_string(),
                other => other.to_string(),
            },
        }
        };
        let (init, m1) =
            channel::Initiator::start(key.channel_psk(), &ours, &theirs).map_err(channel_err)?;
        stream.write_all(&m1).await.map_err(|e| ProtoError::Io {
            peer: addr.to_string(),
            source: e,
        })?;
        let m2 = read_handshake(&mut stream, addr)
            .await
            .map_err(|e| match e {
                // A server that refuses our key says so (an empty message 2); one that closes
                // without a word is most likely shedding handshakes (its pending limit), which
                // a client may retry.
                ProtoError::Io { .. } | ProtoError::Closed { .. } => ProtoError::HandshakeClosed {
                    peer: addr.to_string(),
                },
                other => other,
            })?;
        let mut transport = init.finish(&m2).map_err(channel_err)?;
        // Key confirmation: an empty first message, which only a live holder of our ephemeral
        // key can produce (message 1 alone could be a replay); the responder waits for it.
        let mut confirm = Vec::new();
        transport
            .seal(&[], &mut confirm)
            .map_err(|e| ProtoError::Channel {
                peer: addr.to_string(),
                source: e,
            })?;
        stream
            .write_all(&confirm)
            .await
            .map_err(|e| ProtoError::Io {
                peer: addr.to_string(),
                source: e,
            })?;
        Ok(Conn::new(stream, transport, peer, peer_role))
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(r) => r,
        Err(_) => Err(ProtoError::Timeout {
            peer: addr.to_string(),
            what: "during the handshake".into(),
        }),
    }
}

/// Server side of the preamble and the channel handshake. Peers without the farm key get a
/// refusal and an error; nothing else. Servers normally go through [`SecureListener`], which
/// bounds connections and deadlines around this.
pub async fn accept(stream: TcpStream, role: Role, key: &FarmKey) -> Result<Conn, ProtoError> {
    accept_within(stream, role, key, HANDSHAKE_TIMEOUT).await
}

/// [`accept`] with a deadline of `timeout` for the preamble and the handshake.
pub async fn accept_within(
    mut stream: TcpStream,
    role: Role,
    key: &FarmKey,
    timeout: Duration,
) -> Result<Conn, ProtoError> {
    let peer = stream.peer_addr().map_err(|e| ProtoError::Io {
        peer: "?".into(),
        source: e,
    })?;
    let name = peer.to_string();
    let handshake = async {
        let (peer_role, theirs) = exchange_preamble(&mut stream, &name, role).await?;
        let ours = preamble(role);
        let m1 = read_handshake(&mut stream, &name).await?;
        match channel::respond(key.channel_psk(), &ours, &theirs, &m1) {
            Ok((transport, m2)) => {
                stream.write_all(&m2).await.map_err(|e| ProtoError::Io {
                    peer: name.clone(),
                    source: e,
                })?;
                let mut conn = Conn::new(stream, transport, peer, peer_role);
                conn.set_max_message_bytes(MAX_CONTROL_MESSAGE_BYTES);
                // A replayed message 1 gets this far; only a live keyholder gets further.
                conn.recv_confirmation().await?;
                Ok(conn)
            }
            Err(channel::ChannelError::WrongKey) => {
                let _ = stream.write_all(&channel::REFUSAL).await;
                Err(ProtoError::AuthFailed {
                    peer: name.clone(),
                    reason: "the client's farm key does not match ours (wrong farm key)".into(),
                })
            }
            Err(e) => Err(ProtoError::Channel {
                peer: name.clone(),
                source: e,
            }),
        }
    };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(r) => r,
        Err(_) => Err(ProtoError::Timeout {
            peer: name,
            what: "during the handshake".into(),
        }),
    }
}

#[cfg(test)]
mod tests;
