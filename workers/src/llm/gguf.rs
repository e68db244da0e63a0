//! Reading a GGUF file: the model's hyper-parameters and its weights.
//!
//! The file is memory-mapped and parsed with candle's `gguf_file` reader. Tensors in the
//! types the kernels run natively (Q4_0, Q4_1, Q8_0) are repacked straight from the map
//! into [`QMatrix`]; every other type candle can read (F16, BF16, the K-quants, ...) is
//! dequantized by candle and requantized to Q8_0, so any llama GGUF candle understands
//! loads, at 8-bit precision for the types without a native kernel. Norm vectors are
//! read as f32.

use std::collections::HashMap;
use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use memmap2::Mmap;

use crate::error::EngineError;
use crate::llm::quant::{GgmlBlockType, QMatrix};

fn load_error(path: &Path, message: impl std::fmt::Display) -> EngineError {
    EngineError::Load(format!("{}: {message}", path.display()))
}

/// A candle error in words, without the backtrace candle attaches when
/// `RUST_BACKTRACE` is set (it names the build's source paths; the message goes back to
/// API callers).
fn candle_message(error: candle_core::Error) -> String {
    match error {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(*inner),
        candle_core::Error::Context { inner, context } => format!("{context}: {}", candle_message(*inner)),
        candle_core::Error::WithPath { inner, .. } => candle_message(*inner),
        other => other.to_string(),
    }
}

/// An open, memory-mapped GGUF file with its parsed header.
pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    map: Mmap,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile").field("path", &self.path).finish_non_exhaustive()
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        let file = File::open(path).map_err(|e| load_error(path, e))?;
        // SAFETY: the map is read-only; a model file changed under a running server is
        // outside what we support (as for every mmap-based loader).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| load_error(path, e))?;
        let content =
            Content::read(&mut Cursor::new(&map[..])).map_err(|e| load_error(path, candle_message(e)))?;
        Ok(Self { path: path.to_path_buf(), content, map })
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn info(&self, name: &str) -> Result<&TensorInfo, EngineError> {
        self.content
            .tensor_infos
            .get(name)
            .ok_or_else(|| load_error(&self.path, format!("tensor {name} is missing")))
    }

    /// `(rows, cols)` of a 2-D tensor (a 1-D one is one row).
    pub fn dims(&self, name: &str) -> Result<(usize, usize), EngineError> {
        let dims = self.info(name)?.shape.dims().to_vec();
        match dims.as_slice() {
            [cols] => Ok((1, *cols)),
            [rows, cols] => Ok((*rows, *cols)),
            other => Err(load_error(&self.path, format!("tensor {name} has shape {other:?}, expected 1 or 2 dims"))),
        }
    }

    fn raw(&self, info: &TensorInfo) -> Result<&[u8], EngineError> {
        let elems = info.shape.elem_count();
        let bytes = elems / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        let start = usize::try_from(self.content.tensor_data_offset + info.offset)
            .map_err(|_| load_error(&self.path, "tensor offset overflows"))?;
        self.map
            .get(start..start + bytes)
            .ok_or_else(|| load_error(&self.path, "tensor data runs past the end of the file"))
    }

    /// A tensor as f32 values (row-major), through candle for every type.
    pub fn f32_values(&self, name: &str) -> Result<Vec<f32>, EngineError> {
        let info = self.info(name)?;
        match info.ggml_dtype {
            GgmlDType::F32 => Ok(self
                .raw(info)?
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()),
            _ => {
                let tensor = info
                    .read(&mut Cursor::new(&self.map[..]), self.content.tensor_data_offset, &Device::Cpu)
                    .map_err(|e| load_error(&self.path, format!("{name}: {}", candle_message(e))))?;
                tensor
                    .dequantize(&Device::Cpu)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(|e| load_error(&self.path, format!("{name}: {}", candle_message(e))))
            }
        }
    }

    /// A weight matrix in the kernels' layout.
    pub fn matrix(&self, name: &str) -> Result<QMatrix, EngineError> {
        let info = self.info(name)?;
        let (rows, cols) = self.dims(name)?;
        let native = match info.ggml_dtype {
            GgmlDType::Q4_0 => Some(GgmlBlockType::Q4_0),
            GgmlDType::Q4_1 => Some(GgmlBlockType::Q4_1),
            GgmlDType::Q8_0 => Some(GgmlBlockType::Q8_0),
            _ => None,
        };
        let result = match native {
            Some(kind) => QMatrix::from_ggml(kind, rows, cols, self.raw(info)?),
            None => QMatrix::quantize_q8(rows, cols, &self.f32_values(name)?),
        };
        result.map_err(|e| load_error(&self.path, format!("{name}: {e}")))
    }

    /// The type of a tensor, as ggml names it (for reports).
    pub fn dtype_name(&self, name: &str) -> String {
        self.content
            .tensor_infos
            .get(name)
            .map(|info| format!("{:?}", info.ggml_dtype))
            .unwrap_or_default()
    }

    /// Bytes of the whole file.
    pub fn file_size(&self) -> usize {
        self.map.len()
    }

    pub fn get_u32(&self, key: &str) -> Option<u32> {
        self.metadata().get(key).and_then(|v| v.to_u32().ok())
    }

    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.metadata().get(key).and_then(|v| v.to_f32().ok())
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.metadata().get(key).and_then(|v| v.to_string().ok()).map(String::as_str)
    }
}

