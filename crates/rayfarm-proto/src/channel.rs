//! The farm channel: a Noise handshake keyed by the farm key, then encrypted, authenticated
//! records.
//!
//! Why Noise (`snow`) and not TLS: every peer of a farm holds one shared secret and nothing
//! else; there are no certificates, names or authorities to manage. Noise's `NNpsk0` pattern
//! is made for exactly that: both sides contribute fresh ephemeral X25519 keys, the pre-shared
//! key (derived from the farm key, [`crate::FarmKey::channel_psk`]) is mixed in before the first
//! message, so each side proves it holds the key by producing a message the other can decrypt,
//! and the session keys depend on both ephemeral keys, so a relay that forwards the handshake
//! learns nothing it can use. TLS 1.3 with an external PSK would do the same with far more
//! machinery (and rustls does not offer external PSKs). The handshake's prologue binds both
//! 16-byte preambles (magic, version, role), so a man in the middle cannot change them either.
//!
//! This module owns the byte formats; [`crate::Conn`] owns the socket. Nothing here does IO,
//! so every format is unit-tested without sockets.
//!
//! Handshake (after the preambles): the initiator sends `u16 LE length | Noise message 1`, the
//! responder answers `u16 LE length | Noise message 2`, or a length of 0 when message 1 did not
//! decrypt (the initiator's farm key is not ours). Records after that: `u16 LE length | Noise
//! transport message`. A message's first record's plaintext starts with the message's length
//! (u32 LE), checked against the limit at once, followed by its first bytes; the following
//! records carry the rest, up to [`RECORD_PLAINTEXT_BYTES`] each, and are decrypted straight
//! into the message (no copy beyond the decryption itself). Noise's per-direction counter
//! nonces mean a record that is changed, dropped, replayed or reordered fails to decrypt: the
//! connection is then closed.

use snow::{HandshakeState, TransportState};

/// The Noise protocol name: the pattern and the primitives, which both sides must agree on.
/// AES-GCM (with AES-NI) ships scenes faster than ChaCha20-Poly1305 on the machines we measured.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_BLAKE2s";
/// Prefix of the Noise prologue; the two preambles follow it (initiator's first).
pub const PROLOGUE_LABEL: &[u8] = b"rayfarm channel v3";
/// Largest Noise message (the spec's limit).
pub const MAX_NOISE_MESSAGE: usize = 65535;
/// Authentication tag added to every encrypted payload.
pub const TAG_BYTES: usize = 16;
/// Plaintext bytes carried by one record (the tag takes the rest of a Noise message).
pub const RECORD_PLAINTEXT_BYTES: usize = MAX_NOISE_MESSAGE - TAG_BYTES;
/// Bytes of the message length at the start of a message's first record.
const LENGTH_BYTES: usize = 4;

/// A channel failure. Every variant ends the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChannelError {
    #[error("the peer's handshake did not decrypt with our farm key (wrong farm key)")]
    WrongKey,
    #[error("the peer refused our farm key (wrong farm key)")]
    Refused,
    #[error("record {record} failed authentication (tampered with or corrupted in transit)")]
    Tampered { record: u64 },
    #[error("a message of more than {limit} bytes was announced")]
    TooLarge { limit: usize },
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    #[error("noise: {0}")]
    Noise(String),
}

fn noise(e: snow::Error) -> ChannelError {
    ChannelError::Noise(e.to_string())
}

fn prologue(initiator_preamble: &[u8; 16], responder_preamble: &[u8; 16]) -> Vec<u8> {
    let mut p = PROLOGUE_LABEL.to_vec();
    p.extend_from_slice(initiator_preamble);
    p.extend_from_slice(responder_preamble);
    p
}

fn builder<'a>(psk: &'a [u8; 32], prologue: &'a [u8]) -> Result<snow::Builder<'a>, ChannelError> {
    // The params string is a constant; parsing it cannot fail at run time.
    let params = NOISE_PARAMS.parse().map_err(noise)?;
    snow::Builder::new(params)
        .psk(0, psk)
        .map_err(noise)?
        .prologue(prologue)
        .map_err(noise)
}

/// The initiator (client) side of the handshake.
pub struct Initiator {
    hs: HandshakeState,
}

