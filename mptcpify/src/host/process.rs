//! Processes named by `--pid`: they must exist and be a thread-group leader, because the
//! kernel program matches the thread-group id (what `getpid()` returns).
use anyhow::{Result, bail};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
}

pub fn resolve(pid: u32) -> Result<Process> {
    let p = match procfs::process::Process::new(pid as i32) {
        Ok(p) => p,
        Err(_) => bail!("process {pid} does not exist (no /proc/{pid})"),
    };
    let status = match p.status() {
        Ok(s) => s,
        Err(_) => bail!("process {pid} does not exist (it exited, or /proc/{pid} is unreadable)"),
    };
    if status.tgid as u32 != pid {
        bail!("{pid} is a thread of process {}; give --pid {}", status.tgid, status.tgid);
    }
    Ok(Process { pid, comm: status.name })
}

/// Command name of a running process, for display.
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_resolves() {
        let p = resolve(std::process::id()).unwrap();
        assert_eq!(p.pid, std::process::id());
        assert_eq!(Some(p.comm), comm(std::process::id()));
    }

    #[test]
    fn missing_process_is_refused() {
        // PIDs are below pid_max (at most 2^22), so this one cannot exist.
        let e = resolve(u32::MAX - 1).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn threads_are_refused_with_their_process() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(std::fs::read_link("/proc/thread-self").unwrap()).unwrap();
            done_rx.recv().unwrap();
        });
        let link = rx.recv().unwrap();
        let tid: u32 = link.file_name().unwrap().to_str().unwrap().parse().unwrap();
        let e = resolve(tid).unwrap_err().to_string();
        done_tx.send(()).unwrap();
        t.join().unwrap();
        assert!(e.contains(&format!("give --pid {}", std::process::id())), "{e}");
    }
}
