//! rayfarm's wire protocol: the only crate whose types are serialized onto the network.
//!
//! A connection starts with a fixed 16-byte preamble in each direction (magic, protocol version,
//! role), so that peers of different versions can still tell each other which versions they
//! speak. After that, every message is a length-prefixed frame (u32 little-endian length, at most
//! [`MAX_FRAME_BYTES`]) holding one postcard-encoded [`Msg`]. The server then challenges the
//! client; apart from [`Msg::Discover`], nothing is served until the client proves it holds the
//! farm key (BLAKE3 keyed MACs over both nonces, compared in constant time; the key itself never
//! crosses the wire), and the server proves it too. See PROTOCOL.md.

pub mod auth;
pub mod messages;

pub use auth::FarmKey;
pub use messages::*;

use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// Version of the messages and handshake below. Bump on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 2;
/// First bytes of every connection, in both directions.
pub const PREAMBLE_MAGIC: [u8; 8] = *b"RAYFARM\0";
/// Largest frame accepted (scene data travels in chunks of [`SCENE_CHUNK_BYTES`]).
pub const MAX_FRAME_BYTES: usize = 32 << 20;
/// Largest frame accepted before the peer has authenticated (challenge, auth, discovery).
pub const MAX_HANDSHAKE_FRAME_BYTES: usize = 64 << 10;
/// Size of one scene chunk.
pub const SCENE_CHUNK_BYTES: usize = 8 << 20;
/// Time allowed for the preamble and authentication.
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
    #[error("{peer}: {what}")]
    Protocol { peer: String, what: String },
    #[error("{peer}: connection closed")]
    Closed { peer: String },
    #[error("{peer}: timed out {what}")]
    Timeout { peer: String, what: String },
}

/// A framed, handshaken connection.
pub struct Conn {
    framed: Framed<TcpStream, LengthDelimitedCodec>,
    pub peer: SocketAddr,
    /// The role the peer announced.
    pub peer_role: Role,
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .little_endian()
        .length_field_length(4)
        .max_frame_length(MAX_HANDSHAKE_FRAME_BYTES)
        .new_codec()
}

impl Conn {
    fn new(stream: TcpStream, peer: SocketAddr, peer_role: Role) -> Conn {
        let _ = stream.set_nodelay(true);
        Conn {
            framed: Framed::new(stream, codec()),
            peer,
            peer_role,
        }
    }

    /// Raises the frame limit once the peer is authenticated.
    fn authenticated(&mut self) {
        self.framed
            .codec_mut()
            .set_max_frame_length(MAX_FRAME_BYTES);
    }

