//! [`Data`], the storage behind a [`QMatrix`](super::QMatrix)'s arrays: a vector the
//! process owns (repacked from a GGUF, quantized from f32, stacked) or a typed region of a
//! read-only map of a weight cache file (`llm::weight_cache`), which every replica and
//! every process mapping the same file shares through the page cache. Both deref to
//! `[T]`, so the kernels read them alike.

use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

use half::f16;
use memmap2::Mmap;

/// Element types that may be viewed straight from file bytes.
///
/// # Safety
/// Implement only for types with no padding, no pointers and no invalid bit patterns
/// (every byte sequence of the right length is a value).
pub unsafe trait Plain: Copy + Send + Sync + 'static {}

// SAFETY: integers and IEEE floats: every bit pattern is a value, no padding.
unsafe impl Plain for u8 {}
// SAFETY: as above.
unsafe impl Plain for f16 {}
// SAFETY: as above.
unsafe impl Plain for f32 {}

/// The bytes of a slice of plain values (in this machine's byte order).
pub fn as_bytes<T: Plain>(values: &[T]) -> &[u8] {
    // SAFETY: `T: Plain` has no padding, so every byte of the slice is initialized; u8
    // has alignment 1 and the length covers exactly the slice.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values)) }
}

/// `len` values of `T` at byte `offset` of a shared read-only map.
pub struct MappedRegion<T: Plain> {
    map: Arc<Mmap>,
    offset: usize,
    len: usize,
    element: PhantomData<T>,
}

impl<T: Plain> MappedRegion<T> {
    /// The region, if it lies inside the map and starts at an address aligned for `T`.
    pub fn new(map: Arc<Mmap>, offset: usize, len: usize) -> Result<Self, String> {
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or("region length overflows")?;
        let end = offset.checked_add(bytes).ok_or("region end overflows")?;
        if end > map.len() {
            return Err(format!("region {offset}..{end} runs past the end of the map ({} bytes)", map.len()));
        }
        if !map.as_ptr().wrapping_add(offset).cast::<T>().is_aligned() {
            return Err(format!("region at byte {offset} is not aligned for its {}-byte values", std::mem::size_of::<T>()));
        }
        Ok(Self { map, offset, len, element: PhantomData })
    }
}

impl<T: Plain> Deref for MappedRegion<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: `new` checked that the region lies inside the map and is aligned for
        // `T`; `T: Plain` accepts any bytes; the map is read-only and lives as long as
        // `self` holds its `Arc`. (The file is replaced only by rename, never rewritten
        // in place, so the mapped pages do not change under us.)
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(self.offset).cast::<T>(), self.len) }
    }
}

impl<T: Plain> Clone for MappedRegion<T> {
    fn clone(&self) -> Self {
        Self { map: self.map.clone(), offset: self.offset, len: self.len, element: PhantomData }
    }
}

/// An array of a weight matrix: owned, or mapped from a weight cache file.
#[derive(Clone)]
pub enum Data<T: Plain> {
    Owned(Vec<T>),
    Mapped(MappedRegion<T>),
}

impl<T: Plain> Data<T> {
    pub fn is_mapped(&self) -> bool {
        matches!(self, Data::Mapped(_))
    }
}

impl<T: Plain> Deref for Data<T> {
    type Target = [T];

    #[inline]
    fn deref(&self) -> &[T] {
        match self {
            Data::Owned(values) => values,
            Data::Mapped(region) => region,
        }
    }
}

impl<T: Plain> From<Vec<T>> for Data<T> {
    fn from(values: Vec<T>) -> Self {
        Data::Owned(values)
    }
}

impl<T: Plain> std::fmt::Debug for Data<T> {
    /// The kind and length only: a weight array is millions of values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Data::Owned(values) => write!(f, "Owned({} values)", values.len()),
            Data::Mapped(region) => write!(f, "Mapped({} values at byte {})", region.len, region.offset),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_of(bytes: &[u8]) -> Arc<Mmap> {
        let mut map = memmap2::MmapMut::map_anon(bytes.len()).unwrap();
        map.copy_from_slice(bytes);
        Arc::new(map.make_read_only().unwrap())
    }

    #[test]
    fn a_mapped_region_reads_the_values_at_its_offset() {
        let values: Vec<f32> = vec![1.5, -2.0, 3.25];
        let mut bytes = vec![0u8; 8];
        bytes.extend_from_slice(as_bytes(&values));
        let region = MappedRegion::<f32>::new(map_of(&bytes), 8, 3).unwrap();
        let data = Data::Mapped(region);
        assert!(data.is_mapped());
        assert_eq!(&*data, &values[..]);
        assert_eq!(&*data.clone(), &values[..]);
    }

    #[test]
    fn a_region_outside_the_map_or_misaligned_is_refused() {
        let map = map_of(&[0u8; 64]);
        assert!(MappedRegion::<f32>::new(map.clone(), 60, 2).is_err(), "past the end");
        assert!(MappedRegion::<f32>::new(map.clone(), 2, 1).is_err(), "misaligned");
        assert!(MappedRegion::<f16>::new(map.clone(), 1, 1).is_err(), "misaligned");
        assert!(MappedRegion::<u8>::new(map.clone(), usize::MAX, 2).is_err(), "overflow");
        assert!(MappedRegion::<f16>::new(map, 62, 1).is_ok());
    }
}
