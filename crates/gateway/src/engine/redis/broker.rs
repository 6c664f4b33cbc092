//! The broker runtime: one thread, `pingwheel-broker`, with a current-thread tokio
//! runtime for every Redis connection and the Redis engine's tasks. Workers never run
//! broker code; the admin runtime only awaits what the broker's connections answer.

use std::io;

/// Name of the broker thread.
pub const THREAD_NAME: &str = "pingwheel-broker";

/// Starts the broker thread and returns a handle to spawn on its runtime. The thread
/// runs until the process exits.
///
/// # Errors
/// The runtime or the thread could not be created.
pub fn spawn_runtime() -> io::Result<tokio::runtime::Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name(THREAD_NAME.to_owned())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}
