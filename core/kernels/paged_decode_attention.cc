// Paged decode attention for XLA:CPU, as an XLA FFI custom call (core/kernels/cpu.py loads it).
//
// One query token per row attends to its sequence's keys and values where they lie in the
// paged pool: no gathered copy of the pages, no batched dots over tiny [g, h] x [h, c] blocks
// (what XLA:CPU makes of the einsum formulation, at 4-5 GB/s). Each row walks its page table,
// page by page, with an online softmax in float32 (flash-decoding), reading every key and value
// once. Rows are shared between the calling thread and XLA's intra-op thread pool.
//
// Operands (the engine's CPU pool layouts, core/cache/kv_pool.py):
//   q          f32 [b, k, g, h]    the rows' queries, already scaled by h^-0.5
//   keys       f32|u16 [P, k, h, c]  the layer's key pool (u16: bfloat16 bits)
//   values     f32|u16 [P, k, c, h]  the layer's value pool
//   page_table s32 [b, p]          each row's pages, in position order
//   positions  s32 [b]             each row's query position (< 0: a padding row, output 0)
//   attribute  window (i64)        a sliding window in tokens (0: none)
// Result: f32 [b, k, g, h].
//
// Built by `pip install` (setup.py) once per x86 ISA level (-mavx2 / -mavx512f, and a plain
// build); core/kernels/cpu.py loads the best one this CPU runs.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kMaxHeadDim = 512;
constexpr int kMaxGroups = 16;
constexpr int kMaxPageSize = 256;

