//! The one way a virtio device's thread is started and stopped: it confines
//! itself (its seccomp filter) before it touches anything, serves until its
//! stop eventfd fires, and is joined when its handle is dropped, so that no
//! device thread outlives the machine it serves.

use vmm_sys_util::eventfd::EventFd;

/// A running device thread: stopped and joined when dropped.
pub struct WorkerHandle {
    stop: EventFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts thread `name`, which runs `confine` and then `run` with its stop
/// eventfd. A thread that cannot confine itself serves nothing (the device
/// goes quiet) and says so, naming `what` it is.
pub fn spawn(
    name: String,
    what: &'static str,
    confine: impl FnOnce() -> Result<(), String> + Send + 'static,
    run: impl FnOnce(&EventFd) + Send + 'static,
) -> std::io::Result<WorkerHandle> {
    let stop = EventFd::new(libc::EFD_NONBLOCK)?;
    let stop_theirs = stop.try_clone()?;
    let thread = std::thread::Builder::new().name(name).spawn(move || {
        if let Err(e) = confine() {
            eprintln!("libvirt-helper: {what} thread not confined: {e}");
            return;
        }
        run(&stop_theirs);
    })?;
    Ok(WorkerHandle { stop, thread: Some(thread) })
}
