// Portable helpers for code compiled by both the host compiler and nvcc.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define CONTNET_UNROLL _Pragma("unroll")
#else
#define CONTNET_UNROLL
#endif

// CPU hot loops are compiled twice, for x86-64-v3 (AVX2, FMA) and the baseline, and the
// loader picks one for the machine: vector code without building for one machine only.
#if !defined(__CUDACC__) && defined(__x86_64__) && defined(__linux__) && \
    (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 9))
#define CONTNET_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CONTNET_CPU_CLONES
#endif

// On helpers and lambdas that a CONTNET_CPU_CLONES function calls: inlined into each clone,
// their loops are compiled for that clone's target (a helper left out of line would run
// baseline code).
#if !defined(__CUDACC__) && (defined(__GNUC__) || defined(__clang__))
#define CONTNET_FORCE_INLINE __attribute__((always_inline))
#else
#define CONTNET_FORCE_INLINE
#endif
