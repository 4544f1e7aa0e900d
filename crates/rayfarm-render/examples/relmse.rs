//! Compares EXR images with a reference: prints each image's relMSE, the mean over
//! pixels and RGB channels of `(x - r)^2 / (r^2 + 0.01)`, and its mean RGB divided by the
//! reference's (a systematic difference shows there). Used to measure per-sample quality
//! (BENCHMARKS.md, "Render efficiency beside Mitsuba 3 and Cycles").
//!
//! Usage: relmse REFERENCE.exr IMAGE.exr [IMAGE.exr ...]

type Image = (usize, usize, Vec<[f32; 3]>);

fn read(path: &str) -> Image {
    let img = exr::prelude::read_first_rgba_layer_from_file(
        path,
        |res, _| {
            (
                res.width(),
                res.height(),
                vec![[0f32; 3]; res.width() * res.height()],
            )
        },
        |(w, _, px), pos, (r, g, b, _a): (f32, f32, f32, f32)| {
            px[pos.y() * *w + pos.x()] = [r, g, b]
        },
    )
    .unwrap_or_else(|e| {
        eprintln!("error: cannot read {path}: {e}");
        std::process::exit(1);
    });
    img.layer_data.channel_data.pixels
}

fn mean(px: &[[f32; 3]]) -> [f64; 3] {
    let mut m = [0f64; 3];
    for p in px {
        for c in 0..3 {
            m[c] += p[c] as f64;
        }
    }
    m.map(|v| v / px.len() as f64)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: relmse REFERENCE.exr IMAGE.exr [IMAGE.exr ...]");
        std::process::exit(2);
    }
    let (rw, rh, reference) = read(&args[0]);
    let rmean = mean(&reference);
    for path in &args[1..] {
        let (w, h, img) = read(path);
        if (w, h) != (rw, rh) {
            eprintln!("error: {path} is {w}x{h}, the reference {rw}x{rh}");
            std::process::exit(1);
        }
        let mut s = 0f64;
        for (a, b) in img.iter().zip(&reference) {
            for c in 0..3 {
                let (x, r) = (a[c] as f64, b[c] as f64);
                s += (x - r) * (x - r) / (r * r + 1e-2);
            }
        }
        if std::env::var_os("RELMSE_GRID").is_some() {
            // Each 1/8 x 1/8 block's share of the total error, in percent.
            let mut grid = [[0f64; 8]; 8];
            for (i, (a, b)) in img.iter().zip(&reference).enumerate() {
                let (x, y) = (i % w * 8 / w, i / w * 8 / h);
                for c in 0..3 {
                    let (x0, r) = (a[c] as f64, b[c] as f64);
                    grid[y][x] += (x0 - r) * (x0 - r) / (r * r + 1e-2);
                }
            }
            for row in grid {
                let cells: Vec<String> = row
                    .iter()
                    .map(|v| format!("{:5.1}", 100.0 * v / s))
                    .collect();
                println!("  {}", cells.join(" "));
            }
        }
        let m = mean(&img);
        println!(
            "{path}: relMSE {:.6}  mean/ref {:.4} {:.4} {:.4}",
            s / (3 * img.len()) as f64,
            m[0] / rmean[0],
            m[1] / rmean[1],
            m[2] / rmean[2]
        );
    }
}
