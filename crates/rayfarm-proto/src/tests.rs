use super::*;
use rayfarm_render::UnitResult;
use tokio::net::TcpListener;

async fn server(
    key: FarmKey,
) -> (
    String,
    tokio::task::JoinHandle<Result<Option<Msg>, ProtoError>>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let h = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut c = accept(s, Role::Daemon, &key).await?;
        match c.recv().await? {
            Msg::Discover => {
                c.send(&Msg::Heartbeat).await?;
                Ok(None)
            }
            other => Ok(Some(other)),
        }
    });
    (addr, h)
}

#[tokio::test]
async fn authenticated_round_trip() {
    let key = FarmKey::from_secret("s3cret-s3cret-s3cret").unwrap();
    let (addr, h) = server(key.clone()).await;
    let mut c = connect(&addr, Role::Master, &key, HANDSHAKE_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(c.peer_role, Role::Daemon);
    c.send(&Msg::Release).await.unwrap();
    assert_eq!(h.await.unwrap().unwrap(), Some(Msg::Release));
}

#[tokio::test]
async fn discovery_goes_through_the_channel() {
    let key = FarmKey::from_secret("aaaaaaaaaaaaaaaaaaaa").unwrap();
    let (addr, h) = server(key.clone()).await;
    let mut c = connect(&addr, Role::Cli, &key, HANDSHAKE_TIMEOUT)
        .await
        .unwrap();
    c.send(&Msg::Discover).await.unwrap();
    assert_eq!(c.recv().await.unwrap(), Msg::Heartbeat);
    assert!(h.await.unwrap().unwrap().is_none());
}

#[tokio::test]
async fn wrong_key_is_refused_on_both_sides() {
    let (addr, h) = server(FarmKey::from_secret("the-right-farm-key").unwrap()).await;
    let wrong = FarmKey::from_secret("the-wrong-farm-key").unwrap();
    let e = connect(&addr, Role::Master, &wrong, HANDSHAKE_TIMEOUT)
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("wrong farm key"), "{e}");
    let e = h.await.unwrap().err().unwrap();
    assert!(matches!(e, ProtoError::AuthFailed { .. }), "{e}");
}

#[tokio::test]
async fn version_mismatch_names_both_versions() {
    let (addr, h) = server(FarmKey::from_secret("kkkkkkkkkkkkkkkkkkkk").unwrap()).await;
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let mut p = preamble(Role::Master);
    let theirs = PROTOCOL_VERSION + 1;
    p[8..12].copy_from_slice(&theirs.to_le_bytes());
    s.write_all(&p).await.unwrap();
    let e = h.await.unwrap().err().unwrap().to_string();
    assert!(
        e.contains(&format!("version {theirs}"))
            && e.contains(&format!("version {PROTOCOL_VERSION}")),
        "{e}"
    );
    // The client learns the server's version from its preamble.
    let mut theirs = [0u8; 16];
    s.read_exact(&mut theirs).await.unwrap();
    assert_eq!(
        u32::from_le_bytes(theirs[8..12].try_into().unwrap()),
        PROTOCOL_VERSION
    );
}

#[tokio::test]
async fn garbage_and_huge_frames_are_refused() {
    let (addr, h) = server(FarmKey::from_secret("kkkkkkkkkkkkkkkkkkkk").unwrap()).await;
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let e = h.await.unwrap().err().unwrap();
    assert!(matches!(e, ProtoError::NotRayfarm { .. }), "{e}");

    let (addr, h) = server(FarmKey::from_secret("kkkkkkkkkkkkkkkkkkkk").unwrap()).await;
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(&preamble(Role::Master)).await.unwrap();
    s.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    let e = h.await.unwrap().err().unwrap();
    assert!(e.to_string().contains("bad handshake"), "{e}");
}

/// A unit of 2 x 3 pixels and 4 samples at the image's corner.
fn unit_2x3() -> WireUnit {
    WireUnit {
        layer: 0,
        sample_start: 0,
        sample_end: 4,
        x0: 0,
        y0: 0,
        x1: 2,
        y1: 3,
    }
}

#[test]
fn sums_round_trip_and_reject_bad_sizes() {
    let unit = unit_2x3();
    let r = UnitResult {
        unit: unit.into(),
        sums: (0..6).map(|i| [i, -i, i128::MAX - i]).collect(),
        nonfinite_samples: 1,
    };
    let enc = encode_sums(&r);
    assert_eq!(decode_sums(&unit, &enc, 1).unwrap(), r);
    let bigger = WireUnit { x1: 3, ..unit };
    assert!(decode_sums(&bigger, &enc, 0).is_err());
    let huge = WireUnit {
        x1: 32768,
        y1: 32768,
        ..unit
    };
    assert!(decode_sums(&huge, &enc, 0).is_err());
}

