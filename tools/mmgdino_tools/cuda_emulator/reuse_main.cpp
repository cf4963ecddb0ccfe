// The reuse-distance histogram (reuse.h) of a stream of sector numbers, for traces counted outside the emulator
// (triton_trace.py). stdin: little-endian uint64 sectors in access order; stdout: the histogram's JSON.
#include <stdint.h>
#include <stdio.h>

#include "reuse.h"

int main() {
  simt::ReuseDistances reuse;
  uint64_t chunk[4096];
  size_t n;
  while ((n = fread(chunk, sizeof(uint64_t), 4096, stdin)) > 0) {
    for (size_t i = 0; i < n; ++i) reuse.touch(chunk[i]);
  }
  if (ferror(stdin)) return 2;
  reuse.write_json(stdout);
  fputc('\n', stdout);
  return 0;
}