    /// This side's address of the connection.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.framed.get_ref().local_addr()
    }

    fn peer_name(&self) -> String {
        self.peer.to_string()
    }

    pub async fn send(&mut self, m: &Msg) -> Result<(), ProtoError> {
        let bytes = postcard::to_stdvec(m).map_err(|e| ProtoError::Protocol {
            peer: self.peer_name(),
            what: format!("cannot encode message: {e}"),
        })?;
        self.framed
            .send(bytes::Bytes::from(bytes))
            .await
            .map_err(|e| ProtoError::Io {
                peer: self.peer_name(),
                source: e,
            })
    }

    /// Receives one message. Oversized, truncated or undecodable frames are errors; the
    /// caller should then drop the connection.
    pub async fn recv(&mut self) -> Result<Msg, ProtoError> {
        match self.framed.next().await {
            None => Err(ProtoError::Closed {
                peer: self.peer_name(),
            }),
            Some(Err(e)) => Err(ProtoError::Protocol {
                peer: self.peer_name(),
                what: format!("bad frame ({e})"),
            }),
            Some(Ok(bytes)) => postcard::from_bytes(&bytes).map_err(|e| ProtoError::Protocol {
                peer: self.peer_name(),
                what: format!("undecodable message of {} bytes ({e})", bytes.len()),
            }),
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

/// Exchanges preambles; returns the peer's role.
async fn exchange_preamble(
    stream: &mut TcpStream,
    peer: &str,
    role: Role,
) -> Result<Role, ProtoError> {
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
    Role::from_u8(theirs[12]).ok_or_else(|| ProtoError::NotRayfarm {
        peer: peer.to_string(),
    })
}

/// Connects to `addr`, exchanges preambles and, with a key, authenticates both ways.
pub async fn connect(
    addr: &str,
    role: Role,
    key: Option<&FarmKey>,
    connect_timeout: Duration,
) -> Result<Conn, ProtoError> {
    let mut stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
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
        let peer_role = exchange_preamble(&mut stream, addr, role).await?;
        let mut conn = Conn::new(stream, peer, peer_role);
        let Msg::Challenge {
            nonce: server_nonce,
        } = conn.recv().await?
        else {
            return Err(ProtoError::Protocol {
                peer: addr.to_string(),
                what: "expected a challenge".into(),
            });
        };
        if let Some(key) = key {
            let client_nonce = auth::nonce();
            let mac = key.client_mac(&server_nonce, &client_nonce);
            conn.send(&Msg::Auth {
                nonce: client_nonce,
                mac,
            })
            .await?;
            match conn.recv().await? {
                Msg::AuthOk { mac } => {
                    if !key.verify_server_mac(&server_nonce, &client_nonce, &mac) {
                        return Err(ProtoError::AuthFailed {
                            peer: addr.to_string(),
                            reason: "the server does not hold our farm key".into(),
                        });
                    }
                    conn.authenticated();
                }
                Msg::Error { message, .. } => {
                    return Err(ProtoError::AuthFailed {
                        peer: addr.to_string(),
                        reason: message,
                    })
                }
                other => {
                    return Err(ProtoError::Protocol {
                        peer: addr.to_string(),
                        what: format!("unexpected {} during authentication", other.name()),
                    })
                }
            }
        }
        Ok(conn)
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(r) => r,
        Err(_) => Err(ProtoError::Timeout {
            peer: addr.to_string(),
            what: "during the handshake".into(),
        }),
    }
}

/// What a server got from a new connection.
pub enum Accepted {
    /// An unauthenticated discovery request: answer with [`Msg::DaemonInfo`] and close.
    Discover(Conn),
    /// An authenticated peer.
    Authenticated(Conn),
}

/// Server side of the handshake. Unauthenticated peers may only ask [`Msg::Discover`].
pub async fn accept(
    mut stream: TcpStream,
    role: Role,
    key: &FarmKey,
) -> Result<Accepted, ProtoError> {
    let peer = stream.peer_addr().map_err(|e| ProtoError::Io {
        peer: "?".into(),
        source: e,
    })?;
    let name = peer.to_string();
    let handshake = async {
        let peer_role = exchange_preamble(&mut stream, &name, role).await?;
        let mut conn = Conn::new(stream, peer, peer_role);
        let server_nonce = auth::nonce();
        conn.send(&Msg::Challenge {
            nonce: server_nonce,
        })
        .await?;
        match conn.recv().await? {
            Msg::Discover => Ok(Accepted::Discover(conn)),
            Msg::Auth { nonce, mac } => {
                if key.verify_client_mac(&server_nonce, &nonce, &mac) {
                    let mac = key.server_mac(&server_nonce, &nonce);
                    conn.send(&Msg::AuthOk { mac }).await?;
                    conn.authenticated();
                    Ok(Accepted::Authenticated(conn))
                } else {
                    let _ = conn
                        .send(&Msg::Error {
                            code: ErrorCode::Unauthorized,
                            message: "wrong farm key (check RAYFARM_KEY or the config file on both machines)".into(),
                        })
                        .await;
                    Err(ProtoError::AuthFailed {
                        peer: name.clone(),
                        reason: "the client's farm key does not match ours".into(),
                    })
                }
            }
            other => Err(ProtoError::Protocol {
                peer: name.clone(),
                what: format!("expected authentication, got {}", other.name()),
            }),
        }
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(r) => r,
        Err(_) => Err(ProtoError::Timeout {
            peer: name,
            what: "during the handshake".into(),
        }),
    }
}

#[cfg(test)]
mod tests;
