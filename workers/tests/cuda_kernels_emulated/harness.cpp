// Runs the CUDA runner's kernels (workers/src/llm/cuda/kernels.rs, SOURCE) on the CPU,
// with one OS thread per CUDA thread, and compares them with plain reference loops.
//
// Built and run by scripts/check-cuda-kernels, which includes the kernel source through
// "kernels_emulated.inc" with the two inline-PTX f16 conversions swapped for _Float16.
// The emulation: blocks run one after another; a block's threads are real threads, so
// __syncthreads is a barrier over the block, __shfl_xor_sync an exchange through a
// per-warp buffer between two warp barriers, and __shared__ arrays are statics (shared
// by the block's threads; blocks never overlap). It checks indexing, layouts, the
// reductions and the online softmax: not timing, not memory coalescing, not the PTX.

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <thread>
#include <vector>

struct Dim3 {
    unsigned x = 1, y = 1, z = 1;
};
thread_local Dim3 threadIdx, blockIdx;
Dim3 blockDim, gridDim;

struct Warp {
    std::barrier<>* bar;
    float vals[32];
};
static std::barrier<>* block_barrier;
static std::vector<Warp>* warps;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

static void __syncthreads() { block_barrier->arrive_and_wait(); }
static float __shfl_xor_sync(unsigned, float v, int o) {
    Warp& w = (*warps)[threadIdx.x / 32];
    const int lane = threadIdx.x % 32;
    w.vals[lane] = v;
    w.bar->arrive_and_wait();
    const float r = w.vals[lane ^ o];
    w.bar->arrive_and_wait();
    return r;
}
static float __int_as_float(unsigned i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
static float h2f_emulated(unsigned short h) {
    _Float16 f;
    std::memcpy(&f, &h, 2);
    return (float)f;
}
static unsigned short f2h_emulated(float f) {
    f = fminf(fmaxf(f, -65504.0f), 65504.0f);
    _Float16 h = (_Float16)f;
    unsigned short b;
    std::memcpy(&b, &h, 2);
    return b;
}

#include "kernels_emulated.inc"

static void launch(Dim3 grid, Dim3 block, const std::function<void()>& kernel) {
    gridDim = grid;
    blockDim = block;
    const unsigned n = block.x;
    for (unsigned by = 0; by < grid.y; ++by) {
        for (unsigned bx = 0; bx < grid.x; ++bx) {
            std::barrier<> bar(n);
            block_barrier = &bar;
            std::vector<std::barrier<>*> warp_bars;
            std::vector<Warp> ws(n / 32);
            for (auto& w : ws) w.bar = new std::barrier<>(32);
            warps = &ws;
            std::vector<std::thread> threads;
            for (unsigned t = 0; t < n; ++t) {
                threads.emplace_back([&, t] {
                    threadIdx = {t, 0, 0};
                    blockIdx = {bx, by, 0};
                    kernel();
                });
            }
            for (auto& t : threads) t.join();
            for (auto& w : ws) delete w.bar;
        }
    }
}

static std::mt19937 rng(42);
static float uniform(float a, float b) { return std::uniform_real_distribution<float>(a, b)(rng); }
static std::vector<unsigned short> random_f16(size_t n, float scale) {
    std::vector<unsigned short> v(n);
    for (auto& x : v) x = f2h_emulated(uniform(-scale, scale));
    return v;
}
static std::vector<float> random_f32(size_t n, float scale) {
    std::vector<float> v(n);
    for (auto& x : v) x = uniform(-scale, scale);
    return v;
}

static int failures = 0;
static void expect_close(const char* what, double got, double want, double tol) {
    if (!(std::fabs(got - want) <= tol * (1.0 + std::fabs(want)))) {
        if (failures < 20) std::printf("FAIL %s: got %.6f want %.6f\n", what, got, want);
        ++failures;
    }
}

static void check_embed() {
    const int hidden = 40, vocab = 7;
    auto table = random_f16(vocab * hidden, 1.0f);
    std::vector<uint32_t> tokens = {3, 0, 6, 3};
    std::vector<float> x(tokens.size() * hidden);
    launch({(unsigned)tokens.size()}, {256}, [&] { embed(table.data(), tokens.data(), x.data(), hidden); });
    for (size_t r = 0; r < tokens.size(); ++r)
        for (int i = 0; i < hidden; ++i) expect_close("embed", x[r * hidden + i], h2f_emulated(table[tokens[r] * hidden + i]), 0);
}

static void check_rms_norm() {
    const int hidden = 576, rows = 3;
    auto x = random_f32(rows * hidden, 3.0f);
    auto w = random_f32(hidden, 1.0f);
    std::vector<unsigned short> out(rows * hidden);
    const float eps = 1e-5f;
    auto reference = [&](int src, int i) {
        double ss = 0;
        for (int k = 0; k < hidden; ++k) ss += (double)x[src * hidden + k] * x[src * hidden + k];
        return x[src * hidden + i] / std::sqrt(ss / hidden + eps) * w[i];
    };
    launch({rows}, {256}, [&] { rms_norm(x.data(), nullptr, w.data(), out.data(), hidden, eps); });
    for (int r = 0; r < rows; ++r)
        for (int i = 0; i < hidden; ++i) expect_close("rms_norm", h2f_emulated(out[r * hidden + i]), reference(r, i), 2e-3);
    std::vector<uint32_t> pick = {2, 0};
    launch({2}, {256}, [&] { rms_norm(x.data(), pick.data(), w.data(), out.data(), hidden, eps); });
    for (int r = 0; r < 2; ++r)
        for (int i = 0; i < hidden; ++i) expect_close("rms_norm rows", h2f_emulated(out[r * hidden + i]), reference(pick[r], i), 2e-3);
}

struct Shape {
    int heads, kv_heads, head_dim, blocks, layers;
    size_t layer_elements() const { return (size_t)blocks * kv_heads * 16 * head_dim; }
    size_t at(int layer, uint32_t block, int head, int slot, int d) const {
        return layer * layer_elements() + (((size_t)block * kv_heads + head) * 16 + slot) * head_dim + d;
    }
};

static void rope_reference(float* x, int head_dim, const float* c, const float* s) {
    for (int i = 0; i < head_dim / 2; ++i) {
        const float a = x[2 * i], b = x[2 * i + 1];
        x[2 * i] = a * c[i] - b * s[i];
        x[2 * i + 1] = a * s[i] + b * c[i];
    }
}

static void check_rope_store(Shape sh) {
    const int hidden = sh.heads * sh.head_dim, kv_dim = sh.kv_heads * sh.head_dim, width = hidden + 2 * kv_dim;
    const int pairs = sh.head_dim / 2, positions = 64;
    std::vector<float> cos_t(positions * pairs), sin_t(positions * pairs);
    for (int p = 0; p < positions; ++p)
        for (int i = 0; i < pairs; ++i) {
            const double angle = p / std::pow(10000.0, 2.0 * i / sh.head_dim);
            cos_t[p * pairs + i] = (float)std::cos(angle);
            sin_t[p * pairs + i] = (float)std::sin(angle);
        }
    std::vector<uint32_t> pos = {0, 17, 33, 5};
    std::vector<uint32_t> slots = {4 * 16 + 0, 1 * 16 + 1, 3 * 16 + 1, 0 * 16 + 5};
    const int t = pos.size(), layer = sh.layers - 1;
    auto qkv = random_f32(t * width, 2.0f);
    auto want = qkv;
    std::vector<unsigned short> k(sh.layers * sh.layer_elements()), v(k.size());
    launch({(unsigned)t}, {128}, [&] {
        rope_store(qkv.data(), pos.data(), slots.data(), cos_t.data(), sin_t.data(), k.data(), v.data(), sh.heads,
                   sh.kv_heads, sh.head_dim, layer * sh.layer_elements());
    });
    for (int r = 0; r < t; ++r) {
        float* row = &want[r * width];
        for (int h = 0; h < sh.heads + sh.kv_heads; ++h)
            rope_reference(row + h * sh.head_dim, sh.head_dim, &cos_t[pos[r] * pairs], &sin_t[pos[r] * pairs]);
        for (int i = 0; i < hidden; ++i) expect_close("rope q", qkv[r * width + i], row[i], 1e-5);
        const uint32_t block = slots[r] / 16, slot = slots[r] % 16;
        for (int h = 0; h < sh.kv_heads; ++h)
            for (int d = 0; d < sh.head_dim; ++d) {
                const size_t at = sh.at(layer, block, h, slot, d);
                expect_close("rope k", h2f_emulated(k[at]), row[hidden + h * sh.head_dim + d], 1e-3);
                expect_close("store v", h2f_emulated(v[at]), row[hidden + kv_dim + h * sh.head_dim + d], 1e-3);
            }
    }
}

static void check_attention(Shape sh) {
    const int hidden = sh.heads * sh.head_dim, kv_dim = sh.kv_heads * sh.head_dim, width = hidden + 2 * kv_dim;
    const int layer = sh.layers - 1, group = sh.heads / sh.kv_heads;
    std::vector<unsigned short> k = random_f16(sh.layers * sh.layer_elements(), 1.5f);
    std::vector<unsigned short> v = random_f16(k.size(), 1.0f);
    // Two sequences: A with table {5, 2, 7} (a prefill chunk at positions 30..33),
    // B with table {1} (a decode token at position 0) and C with {6, 0} at position 20.
    std::vector<uint32_t> tables = {5, 2, 7, 1, 6, 0};
    std::vector<uint32_t> pos = {30, 31, 32, 33, 0, 20};
    std::vector<uint32_t> table_at = {0, 0, 0, 0, 3, 4};
    const int t = pos.size();
    auto qkv = random_f32(t * width, 1.0f);
    std::vector<unsigned short> out(t * hidden);
    const float scale = 1.0f / std::sqrt((float)sh.head_dim);
    launch({(unsigned)sh.heads, (unsigned)t}, {128}, [&] {
        attention(qkv.data(), pos.data(), table_at.data(), tables.data(), k.data(), v.data(), out.data(), sh.heads,
                  sh.kv_heads, sh.head_dim, layer * sh.layer_elements(), scale);
    });
    for (int r = 0; r < t; ++r) {
        const int len = pos[r] + 1;
        for (int h = 0; h < sh.heads; ++h) {
            const int kvh = h / group;
            std::vector<double> scores(len);
            double max = -1e300;
            for (int j = 0; j < len; ++j) {
                const uint32_t block = tables[table_at[r] + j / 16];
                double s = 0;
                for (int d = 0; d < sh.head_dim; ++d)
                    s += (double)qkv[r * width + h * sh.head_dim + d] * h2f_emulated(k[sh.at(layer, block, kvh, j % 16, d)]);
                scores[j] = s * scale;
                max = std::fmax(max, scores[j]);
            }
            double sum = 0;
            for (auto& s : scores) sum += (s = std::exp(s - max));
            for (int d = 0; d < sh.head_dim; ++d) {
                double o = 0;
                for (int j = 0; j < len; ++j) {
                    const uint32_t block = tables[table_at[r] + j / 16];
                    o += scores[j] / sum * h2f_emulated(v[sh.at(layer, block, kvh, j % 16, d)]);
                }
                expect_close("attention", h2f_emulated(out[r * hidden + h * sh.head_dim + d]), o, 2e-3);
            }
        }
    }
}

static void check_silu_mul() {
    const int ffn = 100, rows = 5;
    auto gate_up = random_f32(rows * 2 * ffn, 6.0f);
    std::vector<unsigned short> out(rows * ffn);
    launch({2}, {256}, [&] { silu_mul(gate_up.data(), out.data(), ffn, rows); });
    for (int r = 0; r < rows; ++r)
        for (int i = 0; i < ffn; ++i) {
            const double g = gate_up[r * 2 * ffn + i], u = gate_up[r * 2 * ffn + ffn + i];
            expect_close("silu_mul", h2f_emulated(out[r * ffn + i]), g / (1 + std::exp(-g)) * u, 2e-3);
        }
}

int main() {
    check_embed();
    check_rms_norm();
    check_silu_mul();
    // SmolLM2-135M's attention shape, then a head size that is not a multiple of 32 and
    // a large one.
    for (Shape sh : {Shape{9, 3, 64, 8, 2}, Shape{4, 2, 40, 8, 1}, Shape{2, 1, 256, 8, 2}}) {
        check_rope_store(sh);
        check_attention(sh);
    }
    if (failures) {
        std::printf("%d mismatches\n", failures);
        return 1;
    }
    std::printf("every kernel matches its reference\n");
    return 0;
}
