//! Prints what backs a buffer pool on this machine (hugepages or anonymous memory).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = gyre_reactor::BufferPool::new(&gyre_reactor::PoolConfig::default())?;
    println!(
        "buffer pool {} MiB: {} (free 2 MiB hugepages now: {})",
        pool.regions().map(|(_, l)| l).sum::<usize>() >> 20,
        pool.memory_kind(),
        gyre_reactor::memory::free_hugepages()
    );
    Ok(())
}
