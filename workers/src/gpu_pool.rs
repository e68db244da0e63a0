//! [`GpuPool`]: the GPUs a deployment may place replicas on, and which of them live
//! replicas hold. A replica leases the GPUs it needs when it starts and gives them back
//! when its engine is dropped; a GPU is never shared by two replicas. [`SlotPool`] is the
//! mechanism underneath (any numbered things held one replica at a time: GPUs, the fixed
//! endpoints of an `external` deployment).

use std::sync::Arc;

use parking_lot::Mutex;

use crate::llm::cuda::GpuInfo;

/// `len` numbered slots, each held by at most one lease at a time.
#[derive(Debug, Clone, Default)]
pub struct SlotPool {
    taken: Arc<Mutex<Vec<bool>>>,
}

/// Slots held until dropped.
#[derive(Debug)]
pub struct SlotLease {
    taken: Arc<Mutex<Vec<bool>>>,
    indices: Vec<usize>,
}

impl SlotPool {
    pub fn new(len: usize) -> Self {
        Self { taken: Arc::new(Mutex::new(vec![false; len])) }
    }

    pub fn len(&self) -> usize {
        self.taken.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots no lease holds now.
    pub fn free(&self) -> usize {
        self.taken.lock().iter().filter(|t| !**t).count()
    }

    /// Take `count` free slots (lowest first), or none when fewer are free.
    pub fn lease(&self, count: usize) -> Option<SlotLease> {
        let mut taken = self.taken.lock();
        let indices: Vec<usize> = taken.iter().enumerate().filter(|(_, t)| !**t).map(|(i, _)| i).take(count).collect();
        if indices.len() < count {
            return None;
        }
        for &i in &indices {
            taken[i] = true;
        }
        Some(SlotLease { taken: self.taken.clone(), indices })
    }
}

impl SlotLease {
    /// The leased slots' numbers, lowest first.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        let mut taken = self.taken.lock();
        for &index in &self.indices {
            if let Some(slot) = taken.get_mut(index) {
                *slot = false;
            }
        }
    }
}

/// GPUs found at start and which of them are held.
#[derive(Debug, Clone, Default)]
pub struct GpuPool {
    gpus: Vec<GpuInfo>,
    slots: SlotPool,
}

/// GPUs held by one replica; given back on drop.
#[derive(Debug)]
pub struct GpuLease {
    _slots: SlotLease,
    ordinals: Vec<u32>,
}

impl GpuLease {
    /// CUDA ordinals of the leased GPUs, in order.
    pub fn ordinals(&self) -> &[u32] {
        &self.ordinals
    }

    /// The ordinals as `CUDA_VISIBLE_DEVICES` spells them (`"0,1"`).
    pub fn visible_devices(&self) -> String {
        self.ordinals.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
    }
}

impl GpuPool {
    pub fn new(gpus: Vec<GpuInfo>) -> Self {
        Self { slots: SlotPool::new(gpus.len()), gpus }
    }

    pub fn gpus(&self) -> &[GpuInfo] {
        &self.gpus
    }

    pub fn is_empty(&self) -> bool {
        self.gpus.is_empty()
    }

    /// GPUs no replica holds now.
    pub fn free(&self) -> usize {
        self.slots.free()
    }

    /// Take `count` free GPUs (in discovery order), or none when fewer are free.
    pub fn lease(&self, count: usize) -> Option<GpuLease> {
        let slots = self.slots.lease(count)?;
        let ordinals = slots.indices().iter().map(|&i| self.gpus[i].ordinal).collect();
        Some(GpuLease { _slots: slots, ordinals })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(ordinal: u32) -> GpuInfo {
        GpuInfo {
            ordinal,
            name: "NVIDIA H100".into(),
            total_memory: 80 << 30,
            free_memory: 80 << 30,
            compute_capability: (9, 0),
        }
    }

    #[test]
    fn leases_are_disjoint_and_come_back_on_drop() {
        let pool = GpuPool::new(vec![gpu(0), gpu(1), gpu(2)]);
        let a = pool.lease(2).expect("two of three are free");
        assert_eq!(a.ordinals(), &[0, 1]);
        assert_eq!(a.visible_devices(), "0,1");
        assert!(pool.lease(2).is_none(), "only one is left");
        let b = pool.lease(1).expect("one is left");
        assert_eq!(b.ordinals(), &[2]);
        assert_eq!(pool.free(), 0);
        drop(a);
        assert_eq!(pool.free(), 2);
        assert_eq!(pool.lease(2).expect("freed").ordinals(), &[0, 1]);
    }

    #[test]
    fn an_empty_pool_leases_zero_gpus_only() {
        let pool = GpuPool::new(Vec::new());
        assert!(pool.lease(1).is_none());
        let none = pool.lease(0).expect("zero GPUs is always possible");
        assert!(none.ordinals().is_empty());
    }
}