impl Initiator {
    /// Starts a handshake; returns the state and message 1, framed for the wire.
    pub fn start(
        psk: &[u8; 32],
        own_preamble: &[u8; 16],
        peer_preamble: &[u8; 16],
    ) -> Result<(Initiator, Vec<u8>), ChannelError> {
        let pro = prologue(own_preamble, peer_preamble);
        let mut hs = builder(psk, &pro)?.build_initiator().map_err(noise)?;
        let mut buf = vec![0u8; 2 + 128];
        let n = hs.write_message(&[], &mut buf[2..]).map_err(noise)?;
        buf[..2].copy_from_slice(&(n as u16).to_le_bytes());
        buf.truncate(2 + n);
        Ok((Initiator { hs }, buf))
    }

    /// Takes the responder's message 2 (without its length prefix; empty means refused).
    pub fn finish(mut self, msg2: &[u8]) -> Result<Transport, ChannelError> {
        if msg2.is_empty() {
            return Err(ChannelError::Refused);
        }
        let mut scratch = [0u8; 64];
        self.hs
            .read_message(msg2, &mut scratch)
            .map_err(|_| ChannelError::WrongKey)?;
        Ok(Transport::new(
            self.hs.into_transport_mode().map_err(noise)?,
        ))
    }
}

/// The responder (server) side: takes message 1 (without its length prefix) and returns the
/// transport and message 2, framed for the wire. On [`ChannelError::WrongKey`] the caller sends
/// [`REFUSAL`] and closes.
pub fn respond(
    psk: &[u8; 32],
    own_preamble: &[u8; 16],
    peer_preamble: &[u8; 16],
    msg1: &[u8],
) -> Result<(Transport, Vec<u8>), ChannelError> {
    let pro = prologue(peer_preamble, own_preamble);
    let mut hs = builder(psk, &pro)?.build_responder().map_err(noise)?;
    let mut scratch = [0u8; 64];
    hs.read_message(msg1, &mut scratch)
        .map_err(|_| ChannelError::WrongKey)?;
    let mut buf = vec![0u8; 2 + 128];
    let n = hs.write_message(&[], &mut buf[2..]).map_err(noise)?;
    buf[..2].copy_from_slice(&(n as u16).to_le_bytes());
    buf.truncate(2 + n);
    Ok((
        Transport::new(hs.into_transport_mode().map_err(noise)?),
        buf,
    ))
}

/// What a responder sends instead of message 2 when message 1 did not decrypt.
pub const REFUSAL: [u8; 2] = [0, 0];

/// The session after the handshake: seals messages into records and opens records into
/// messages, with a bound on message size checked before the message's bytes arrive.
pub struct Transport {
    state: TransportState,
    /// The message being received and its announced length.
    partial: Vec<u8>,
    expected: Option<usize>,
    records_in: u64,
    /// Decryption buffer of a message's first record.
    first: Vec<u8>,
}

impl Transport {
    fn new(state: TransportState) -> Transport {
        Transport {
            state,
            partial: Vec::new(),
            expected: None,
            records_in: 0,
            first: vec![0u8; RECORD_PLAINTEXT_BYTES],
        }
    }

    fn seal_record(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), ChannelError> {
        let at = out.len();
        out.resize(at + 2 + plain.len() + TAG_BYTES, 0);
        let n = self
            .state
            .write_message(plain, &mut out[at + 2..])
            .map_err(noise)?;
        debug_assert_eq!(n, plain.len() + TAG_BYTES);
        out[at..at + 2].copy_from_slice(&(n as u16).to_le_bytes());
        Ok(())
    }

    /// Appends the records carrying `msg` (at most 4 GiB - 1) to `out`.
    pub fn seal(&mut self, msg: &[u8], out: &mut Vec<u8>) -> Result<(), ChannelError> {
        let total = u32::try_from(msg.len()).map_err(|_| ChannelError::TooLarge {
            limit: u32::MAX as usize,
        })?;
        out.reserve(msg.len() + (msg.len() / RECORD_PLAINTEXT_BYTES + 2) * (2 + TAG_BYTES + 4));
        let head = msg.len().min(RECORD_PLAINTEXT_BYTES - LENGTH_BYTES);
        let mut first = Vec::with_capacity(LENGTH_BYTES + head);
        first.extend_from_slice(&total.to_le_bytes());
        first.extend_from_slice(&msg[..head]);
        self.seal_record(&first, out)?;
        for chunk in msg[head..].chunks(RECORD_PLAINTEXT_BYTES) {
            self.seal_record(chunk, out)?;
        }
        Ok(())
    }