/// A recorded message 1, replayed, passes the PSK check but must not become a session: the
/// server waits for the key confirmation, which only the live initiator can produce.
#[tokio::test]
async fn a_replayed_first_handshake_message_is_not_a_session() {
    let key = FarmKey::from_secret("replay test farm key").unwrap();
    // Record a real client's first bytes (preamble and message 1) through a recording server.
    let rec = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rec_addr = rec.local_addr().unwrap().to_string();
    let k = key.clone();
    let client = tokio::spawn(async move {
        let _ = connect(&rec_addr, Role::Master, &k, Duration::from_secs(2)).await;
    });
    let (mut s, _) = rec.accept().await.unwrap();
    s.write_all(&preamble(Role::Daemon)).await.unwrap();
    let mut recorded = vec![0u8; 16 + 2 + 48];
    s.read_exact(&mut recorded).await.unwrap();
    drop(s);
    let _ = client.await;

    // Replay them to a real server: it must not accept a session.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        accept_within(s, Role::Daemon, &key, Duration::from_millis(500)).await
    });
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(&recorded).await.unwrap();
    let r = server.await.unwrap();
    // Message 1 decrypted (it is genuine), so the server waited for the confirmation in vain.
    assert!(
        matches!(r, Err(ProtoError::Timeout { .. })),
        "a replayed handshake became a session, or was refused for another reason: {:?}",
        r.err()
    );
    drop(s);
}

/// A master holding the key could send a 32768 x 32768 job (2^30 pixels) and one unit covering
/// it: the worker's result buffer (48 bytes a pixel) failed to allocate and the process
/// aborted. Images beyond 2^28 pixels (what `rayfarm render` allows) are now refused by name,
/// and so are units beyond `MAX_UNIT_PIXELS` (`rayfarm_bake::workload` tests).
#[test]
fn wire_settings_refuse_images_beyond_2_28_pixels() {
    let wire = |width, height| WireSettings {
        width,
        height,
        spp: 1,
        max_bounces: 1,
        seed: 0,
        camera_name: String::new(),
        projection: 0,
        proj_a: 0.8,
        proj_b: 0.0,
        position: [0.0; 3],
        right: [1.0, 0.0, 0.0],
        up: [0.0, 1.0, 0.0],
        forward: [0.0, 0.0, -1.0],
    };
    assert!(wire(16384, 16384).to_settings().is_ok());
    for (w, h) in [(32768, 32768), (32768, 8193), (0, 1), (32769, 1)] {
        let e = wire(w, h).to_settings().unwrap_err();
        assert!(
            matches!(e, WireError::ImageSize { width, height } if (width, height) == (w, h)),
            "{w}x{h}: {e}"
        );
    }
}

/// A worker holding the key could claim more dropped (non-finite) samples than its unit has,
/// or u64::MAX to wrap the master's count; such a result is now refused.
#[test]
fn a_unit_result_cannot_drop_more_samples_than_it_has() {
    let unit = WireUnit {
        y1: 1,
        ..unit_2x3()
    };
    let data = crate::unit_sums::encode(&[[0i128; 3]; 2]);
    assert_eq!(decode_sums(&unit, &data, 8).unwrap().nonfinite_samples, 8);
    for n in [9, u64::MAX] {
        assert!(matches!(
            decode_sums(&unit, &data, n),
            Err(WireError::MalformedUnit(_))
        ));
    }
}

/// A peer holding the key chose its alias (a worker's), or its alias, version, master and
/// reason (a daemon's): megabytes long, with terminal escape sequences that rewrote the
/// operator's terminal ("node joined: ..."). What is printed is now clipped and has no control
/// characters.
#[test]
fn strings_from_peers_are_printed_safely() {
    let evil = format!("\u{1b}[31mred\u{1b}]0;owned\u{7}{}", "x".repeat(1 << 20));
    let p = printable(&evil, MAX_PRINTED_ALIAS);
    assert!(!p.chars().any(char::is_control), "{p:?}");
    assert_eq!(
        p.chars().count(),
        MAX_PRINTED_ALIAS + 1,
        "clipped, with an ellipsis"
    );
    assert!(p.ends_with('\u{2026}'));
    assert_eq!(printable("node-7 ünïcode", 64), "node-7 ünïcode");
    let info = DaemonInfo {
        alias: evil.clone(),
        version: evil.clone(),
        protocol_version: PROTOCOL_VERSION,
        devices: Devices {
            threads: 4,
            cpu_model: evil.clone(),
            gpus: vec![evil.clone(); 100],
            ..Default::default()
        },
        state: DaemonState::Occupied {
            master: evil.clone(),
            since_unix_ms: 0,
        },
    }
    .printable();
    let DaemonState::Occupied { master, .. } = &info.state else {
        panic!("{:?}", info.state)
    };
    assert_eq!(info.devices.gpus.len(), 16);
    for s in [
        &info.alias,
        &info.version,
        master,
        &info.devices.cpu_model,
        &info.devices.gpus[0],
    ] {
        assert!(!s.chars().any(char::is_control) && s.chars().count() <= MAX_PRINTED_ADDR + 1);
    }
    let unhealthy = DaemonInfo {
        state: DaemonState::Unhealthy { reason: evil },
        ..info
    }
    .printable();
    let DaemonState::Unhealthy { reason } = &unhealthy.state else {
        panic!()
    };
    assert!(!reason.contains('\u{1b}') && reason.chars().count() == MAX_PRINTED_REASON + 1);
}