inline float Load(const float* data, int64_t i) { return data[i]; }
inline float Load(const uint16_t* data, int64_t i) {
  uint32_t bits = static_cast<uint32_t>(data[i]) << 16;  // bfloat16 → float32, exactly
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// exp(x) for x <= 0 (scores less their running peak), within ~2 ulp of expf, in arithmetic and
// bit operations only, so a loop of it vectorizes (std::exp stays a scalar call). Below -87
// it returns ~1e-38 instead of underflowing to 0: harmless next to the peak's exp(0) = 1.
inline float ExpNonPositive(float x) {
  x = std::max(x, -87.0f);
  const float n = std::nearbyint(x * 1.44269504088896341f);  // x / ln 2
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // x - n ln 2, in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

struct Shape {
  int64_t rows, kv_heads, groups, head_dim, page_size, table_pages, window;
};

// One row, every kv head: out[k][g][h] = softmax(q·K) V over positions [start, position].
// kPageSize > 0 fixes the page size at compile time (the inner loops then unroll into whole
// vector registers); 0 reads it from the shape. Each key and value row is widened to float32
// once and used by all g query heads of its kv head; the next page's blocks are prefetched.
template <typename T, int kPageSize>
void AttendRow(const Shape& s, int64_t row, const float* q, const T* keys, const T* values,
               const int32_t* table, const int32_t* positions, float* out) {
  const int64_t k = s.kv_heads, g = s.groups, h = s.head_dim;
  const int64_t c = kPageSize > 0 ? kPageSize : s.page_size;
  float* row_out = out + row * k * g * h;
  const int64_t position = positions[row];
  if (position < 0) {
    std::fill(row_out, row_out + k * g * h, 0.0f);
    return;
  }
  const int64_t length = std::min<int64_t>(position + 1, s.table_pages * c);
  const int64_t start = s.window > 0 ? std::max<int64_t>(0, position - s.window + 1) : 0;
  const int32_t* pages = table + row * s.table_pages;
  const int64_t block_bytes = h * c * static_cast<int64_t>(sizeof(T));
  alignas(64) float scores[kMaxGroups][kMaxPageSize];
  alignas(64) float acc[kMaxGroups][kMaxHeadDim];
  alignas(64) float widened[kMaxHeadDim > kMaxPageSize ? kMaxHeadDim : kMaxPageSize];
  float peak[kMaxGroups], total[kMaxGroups], rescale[kMaxGroups];
  for (int64_t kv = 0; kv < k; ++kv) {
    const float* query = q + ((row * k + kv) * g) * h;
    for (int64_t gi = 0; gi < g; ++gi) {
      peak[gi] = -std::numeric_limits<float>::infinity();
      total[gi] = 0.0f;
      std::fill(acc[gi], acc[gi] + h, 0.0f);
    }
    for (int64_t page = start / c; page * c < length; ++page) {
      const int64_t page_id = pages[page];
      const T* key_block = keys + ((page_id * k + kv) * h) * c;      // [h, c]
      const T* value_block = values + ((page_id * k + kv) * c) * h;  // [c, h]
      if ((page + 1) * c < length) {  // the next page's blocks, while this one computes
        const int64_t next = pages[page + 1];
        const char* next_keys = reinterpret_cast<const char*>(keys + ((next * k + kv) * h) * c);
        const char* next_values =
            reinterpret_cast<const char*>(values + ((next * k + kv) * c) * h);
        for (int64_t offset = 0; offset < block_bytes; offset += 64) {
          __builtin_prefetch(next_keys + offset);
          __builtin_prefetch(next_values + offset);
        }
      }
      const int64_t first = std::max<int64_t>(start - page * c, 0);
      const int64_t last = std::min<int64_t>(length - page * c, c);  // exclusive
      for (int64_t gi = 0; gi < g; ++gi) std::fill(scores[gi], scores[gi] + c, 0.0f);
      for (int64_t d = 0; d < h; ++d) {
        const T* key_row = key_block + d * c;
        for (int64_t t = 0; t < c; ++t) widened[t] = Load(key_row, t);
        for (int64_t gi = 0; gi < g; ++gi) {
          const float qd = query[gi * h + d];
          float* score = scores[gi];
#pragma GCC ivdep
          for (int64_t t = 0; t < c; ++t) score[t] += qd * widened[t];
        }
      }
      for (int64_t gi = 0; gi < g; ++gi) {
        float* score = scores[gi];
        float page_peak = peak[gi];
        for (int64_t t = first; t < last; ++t) page_peak = std::max(page_peak, score[t]);
        rescale[gi] = ExpNonPositive(peak[gi] - page_peak);  // ~0 at the start (-inf peak)
        peak[gi] = page_peak;
        float sum = 0.0f;
        for (int64_t t = first; t < last; ++t) {
          score[t] = ExpNonPositive(score[t] - page_peak);
          sum += score[t];
        }
        total[gi] = total[gi] * rescale[gi] + sum;
        float* a = acc[gi];
        const float factor = rescale[gi];
#pragma GCC ivdep
        for (int64_t d = 0; d < h; ++d) a[d] *= factor;
      }
      for (int64_t t = first; t < last; ++t) {
        const T* value_row = value_block + t * h;
        for (int64_t d = 0; d < h; ++d) widened[d] = Load(value_row, d);
        for (int64_t gi = 0; gi < g; ++gi) {
          const float weight = scores[gi][t];
          float* a = acc[gi];
#pragma GCC ivdep
          for (int64_t d = 0; d < h; ++d) a[d] += weight * widened[d];
        }
      }
    }
    for (int64_t gi = 0; gi < g; ++gi) {
      float* dst = row_out + (kv * g + gi) * h;
      const float inverse = total[gi] > 0.0f ? 1.0f / total[gi] : 0.0f;
      for (int64_t d = 0; d < h; ++d) dst[d] = acc[gi][d] * inverse;
    }
  }
}

template <typename T>
void AttendRowAnySize(const Shape& s, int64_t row, const float* q, const T* keys,
                      const T* values, const int32_t* table, const int32_t* positions,
                      float* out) {
  if (s.page_size == 16) return AttendRow<T, 16>(s, row, q, keys, values, table, positions, out);
  if (s.page_size == 32) return AttendRow<T, 32>(s, row, q, keys, values, table, positions, out);
  AttendRow<T, 0>(s, row, q, keys, values, table, positions, out);
}

// Rows claimed one at a time from a shared counter by the calling thread and the pool's tasks;
// a task that starts after every row is claimed returns at once (the state outlives the call).
struct Work {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

template <typename T>
void Run(ffi::ThreadPool& pool, const Shape& s, const float* q, const T* keys, const T* values,
         const int32_t* table, const int32_t* positions, float* out) {
  auto work = std::make_shared<Work>();
  auto drain = [=]() {
    for (int64_t row; (row = work->next.fetch_add(1)) < s.rows;) {
      AttendRowAnySize(s, row, q, keys, values, table, positions, out);
      work->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), s.rows) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([drain]() { drain(); });
  drain();
  while (work->done.load(std::memory_order_acquire) < s.rows) std::this_thread::yield();
}

ffi::Error PagedDecodeAttention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                                ffi::AnyBuffer keys, ffi::AnyBuffer values,
                                ffi::Buffer<ffi::S32> page_table, ffi::Buffer<ffi::S32> positions,
                                ffi::ResultBuffer<ffi::F32> out, int64_t window) {
  auto q_dims = q.dimensions();
  auto key_dims = keys.dimensions();
  auto table_dims = page_table.dimensions();
  if (q_dims.size() != 4 || key_dims.size() != 4 || table_dims.size() != 2) {
    return ffi::Error::InvalidArgument("paged_decode_attention: unexpected operand ranks");
  }
  Shape s{q_dims[0], q_dims[1], q_dims[2], q_dims[3], key_dims[3], table_dims[1], window};
  if (s.head_dim > kMaxHeadDim || s.groups > kMaxGroups || s.page_size > kMaxPageSize ||
      key_dims[1] != s.kv_heads || key_dims[2] != s.head_dim || table_dims[0] != s.rows) {
    return ffi::Error::InvalidArgument("paged_decode_attention: unsupported shapes");
  }
  if (keys.element_type() != values.element_type()) {
    return ffi::Error::InvalidArgument("paged_decode_attention: keys and values differ");
  }
  const float* q_data = q.typed_data();
  const int32_t* table = page_table.typed_data();
  const int32_t* pos = positions.typed_data();
  float* out_data = out->typed_data();
  switch (keys.element_type()) {
    case ffi::DataType::F32:
      Run(pool, s, q_data, static_cast<const float*>(keys.untyped_data()),
          static_cast<const float*>(values.untyped_data()), table, pos, out_data);
      return ffi::Error::Success();
    case ffi::DataType::U16:
      Run(pool, s, q_data, static_cast<const uint16_t*>(keys.untyped_data()),
          static_cast<const uint16_t*>(values.untyped_data()), table, pos, out_data);
      return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument("paged_decode_attention: pools must be f32 or u16");
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(TandemPagedDecodeAttention, PagedDecodeAttention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // q
                                  .Arg<ffi::AnyBuffer>()         // keys
                                  .Arg<ffi::AnyBuffer>()         // values
                                  .Arg<ffi::Buffer<ffi::S32>>()  // page_table
                                  .Arg<ffi::Buffer<ffi::S32>>()  // positions
                                  .Ret<ffi::Buffer<ffi::F32>>()  // out
                                  .Attr<int64_t>("window"));