/// A Llama-architecture model's hyper-parameters, from GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub architecture: String,
    pub name: String,
    pub layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub context_length: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    /// No `output.weight`: the LM head is the token embedding.
    pub tied_embeddings: bool,
}

/// Architectures whose GGUF tensors follow llama's names and layout.
pub const LLAMA_ARCHITECTURES: &[&str] = &["llama", "mistral"];

impl LlamaConfig {
    pub fn from_gguf(file: &GgufFile) -> Result<Self, EngineError> {
        let err = |m: String| load_error(&file.path, m);
        let arch = file
            .get_str("general.architecture")
            .ok_or_else(|| err("general.architecture is missing".into()))?
            .to_string();
        if !LLAMA_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(err(format!(
                "architecture {arch} is not supported (supported: {})",
                LLAMA_ARCHITECTURES.join(", ")
            )));
        }
        let need = |key: &str| file.get_u32(&format!("{arch}.{key}")).ok_or_else(|| err(format!("{arch}.{key} is missing")));
        let hidden = need("embedding_length")? as usize;
        let heads = need("attention.head_count")? as usize;
        let kv_heads = file.get_u32(&format!("{arch}.attention.head_count_kv")).unwrap_or(heads as u32) as usize;
        if heads == 0 || kv_heads == 0 || hidden % heads != 0 || heads % kv_heads != 0 {
            return Err(err(format!("inconsistent heads: {heads} heads, {kv_heads} kv heads, width {hidden}")));
        }
        let head_dim = hidden / heads;
        if let Some(rope_dims) = file.get_u32(&format!("{arch}.rope.dimension_count")) {
            if rope_dims as usize != head_dim {
                return Err(err(format!("partial rotary embeddings ({rope_dims} of {head_dim}) are not supported")));
            }
        }
        let (vocab, embd_width) = file.dims("token_embd.weight")?;
        if embd_width != hidden {
            return Err(err(format!("token_embd.weight is {embd_width} wide, the model {hidden}")));
        }
        if hidden % 32 != 0 || head_dim % 2 != 0 {
            return Err(err(format!("width {hidden} must be a multiple of 32")));
        }
        let ffn = need("feed_forward_length")? as usize;
        if ffn % 32 != 0 {
            return Err(err(format!("feed_forward_length {ffn} must be a multiple of 32")));
        }
        Ok(Self {
            name: file.get_str("general.name").unwrap_or("unnamed").to_string(),
            layers: need("block_count")? as usize,
            hidden,
            ffn,
            heads,
            kv_heads,
            head_dim,
            vocab,
            context_length: file.get_u32(&format!("{arch}.context_length")).unwrap_or(2048) as usize,
            rope_theta: file.get_f32(&format!("{arch}.rope.freq_base")).unwrap_or(10_000.0),
            rms_eps: file.get_f32(&format!("{arch}.attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
            tied_embeddings: !file.has_tensor("output.weight"),
            architecture: arch,
        })
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Multiply-adds of the weight matrices per token (for FLOP figures).
    pub fn matmul_macs_per_token(&self) -> usize {
        let attn = self.hidden * (self.hidden + 2 * self.kv_dim()) + self.hidden * self.hidden;
        let mlp = 3 * self.hidden * self.ffn;
        self.layers * (attn + mlp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_errors_carry_no_backtrace() {
        let traced = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("unknown magic 0x746f6f72".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert!(traced.to_string().contains(".rs"), "candle's own text names source files");
        assert_eq!(candle_message(traced), "unknown magic 0x746f6f72");

        let not_a_model = std::env::temp_dir().join(format!("swell-not-a-model-{}", std::process::id()));
        std::fs::write(&not_a_model, b"root:x:0:0:root:/root:/bin/bash\n").unwrap();
        let error = GgufFile::open(&not_a_model).err().expect("not a GGUF file").to_string();
        std::fs::remove_file(&not_a_model).unwrap();
        assert!(!error.contains('\n') && !error.contains(".rs:"), "{error}");
    }
}
