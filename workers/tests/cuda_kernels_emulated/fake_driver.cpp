// A stand-in for libcuda.so and libcublas.so that runs everything on the CPU, so the
// whole CUDA runner (workers/src/llm/cuda) can be driven through cudarc on a machine
// without a GPU: scripts/check-cuda-kernels builds it and runs the runner against the
// CPU runner on a tiny random model.
//
// Only the driver and cuBLAS entry points the runner reaches are here. "Device" memory
// is host memory (a device pointer is a host address); every call is synchronous, so
// stream order holds trivially. cuLaunchKernel runs the kernels of kernels.rs (included
// as in harness.cpp) with one thread per CUDA thread, unpacking the argument array by
// the kernels' C signatures, as the real driver does: an argument-order mismatch on the
// Rust side shows up here. cublasGemmEx is a plain column-major loop that checks the
// types and leading dimensions as cuBLAS does. The PTX from NVRTC (the real library) is
// accepted and ignored.

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

struct Dim3 {
    unsigned x = 1, y = 1, z = 1;
};
thread_local Dim3 threadIdx, blockIdx;
static Dim3 blockDim, gridDim;

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

static void run_blocks(Dim3 grid, Dim3 block, const std::function<void()>& kernel) {
    gridDim = grid;
    blockDim = block;
    const unsigned n = block.x;
    for (unsigned by = 0; by < grid.y; ++by) {
        for (unsigned bx = 0; bx < grid.x; ++bx) {
            std::barrier<> bar(n);
            block_barrier = &bar;
            std::vector<Warp> ws(n / 32);
            for (auto& w : ws) w.bar = new std::barrier<>(32);
            warps = &ws;
            std::vector<std::thread> threads;
            threads.reserve(n);
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

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
enum { OK = 0, INVALID_VALUE = 1, NOT_FOUND = 500, INVALID_HANDLE = 400 };

static int context_token, stream_token, module_token;
thread_local void* current_context = nullptr;
static std::mutex launch_lock;

template <class T>
static T arg(void** params, int i) {
    T v;
    std::memcpy(&v, params[i], sizeof(T));
    return v;
}

struct Kernel {
    const char* name;
    int args;
    void (*run)(void** p);
};

typedef unsigned short h16;
static const Kernel kernels[] = {
    {"embed", 4, [](void** p) { embed(arg<const h16*>(p, 0), arg<const u32*>(p, 1), arg<float*>(p, 2), arg<int>(p, 3)); }},
    {"rms_norm", 6,
     [](void** p) {
         rms_norm(arg<const float*>(p, 0), arg<const u32*>(p, 1), arg<const float*>(p, 2), arg<h16*>(p, 3), arg<int>(p, 4),
                  arg<float>(p, 5));
     }},
    {"rope_store", 11,
     [](void** p) {
         rope_store(arg<float*>(p, 0), arg<const u32*>(p, 1), arg<const u32*>(p, 2), arg<const float*>(p, 3),
                    arg<const float*>(p, 4), arg<h16*>(p, 5), arg<h16*>(p, 6), arg<int>(p, 7), arg<int>(p, 8), arg<int>(p, 9),
                    arg<unsigned long long>(p, 10));
     }},
    {"attention", 12,
     [](void** p) {
         attention(arg<const float*>(p, 0), arg<const u32*>(p, 1), arg<const u32*>(p, 2), arg<const u32*>(p, 3),
                   arg<const h16*>(p, 4), arg<const h16*>(p, 5), arg<h16*>(p, 6), arg<int>(p, 7), arg<int>(p, 8), arg<int>(p, 9),
                   arg<unsigned long long>(p, 10), arg<float>(p, 11));
     }},
    {"silu_mul", 4, [](void** p) { silu_mul(arg<const float*>(p, 0), arg<h16*>(p, 1), arg<int>(p, 2), arg<int>(p, 3)); }},
};

extern "C" {

CUresult cuInit(unsigned) { return OK; }
CUresult cuDeviceGetCount(int* n) {
    *n = 1;
    return OK;
}
CUresult cuDeviceGet(int* dev, int ordinal) {
    if (ordinal != 0) return 101;  // CUDA_ERROR_INVALID_DEVICE
    *dev = 0;
    return OK;
}
CUresult cuDevicePrimaryCtxRetain(void** ctx, int) {
    *ctx = &context_token;
    return OK;
}
CUresult cuDevicePrimaryCtxRelease_v2(int) { return OK; }
CUresult cuDeviceGetAttribute(int* value, int attribute, int) {
    switch (attribute) {
        case 75: *value = 9; break;  // compute capability major
        case 76: *value = 0; break;  // minor
        default: *value = 0;         // memory pools (and everything else): unsupported
    }
    return OK;
}
CUresult cuDeviceGetName(char* name, int len, int) {
    std::snprintf(name, len, "Emulated CUDA device (CPU)");
    return OK;
}
CUresult cuDeviceTotalMem_v2(size_t* bytes, int) {
    *bytes = size_t(8) << 30;
    return OK;
}
CUresult cuCtxGetCurrent(void** ctx) {
    *ctx = current_context;
    return OK;
}
CUresult cuCtxSetCurrent(void* ctx) {
    current_context = ctx;
    return OK;
}
CUresult cuCtxSynchronize() { return OK; }
CUresult cuMemGetInfo_v2(size_t* free, size_t* total) {
    if (current_context == nullptr) return 201;  // CUDA_ERROR_INVALID_CONTEXT
    *free = size_t(6) << 30;
    *total = size_t(8) << 30;
    return OK;
}
CUresult cuStreamCreate(void** stream, unsigned) {
    *stream = &stream_token;
    return OK;
}
CUresult cuStreamDestroy_v2(void*) { return OK; }
CUresult cuStreamSynchronize(void*) { return OK; }
CUresult cuMemAlloc_v2(CUdeviceptr* ptr, size_t bytes) {
    if (current_context == nullptr) return 201;
    void* p = std::malloc(bytes ? bytes : 1);
    if (!p) return 2;  // CUDA_ERROR_OUT_OF_MEMORY
    std::memset(p, 0xA5, bytes);  // garbage, as fresh device memory is
    *ptr = (CUdeviceptr)p;
    return OK;
}
CUresult cuMemFree_v2(CUdeviceptr ptr) {
    std::free((void*)ptr);
    return OK;
}
CUresult cuMemsetD8Async(CUdeviceptr ptr, unsigned char value, size_t n, void*) {
    std::memset((void*)ptr, value, n);
    return OK;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void*) {
    std::memcpy((void*)dst, src, n);
    return OK;
}
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, void*) {
    std::memcpy(dst, (const void*)src, n);
    return OK;
}
CUresult cuModuleLoadData(void** module, const void* image) {
    const char* ptx = (const char*)image;
    if (std::strstr(ptx, ".entry") == nullptr) return 218;  // CUDA_ERROR_INVALID_PTX
    *module = &module_token;
    return OK;
}
CUresult cuModuleUnload(void*) { return OK; }
CUresult cuModuleGetFunction(void** function, void*, const char* name) {
    for (const Kernel& k : kernels) {
        if (std::strcmp(k.name, name) == 0) {
            *function = (void*)&k;
            return OK;
        }
    }
    return NOT_FOUND;
}
CUresult cuLaunchKernel(void* function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned, void*, void** params, void** extra) {
    if (function == nullptr || params == nullptr || extra != nullptr) return INVALID_VALUE;
    if (gz != 1 || by != 1 || bz != 1 || bx % 32 != 0 || bx > 1024 || gx == 0 || gy == 0 || gy > 65535) return INVALID_VALUE;
    const Kernel* k = (const Kernel*)function;
    std::lock_guard<std::mutex> guard(launch_lock);
    run_blocks({gx, gy, 1}, {bx, 1, 1}, [&] { k->run(params); });
    return OK;
}
CUresult cuGetErrorString(CUresult, const char** s) {
    *s = "emulated driver error";
    return OK;
}
CUresult cuGetErrorName(CUresult, const char** s) {
    *s = "EMULATED_ERROR";
    return OK;
}

// cuBLAS.
static int blas_token;
int cublasCreate_v2(void** handle) {
    *handle = &blas_token;
    return 0;
}
int cublasDestroy_v2(void*) { return 0; }
int cublasSetStream_v2(void*, void*) { return 0; }
int cublasGemmEx(void*, int transa, int transb, int m, int n, int k, const void* alpha, const void* A, int a_type, int lda,
                 const void* B, int b_type, int ldb, const void* beta, void* C, int c_type, int ldc, int compute_type,
                 int) {
    const int CUDA_R_16F = 2, CUDA_R_32F = 0, COMPUTE_32F = 68, OP_N = 0, OP_T = 1;
    if (a_type != CUDA_R_16F || b_type != CUDA_R_16F || c_type != CUDA_R_32F || compute_type != COMPUTE_32F) return 15;
    if ((transa != OP_N && transa != OP_T) || (transb != OP_N && transb != OP_T)) return 7;
    if (m < 0 || n < 0 || k < 0 || lda < (transa == OP_N ? m : k) || ldb < (transb == OP_N ? k : n) || ldc < m) return 7;
    const float a = *(const float*)alpha, b = *(const float*)beta;
    const h16* AA = (const h16*)A;
    const h16* BB = (const h16*)B;
    float* CC = (float*)C;
    for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) {
            float sum = 0;
            for (int l = 0; l < k; ++l) {
                const float x = h2f_emulated(transa == OP_N ? AA[i + (size_t)l * lda] : AA[l + (size_t)i * lda]);
                const float y = h2f_emulated(transb == OP_N ? BB[l + (size_t)j * ldb] : BB[j + (size_t)l * ldb]);
                sum += x * y;
            }
            float& c = CC[i + (size_t)j * ldc];
            c = a * sum + (b == 0.0f ? 0.0f : b * c);
        }
    return 0;
}

}  // extern "C"
