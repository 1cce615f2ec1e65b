//! Test helper: connects to the Unix socket named by its argument and relays stdin → socket
//! and socket → stdout, so a test can speak to mcpd's Unix listener as another uid (started
//! with `Command::uid`). On stdin EOF the connection is shut down and the process exits; when
//! mcpd closes the connection the process exits too. A failed connect exits 2 with the error
//! on stderr.
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: mcpd-unix-relay SOCKET");
        std::process::exit(2);
    };
    let sock = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("connect {path}: {e}");
            std::process::exit(2);
        }
    };
    let Ok(mut from) = sock.try_clone() else {
        std::process::exit(2);
    };
    std::thread::spawn(move || {
        let mut out = std::io::stdout();
        let mut buf = [0u8; 65536];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                        break;
                    }
                }
            }
        }
        std::process::exit(0);
    });
    let mut to = &sock;
    let _ = std::io::copy(&mut std::io::stdin(), &mut to);
    let _ = sock.shutdown(std::net::Shutdown::Both);
    // Let the reader thread deliver what mcpd sends before it sees the close.
    std::thread::sleep(std::time::Duration::from_millis(200));
    std::process::exit(0);
}
