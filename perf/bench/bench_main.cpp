// Entry point of the micro-benchmark binary.
#include <benchmark/benchmark.h>

BENCHMARK_MAIN();
