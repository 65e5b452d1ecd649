// Portable helpers for code compiled by both the host compiler and nvcc.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define CONTNET_UNROLL _Pragma("unroll")
#else
#define CONTNET_UNROLL
#endif
