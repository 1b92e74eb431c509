//! Test weights: deterministic values, quantized by candle into GGUF blocks, with their exact
//! decoded values (what a kernel must reproduce).

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use edgechat::gguf::{GgmlType, TensorInfo};

/// Deterministic values in [-1, 1).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn candle_type(t: GgmlType) -> GgmlDType {
    match t {
        GgmlType::F32 => GgmlDType::F32,
        GgmlType::F16 => GgmlDType::F16,
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q4K => GgmlDType::Q4K,
        GgmlType::Q6K => GgmlDType::Q6K,
        other => panic!("{other:?}"),
    }
}

/// A `rows × cols` matrix encoded as `ty`, and its exact decoded values.
pub fn encoded(
    ty: GgmlType,
    rows: usize,
    cols: usize,
    seed: u64,
) -> (TensorInfo, Vec<u8>, Vec<f32>) {
    let w = Tensor::from_vec(values(rows * cols, seed), (rows, cols), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, candle_type(ty)).unwrap();
    let bytes = q.data().unwrap().to_vec();
    let decoded = q
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let info = TensorInfo {
        name: format!("w_{ty:?}"),
        dims: vec![cols as u64, rows as u64],
        dtype: ty,
        offset: 0,
        n_bytes: bytes.len() as u64,
    };
    (info, bytes, decoded)
}
