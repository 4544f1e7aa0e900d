//! Scene shipping through the farm channel on loopback, beside plain length-prefixed frames
//! over TCP (what protocol v2 sent: postcard frames, no encryption), measured side by side in
//! one run. Usage: `cargo run --release -p rayfarm-proto --example channel_bench [MB]`.

use rayfarm_proto::{accept, connect, FarmKey, Msg, Role, SCENE_CHUNK_BYTES};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn plain(blob: &[u8]) -> Duration {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let chunks = blob.len().div_ceil(SCENE_CHUNK_BYTES);
    let rx = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        for _ in 0..chunks {
            let mut len = [0u8; 4];
            s.read_exact(&mut len).await.unwrap();
            buf.resize(u32::from_le_bytes(len) as usize, 0);
            s.read_exact(&mut buf).await.unwrap();
            // Decoding copies the chunk's data out, as protocol v2 did.
            let m: Msg = postcard::from_bytes(&buf).unwrap();
            assert!(matches!(m, Msg::SceneChunk { .. }));
        }
    });
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    for (i, chunk) in blob.chunks(SCENE_CHUNK_BYTES).enumerate() {
        let m = Msg::SceneChunk {
            offset: (i * SCENE_CHUNK_BYTES) as u64,
            data: chunk.to_vec(),
        };
        let bytes = postcard::to_stdvec(&m).unwrap();
        s.write_all(&(bytes.len() as u32).to_le_bytes())
            .await
            .unwrap();
        s.write_all(&bytes).await.unwrap();
    }
    rx.await.unwrap();
    t.elapsed()
}

async fn channel(blob: &[u8], key: &FarmKey) -> Duration {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let total = blob.len();
    let k = key.clone();
    let rx = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut c = accept(s, Role::Worker, &k).await.unwrap();
        let mut got = 0usize;
        while got < total {
            if let Msg::SceneChunk { data, .. } = c.recv().await.unwrap() {
                got += data.len();
            }
        }
    });
    let t = Instant::now();
    let mut c = connect(&addr, Role::Master, key, Duration::from_secs(5))
        .await
        .unwrap();
    for (i, chunk) in blob.chunks(SCENE_CHUNK_BYTES).enumerate() {
        c.send(&Msg::SceneChunk {
            offset: (i * SCENE_CHUNK_BYTES) as u64,
            data: chunk.to_vec(),
        })
        .await
        .unwrap();
    }
    rx.await.unwrap();
    t.elapsed()
}

#[tokio::main(worker_threads = 2)]
async fn main() {
    let mb: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let blob: Vec<u8> = (0..mb << 20)
        .map(|i| ((i * 2654435761usize) >> 13) as u8)
        .collect();
    let key = FarmKey::from_secret("channel bench farm key").unwrap();
    let (mut p, mut c) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        p.push(plain(&blob).await.as_secs_f64());
        c.push(channel(&blob, &key).await.as_secs_f64());
    }
    let best = |v: &[f64]| v.iter().cloned().fold(f64::MAX, f64::min);
    let (bp, bc) = (best(&p), best(&c));
    println!("{mb} MiB scene, best of 3, alternating:");
    println!(
        "  plain frames (protocol v2): {bp:.3} s  {:.0} MB/s",
        mb as f64 * 1.048576 / bp
    );
    println!(
        "  farm channel (protocol v3): {bc:.3} s  {:.0} MB/s",
        mb as f64 * 1.048576 / bc
    );
    println!("  channel / plain speed: {:.2}", bp / bc);
}