    /// Opens the records at the front of `buf`, consuming each complete one. Returns a whole
    /// message once its last record is in, or `None` when more bytes are needed. A message
    /// announced longer than `limit` is refused before any of it is kept.
    pub fn open(
        &mut self,
        buf: &mut bytes::BytesMut,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, ChannelError> {
        loop {
            if self.expected == Some(self.partial.len()) {
                self.expected = None;
                return Ok(Some(std::mem::take(&mut self.partial)));
            }
            if buf.len() < 2 {
                return Ok(None);
            }
            let n = u16::from_le_bytes([buf[0], buf[1]]) as usize;
            if n < TAG_BYTES {
                return Err(ChannelError::Malformed("record shorter than its tag"));
            }
            if buf.len() < 2 + n {
                return Ok(None);
            }
            let record = buf.split_to(2 + n);
            let index = self.records_in;
            self.records_in += 1;
            let tampered = |_| ChannelError::Tampered { record: index };
            match self.expected {
                None => {
                    let m = self
                        .state
                        .read_message(&record[2..], &mut self.first)
                        .map_err(tampered)?;
                    if m < LENGTH_BYTES {
                        return Err(ChannelError::Malformed("first record without a length"));
                    }
                    let total = u32::from_le_bytes([
                        self.first[0],
                        self.first[1],
                        self.first[2],
                        self.first[3],
                    ]) as usize;
                    if total > limit {
                        return Err(ChannelError::TooLarge { limit });
                    }
                    if m - LENGTH_BYTES > total {
                        return Err(ChannelError::Malformed("record beyond its message"));
                    }
                    // The peer has completed the handshake (it holds the farm key) and the
                    // length is within the limit: reserve it at once, so the message is not
                    // copied again as it grows.
                    self.partial = Vec::with_capacity(total);
                    self.partial.extend_from_slice(&self.first[LENGTH_BYTES..m]);
                    self.expected = Some(total);
                }
                Some(total) => {
                    let at = self.partial.len();
                    let plain = n - TAG_BYTES;
                    if at + plain > total {
                        return Err(ChannelError::Malformed("record beyond its message"));
                    }
                    self.partial.resize(at + plain, 0);
                    let m = self
                        .state
                        .read_message(&record[2..], &mut self.partial[at..])
                        .map_err(tampered)?;
                    self.partial.truncate(at + m);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    const A: [u8; 16] = *b"RAYFARM\0\x03\0\0\0\x01\0\0\0";
    const B: [u8; 16] = *b"RAYFARM\0\x03\0\0\0\x04\0\0\0";

    fn pair(
        client_psk: [u8; 32],
        server_psk: [u8; 32],
    ) -> Result<(Transport, Transport), ChannelError> {
        let (init, m1) = Initiator::start(&client_psk, &A, &B)?;
        let (server, m2) = respond(&server_psk, &B, &A, &m1[2..])?;
        let client = init.finish(&m2[2..])?;
        Ok((client, server))
    }

    fn roundtrip(tx: &mut Transport, rx: &mut Transport, msg: &[u8]) -> Vec<u8> {
        let mut wire = Vec::new();
        tx.seal(msg, &mut wire).unwrap();
        let mut buf = BytesMut::from(&wire[..]);
        let got = rx.open(&mut buf, 1 << 30).unwrap().unwrap();
        assert!(buf.is_empty());
        got
    }

    #[test]
    fn messages_of_every_size_round_trip_both_ways() {
        let (mut c, mut s) = pair([7; 32], [7; 32]).unwrap();
        let r = RECORD_PLAINTEXT_BYTES - LENGTH_BYTES;
        for len in [0, 1, r - 1, r, r + 1, r + RECORD_PLAINTEXT_BYTES, 300_000] {
            let msg: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            assert_eq!(roundtrip(&mut c, &mut s, &msg), msg);
            assert_eq!(roundtrip(&mut s, &mut c, &msg), msg);
        }
    }

    #[test]
    fn plaintext_never_appears_on_the_wire() {
        let (mut c, _s) = pair([7; 32], [7; 32]).unwrap();
        let secret = b"the scene's secret geometry, repeated to be easy to find".repeat(100);
        let mut wire = Vec::new();
        c.seal(&secret, &mut wire).unwrap();
        assert!(!wire.windows(16).any(|w| secret.windows(16).any(|s| s == w)));
    }

    #[test]
    fn a_wrong_key_is_refused_by_the_responder() {
        let (_, m1) = Initiator::start(&[1; 32], &A, &B).unwrap();
        assert_eq!(
            respond(&[2; 32], &B, &A, &m1[2..]).err(),
            Some(ChannelError::WrongKey)
        );
        let (init, _) = Initiator::start(&[1; 32], &A, &B).unwrap();
        assert_eq!(init.finish(&[]).err(), Some(ChannelError::Refused));
    }

    #[test]
    fn a_changed_preamble_breaks_the_handshake() {
        let (_, m1) = Initiator::start(&[1; 32], &A, &B).unwrap();
        let mut other = B;
        other[12] = 2;
        assert_eq!(
            respond(&[1; 32], &other, &A, &m1[2..]).err(),
            Some(ChannelError::WrongKey)
        );
    }

    #[test]
    fn a_relay_cannot_complete_with_a_fresh_initiator() {
        // A relay that replays message 1 of a real initiator gets message 2 for an ephemeral
        // key it does not hold: its own handshake state cannot read it.
        let (_real, m1) = Initiator::start(&[1; 32], &A, &B).unwrap();
        let (_, m2) = respond(&[1; 32], &B, &A, &m1[2..]).unwrap();
        let (relay, _) = Initiator::start(&[9; 32], &A, &B).unwrap();
        assert!(relay.finish(&m2[2..]).is_err());
    }

    #[test]
    fn every_flipped_byte_is_detected_and_names_the_record() {
        let (mut c, _) = pair([3; 32], [3; 32]).unwrap();
        let mut wire = Vec::new();
        c.seal(b"first", &mut wire).unwrap();
        let first_len = wire.len();
        c.seal(b"second message", &mut wire).unwrap();
        for i in first_len + 2..wire.len() {
            let (mut c2, mut s2) = pair([3; 32], [3; 32]).unwrap();
            let mut w = Vec::new();
            c2.seal(b"first", &mut w).unwrap();
            c2.seal(b"second message", &mut w).unwrap();
            w[i] ^= 0x40;
            let mut buf = BytesMut::from(&w[..]);
            assert_eq!(s2.open(&mut buf, 1 << 20).unwrap().unwrap(), b"first");
            assert_eq!(
                s2.open(&mut buf, 1 << 20).err(),
                Some(ChannelError::Tampered { record: 1 }),
                "byte {i}"
            );
        }
    }

    #[test]
    fn replayed_or_dropped_records_fail() {
        let (mut c, mut s) = pair([3; 32], [3; 32]).unwrap();
        let mut one = Vec::new();
        c.seal(b"one", &mut one).unwrap();
        let mut two = Vec::new();
        c.seal(b"two", &mut two).unwrap();
        // Dropped: "two" arrives first.
        let mut buf = BytesMut::from(&two[..]);
        assert!(matches!(
            s.open(&mut buf, 100),
            Err(ChannelError::Tampered { .. })
        ));
        let (mut c, mut s) = pair([3; 32], [3; 32]).unwrap();
        let mut one = Vec::new();
        c.seal(b"one", &mut one).unwrap();
        let mut buf = BytesMut::from(&one[..]);
        s.open(&mut buf, 100).unwrap().unwrap();
        // Replayed.
        let mut buf = BytesMut::from(&one[..]);
        assert!(matches!(
            s.open(&mut buf, 100),
            Err(ChannelError::Tampered { .. })
        ));
    }

    #[test]
    fn oversized_messages_are_refused_before_they_complete() {
        let (mut c, mut s) = pair([3; 32], [3; 32]).unwrap();
        let mut wire = Vec::new();
        c.seal(&vec![0u8; 200_000], &mut wire).unwrap();
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(
            s.open(&mut buf, 100_000).err(),
            Some(ChannelError::TooLarge { limit: 100_000 })
        );
    }

    #[test]
    fn partial_records_wait_for_more_bytes() {
        let (mut c, mut s) = pair([3; 32], [3; 32]).unwrap();
        let mut wire = Vec::new();
        c.seal(&vec![5u8; 100_000], &mut wire).unwrap();
        let mut buf = BytesMut::new();
        let mut got = None;
        for b in wire.chunks(977) {
            buf.extend_from_slice(b);
            if let Some(m) = s.open(&mut buf, 1 << 20).unwrap() {
                got = Some(m);
            }
        }
        assert_eq!(got.unwrap(), vec![5u8; 100_000]);
    }
}
