//! A small static file server for the web app: GET/HEAD of files under the root, with the MIME
//! types browsers insist on (application/wasm for streaming compilation, text/javascript for
//! modules). Bound to 127.0.0.1 only: WebGPU needs a secure context, which localhost is.
//!
//! It serves files as the Hugging Face hub and CDNs do, so the page meets the same cases here:
//! bodies are streamed (a 1.5 GB checkpoint is never read into memory), single byte ranges are
//! answered with 206 (the page reads a `pytorch_model.bin`'s directory first), and JSON and text
//! files go out gzip-encoded when the browser accepts it (Content-Length is then the encoded
//! size, not the file's). `--log` prints every request (the tests check what was fetched).
//!
//! Every response carries `Cross-Origin-Opener-Policy: same-origin` and
//! `Cross-Origin-Embedder-Policy: require-corp`: the page is then cross-origin isolated, which
//! SharedArrayBuffer and so the threaded CPU build (pkg/threads/) need. `--no-isolation` leaves
//! them out (the page then runs the single-thread build, as on a host without these headers).

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};

use anyhow::Context;

/// The headers that make a page cross-origin isolated, placed before a head's closing blank line.
const ISOLATION: &str =
    "Cross-Origin-Opener-Policy: same-origin\r\nCross-Origin-Embedder-Policy: require-corp\r\n";

/// `head` (a status line and headers ending in a blank line) with [`ISOLATION`] when `isolate`.
fn with_isolation(head: &str, isolate: bool) -> String {
    match head.strip_suffix("\r\n") {
        Some(rest) if isolate => format!("{rest}{ISOLATION}\r\n"),
        _ => head.to_string(),
    }
}

pub fn serve(root: &Path, port: u16, log: bool, isolate: bool) -> anyhow::Result<()> {
    let root = root
        .canonicalize()
        .with_context(|| format!("serving {}", root.display()))?;
    if !root.join("www").is_dir() {
        anyhow::bail!(
            "{} has no www/ folder: run from the glimpse checkout or pass --root",
            root.display()
        );
    }
    let listener = TcpListener::bind(("127.0.0.1", port))
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    let addr = listener.local_addr()?;
    println!("glimpse is serving http://{addr}/");
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let root = root.clone();
        std::thread::spawn(move || {
            if let Err(e) = handle(stream, &root, log, isolate) {
                eprintln!("request failed: {e}");
            }
        });
    }
    Ok(())
}

fn mime(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "json" => "application/json",
        "css" => "text/css; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "txt" | "md" => "text/plain; charset=utf-8",
        "ts" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Maps a URL path to a file under root; None for anything that would leave it.
fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    let path = url_path.split(['?', '#']).next().unwrap_or("/");
    let mut out = root.to_path_buf();
    for comp in Path::new(path.trim_start_matches('/')).components() {
        match comp {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            _ => return None,
        }
    }
    if out.is_dir() {
        out.push("index.html");
    }
    Some(out)
}

/// A `Range: bytes=…` header of one range: `[start, end)` within a file of `len` bytes.
fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        // the last n bytes
        let n: u64 = b.parse().ok()?;
        (len.saturating_sub(n), len)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() {
            len
        } else {
            b.parse::<u64>().ok()?.saturating_add(1).min(len)
        };
        (start, end)
    };
    (start < end && start < len).then_some((start, end))
}

fn handle(mut stream: TcpStream, root: &Path, log: bool, isolate: bool) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let (mut range, mut gzip_ok) = (None, false);
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(value.trim().to_string()),
                "accept-encoding" => gzip_ok = value.contains("gzip"),
                _ => {}
            }
        }
        line.clear();
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    if log {
        eprintln!(
            "glimpse serve: {method} {target}{}",
            range
                .as_deref()
                .map(|r| format!(" [{r}]"))
                .unwrap_or_default()
        );
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET or HEAD only\n",
            false,
            isolate,
        );
    }
    if target == "/" {
        let head = "HTTP/1.1 302 Found\r\nLocation: /www/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        return stream.write_all(with_isolation(head, isolate).as_bytes());
    }
    let Some(path) = resolve(root, target).filter(|p| p.is_file()) else {
        return respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            b"not found\n",
            head_only,
            isolate,
        );
    };
    let Ok(mut file) = std::fs::File::open(&path) else {
        return respond(
            &mut stream,
            "500 Internal Server Error",
            "text/plain",
            b"cannot read file\n",
            false,
            isolate,
        );
    };
    let len = file.metadata()?.len();
    let mime = mime(&path);
    if let Some(r) = range {
        let Some((start, end)) = parse_range(&r, len) else {
            let head = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return stream.write_all(with_isolation(&head, isolate).as_bytes());
        };
        let head = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Type: {mime}\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{len}\r\nAccept-Ranges: bytes\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
            end - start,
            end - 1
        );
        stream.write_all(with_isolation(&head, isolate).as_bytes())?;
        if !head_only {
            file.seek(SeekFrom::Start(start))?;
            std::io::copy(&mut (&mut file).take(end - start), &mut stream)?;
        }
        return stream.flush();
    }
    let text = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("json" | "txt")
    );
    if text && gzip_ok && len <= 64 << 20 {
        let mut body = Vec::new();
        file.read_to_end(&mut body)?;
        let gz = gzip_stored(&body);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {mime}\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
            gz.len()
        );
        stream.write_all(with_isolation(&head, isolate).as_bytes())?;
        if !head_only {
            stream.write_all(&gz)?;
        }
        return stream.flush();
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {mime}\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(with_isolation(&head, isolate).as_bytes())?;
    if !head_only {
        std::io::copy(&mut file, &mut stream)?;
    }
    stream.flush()
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    mime: &str,
    body: &[u8],
    head_only: bool,
    isolate: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {mime}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(with_isolation(&head, isolate).as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()
}

/// CRC-32 (IEEE), as gzip's trailer needs.
fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// A gzip stream of `data` in stored (uncompressed) deflate blocks: a real Content-Encoding
/// whose length differs from the file's, without a compressor.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let mut blocks = data.chunks(65535).peekable();
    if blocks.peek().is_none() {
        out.extend([1, 0, 0, 0xff, 0xff]);
    }
    while let Some(b) = blocks.next() {
        out.push(blocks.peek().is_none() as u8);
        let n = b.len() as u16;
        out.extend(n.to_le_bytes());
        out.extend((!n).to_le_bytes());
        out.extend(b);
    }
    out.extend(crc32(data).to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_leave_the_root() {
        let root = Path::new("/srv/glimpse");
        assert_eq!(
            resolve(root, "/www/app.js?v=1"),
            Some(PathBuf::from("/srv/glimpse/www/app.js"))
        );
        assert_eq!(resolve(root, "/../etc/passwd"), None);
        assert_eq!(resolve(root, "/www/../../etc/passwd"), None);
    }

    #[test]
    fn ranges_and_gzip() {
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=5-9", 100), Some((5, 10)));
        assert_eq!(parse_range("bytes=95-", 100), Some((95, 100)));
        assert_eq!(parse_range("bytes=200-", 100), None);
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        let data: Vec<u8> = (0..70000u32).map(|i| (i % 251) as u8).collect();
        let gz = gzip_stored(&data);
        assert_eq!(gz.len(), 10 + 2 * 5 + data.len() + 8);
    }
}