/// The attack (a keyholder): announce a message of up to a frame (32 MiB) on every session a
/// server has and send all of it but the last byte. Accepted connections take only control
/// messages until the server raises the limit, so the announcement alone is refused, before
/// anything is kept; a server that expects results raises it, and then takes a frame.
#[tokio::test]
async fn a_server_takes_only_control_messages_until_it_raises_its_limit() {
    let key = FarmKey::from_secret("llllllllllllllllllll").unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let server_key = key.clone();
    let h = tokio::spawn(async move {
        let mut got = Vec::new();
        for raise in [false, true] {
            let (s, _) = l.accept().await.unwrap();
            let mut c = accept(s, Role::Master, &server_key).await.unwrap();
            if raise {
                c.set_max_message_bytes(MAX_FRAME_BYTES);
            }
            got.push(c.recv().await.map(|m| m.name()));
        }
        got
    });
    let big = Msg::Goodbye {
        reason: "x".repeat(MAX_CONTROL_MESSAGE_BYTES + 1),
    };
    for _ in 0..2 {
        let mut c = connect(&addr, Role::Worker, &key, HANDSHAKE_TIMEOUT)
            .await
            .unwrap();
        // The sender's own limit is a frame: it sends, and the server decides.
        c.send(&big).await.unwrap();
        let _ = c
            .recv_timeout(Duration::from_secs(5), "the server's end")
            .await;
    }
    let got = h.await.unwrap();
    let e = got[0]
        .as_ref()
        .expect_err("refused while control messages only");
    assert!(
        e.to_string()
            .contains(&MAX_CONTROL_MESSAGE_BYTES.to_string()),
        "the error names the limit: {e}"
    );
    assert_eq!(got[1].as_ref().ok(), Some(&"Goodbye"), "{:?}", got[1]);
}

/// A master takes from a ready worker only what the job's largest unit needs: the bound must
/// hold the longest sums there are (random 128-bit sums: the longest varints, and zstd finds
/// nothing to squeeze), and stays far below a frame for ordinary tiles.
#[test]
fn a_ready_workers_limit_holds_the_longest_result_of_its_units() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x = rayfarm_render::sampler::mix64(x);
        x
    };
    for pixels in [1usize, 7, 64 * 64, 128 * 96] {
        let sums: Vec<[i128; 3]> = (0..pixels)
            .map(|_| [0; 3].map(|_: i32| (((next() as u128) << 64) | next() as u128) as i128))
            .collect();
        let msg = Msg::UnitDone {
            unit: WireUnit::from(rayfarm_render::WorkUnit {
                layer: 0,
                sample_start: 0,
                sample_end: u32::MAX,
                y0: 0,
                x0: 0,
                y1: 1,
                x1: pixels as u32,
            }),
            sums: unit_sums::encode(&sums),
            nonfinite: u64::MAX,
        };
        let bytes = postcard::to_stdvec(&msg).unwrap().len();
        let limit = max_worker_message_bytes(pixels, 1);
        assert!(bytes <= limit, "{pixels} pixels: {bytes} > {limit}");
    }
    assert!(max_worker_message_bytes(64 * 64, 16) < 300 << 10);
    assert_eq!(max_worker_message_bytes(1, 1), MAX_CONTROL_MESSAGE_BYTES);
    assert_eq!(max_worker_message_bytes(4096 * 4096, 1), MAX_FRAME_BYTES);
    // A GiveBack of every unit a 4096-thread worker may hold fits too.
    let give_back = Msg::GiveBack {
        units: vec![unit_2x3(); 2 * 4096],
    };
    let bytes = postcard::to_stdvec(&give_back).unwrap().len();
    assert!(bytes <= max_worker_message_bytes(1, 4096), "{bytes}");
}

/// A peer named by host name is looked up in a task of its own, bounded in number
/// (`MAX_NAME_LOOKUPS`), and then connected as usual (`localhost`, from /etc/hosts: no DNS
/// query leaves the machine); the lookup's permit is back once it is done.
#[tokio::test]
async fn peers_named_by_host_name_are_looked_up_and_reached() {
    let key = FarmKey::from_secret("nnnnnnnnnnnnnnnnnnnn").unwrap();
    let (addr, h) = server(key.clone()).await;
    let port = addr.rsplit_once(':').unwrap().1;
    let mut c = connect(
        &format!("localhost:{port}"),
        Role::Master,
        &key,
        HANDSHAKE_TIMEOUT,
    )
    .await
    .unwrap();
    c.send(&Msg::Release).await.unwrap();
    assert_eq!(h.await.unwrap().unwrap(), Some(Msg::Release));
    assert_eq!(NAME_LOOKUPS.available_permits(), MAX_NAME_LOOKUPS);
}
