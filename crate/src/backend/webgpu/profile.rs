//! GPU time per kernel, from timestamp queries written at the start and end of each dispatch's
//! compute pass. Natively only, when asked for (`EDGECHAT_GPU_PROFILE=1`): reading the
//! timestamps back waits for the GPU after every submission, which a normal run must not do.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::backend::KernelTime;
use crate::error::{Error, Result};

/// Dispatches timed per submission; later ones in the same submission run untimed.
const MAX_TIMED_DISPATCHES: u32 = 2048; // 4096 queries, the most a query set may hold

pub(super) struct Profiler {
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    readback: wgpu::Buffer,
    nanos_per_tick: f64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The kernel of each timed dispatch recorded since the last submission, in order.
    pending: Vec<Arc<str>>,
    untimed: u64,
    totals: BTreeMap<Arc<str>, KernelTime>,
}

impl Profiler {
    pub fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Profiler {
        let count = 2 * MAX_TIMED_DISPATCHES;
        let bytes = u64::from(count) * 8;
        Profiler {
            queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("kernel timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count,
            }),
            resolved: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kernel timestamps (resolved)"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            readback: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kernel timestamps (readback)"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            nanos_per_tick: f64::from(queue.get_timestamp_period()),
            state: Mutex::default(),
        }
    }

    /// Where the pass of the next dispatch (of `kernel`) writes its start and end times.
    pub fn pass_writes(&self, kernel: &Arc<str>) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        let mut state = self.state.lock().expect("profile lock");
        let index = state.pending.len() as u32;
        if index >= MAX_TIMED_DISPATCHES {
            state.untimed += 1;
            return None;
        }
        state.pending.push(kernel.clone());
        Some(wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(2 * index),
            end_of_pass_write_index: Some(2 * index + 1),
        })
    }

    /// Records the copy of this submission's timestamps to the readback buffer.
    pub fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        let timed = self.state.lock().expect("profile lock").pending.len() as u32;
        if timed == 0 {
            return;
        }
        encoder.resolve_query_set(&self.queries, 0..2 * timed, &self.resolved, 0);
        encoder.copy_buffer_to_buffer(&self.resolved, 0, &self.readback, 0, u64::from(timed) * 16);
    }

    /// After the submission: waits for it, and adds each dispatch's time to its kernel's total.
    pub fn collect(&self, device: &wgpu::Device) -> Result<()> {
        let mut state = self.state.lock().expect("profile lock");
        if state.pending.is_empty() {
            return Ok(());
        }
        let bytes = state.pending.len() as u64 * 16;
        let slice = self.readback.slice(..bytes);
        slice.map_async(wgpu::MapMode::Read, |_| {});
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Backend(format!("waiting for the GPU timestamps: {e}")))?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(
            &slice
                .get_mapped_range()
                .map_err(|e| Error::Backend(format!("reading the GPU timestamps: {e}")))?,
        );
        self.readback.unmap();
        let pending = std::mem::take(&mut state.pending);
        for (kernel, pair) in pending.into_iter().zip(ticks.chunks_exact(2)) {
            let nanos = pair[1].saturating_sub(pair[0]) as f64 * self.nanos_per_tick;
            let total = state.totals.entry(kernel).or_default();
            total.calls += 1;
            total.nanos += nanos as u64;
        }
        Ok(())
    }

    /// Totals since the backend opened, per kernel (dispatches beyond the per-submission limit
    /// are counted under "untimed").
    pub fn totals(&self) -> BTreeMap<String, KernelTime> {
        let state = self.state.lock().expect("profile lock");
        let mut totals: BTreeMap<String, KernelTime> = state
            .totals
            .iter()
            .map(|(kernel, &time)| (kernel.to_string(), time))
            .collect();
        if state.untimed > 0 {
            totals.insert(
                "untimed".into(),
                KernelTime {
                    calls: state.untimed,
                    nanos: 0,
                },
            );
        }
        totals
    }
}
