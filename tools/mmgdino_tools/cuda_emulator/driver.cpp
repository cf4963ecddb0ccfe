// Runs one launcher of csrc/cuda/*.cu under the SIMT emulator. Usage: driver DIR, where DIR/args.txt holds
// "key value" lines (op, dtype, sizes, misalign) and DIR/<name>.bin the raw inputs; outputs are written back as
// DIR/<name>.bin. Every buffer is its own exact-size allocation, so AddressSanitizer reports any access past it.
// Outputs start filled with 0xff bytes (NaN in every float type): a value the kernel never wrote shows up.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <map>
#include <string>
#include <vector>

#include "mmgdino/cuda_launch.h"

// Another implementation of the same operator, linked in place of ours to count its traffic the same way (the
// trace build's `peer` option; args "peer 1"): its adapter defines these with our launchers' contract
// (mmgdino/cuda_launch.h). Weak, so that the usual builds link without one.
__attribute__((weak)) cudaError_t mmgdino_peer_ms_deform_attn_forward(const mmgdino::cuda::MsdaForwardArgs& args,
                                                                      cudaStream_t stream);
__attribute__((weak)) cudaError_t mmgdino_peer_ms_deform_attn_backward(const mmgdino::cuda::MsdaBackwardArgs& args,
                                                                       cudaStream_t stream);

namespace {

using mmgdino::cuda::DType;

std::map<std::string, std::string> g_args;
std::string g_dir;

int64_t optional_arg(const std::string& key, int64_t fallback) {
  auto it = g_args.find(key);
  return it == g_args.end() ? fallback : atoll(it->second.c_str());
}

int64_t arg(const std::string& key) {
  auto it = g_args.find(key);
  if (it == g_args.end()) {
    fprintf(stderr, "missing argument %s\n", key.c_str());
    exit(2);
  }
  return atoll(it->second.c_str());
}

struct Buffer {
  char* base = nullptr;  // the allocation
  char* data = nullptr;  // base + misalignment
};

std::vector<Buffer> g_buffers;

// misalign_bytes shifts the data off the allocation's 16-byte alignment (the kernels' scalar path); `name` labels
// the buffer's traffic in the trace build.
void* allocate(size_t bytes, size_t misalign_bytes, int fill, const char* name) {
  Buffer b;
  const size_t total = bytes + misalign_bytes;
  // 256-byte aligned, as cudaMalloc's (the tracer's sector and line counts depend on it); exact size, so that
  // AddressSanitizer still reports the first byte past the end.
  void* base = nullptr;
  if (posix_memalign(&base, 256, total > 0 ? total : 1) != 0) {
    fprintf(stderr, "cannot allocate %zu bytes\n", total);
    exit(2);
  }
  b.base = static_cast<char*>(base);
  b.data = b.base + misalign_bytes;
  memset(b.base, fill, bytes + misalign_bytes);
  g_buffers.push_back(b);
  if (simt::trace_buffer) simt::trace_buffer(b.data, bytes, name);
  return b.data;
}

void* read_input(const std::string& name, size_t bytes, size_t misalign_bytes) {
  void* p = allocate(bytes, misalign_bytes, 0, name.c_str());
  FILE* f = fopen((g_dir + "/" + name + ".bin").c_str(), "rb");
  if (!f || fread(p, 1, bytes, f) != bytes) {
    fprintf(stderr, "cannot read %s (%zu bytes)\n", name.c_str(), bytes);
    exit(2);
  }
  fclose(f);
  return p;
}

// A huge zero-filled buffer whose pages exist only once touched: value and grad_value of the int64-offset cases.
char* reserve_zeros(size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    fprintf(stderr, "cannot reserve %zu bytes\n", bytes);
    exit(2);
  }
  return static_cast<char*>(p);
}

void write_output(const std::string& name, const void* p, size_t bytes) {
  FILE* f = fopen((g_dir + "/" + name + ".bin").c_str(), "wb");
  if (!f || fwrite(p, 1, bytes, f) != bytes) {
    fprintf(stderr, "cannot write %s\n", name.c_str());
    exit(2);
  }
  fclose(f);
}

DType dtype_of(const std::string& name, size_t* elem, size_t* acc_elem) {
  if (name == "float32") return *elem = 4, *acc_elem = 4, DType::kFloat32;
  if (name == "float64") return *elem = 8, *acc_elem = 8, DType::kFloat64;
  if (name == "float16") return *elem = 2, *acc_elem = 4, DType::kFloat16;
  if (name == "bfloat16") return *elem = 2, *acc_elem = 4, DType::kBFloat16;
  fprintf(stderr, "unknown dtype %s\n", name.c_str());
  exit(2);
}

int finish(cudaError_t err) {
  if (err != cudaSuccess) {
    printf("error %d: %s\n", static_cast<int>(err), cudaGetErrorString(err));
    return 3;
  }
  return 0;
}

int run_msda(bool backward, DType dtype, size_t elem, size_t acc_elem) {
  const bool peer = optional_arg("peer", 0) != 0;
  auto forward = peer ? mmgdino_peer_ms_deform_attn_forward : mmgdino::cuda::ms_deform_attn_forward;
  auto backward_pass = peer ? mmgdino_peer_ms_deform_attn_backward : mmgdino::cuda::ms_deform_attn_backward;
  if (forward == nullptr || backward_pass == nullptr) {
    fprintf(stderr, "peer 1: no peer kernel is linked into this build\n");
    return 2;
  }
  mmgdino::cuda::MsdaForwardArgs a;
  a.dtype = dtype;
  a.batch = arg("batch");
  a.num_values = arg("num_values");
  a.num_heads = arg("num_heads");
  a.head_dim = arg("head_dim");
  a.num_queries = arg("num_queries");
  a.num_levels = arg("num_levels");
  a.num_points = arg("num_points");
  const size_t shift = arg("misalign") * elem;
  const size_t values = a.batch * a.num_values * a.num_heads * a.head_dim;
  const size_t points = a.batch * a.num_queries * a.num_heads * a.num_levels * a.num_points;
  const size_t outputs = a.batch * a.num_queries * a.num_heads * a.head_dim;
  // window_rows > 0: value (batch 1) is mostly zeros and only rows [window_start, window_start + window_rows) are
  // given, so that offsets past 2**31 elements can be tested without gigabytes of input; grad_value likewise
  // comes back for the window only.
  const int64_t window_start = optional_arg("window_start", 0);
  const int64_t window_rows = optional_arg("window_rows", 0);
  const size_t row_elems = a.num_heads * a.head_dim;
  const size_t window_offset = window_start * row_elems;
  const size_t window_elems = window_rows * row_elems;
  if (window_rows > 0) {
    char* value = reserve_zeros(values * elem);
    memcpy(value + window_offset * elem, read_input("value", window_elems * elem, 0), window_elems * elem);
    a.value = value;
  } else {
    a.value = read_input("value", values * elem, shift);
  }
  a.spatial_shapes = static_cast<const int64_t*>(read_input("spatial_shapes", 2 * a.num_levels * 8, 0));
  a.level_start_index = static_cast<const int64_t*>(read_input("level_start_index", a.num_levels * 8, 0));
  a.sampling_locations = read_input("sampling_locations", 2 * points * elem, 0);
  a.attention_weights = read_input("attention_weights", points * elem, 0);
  if (!backward) {
    a.output = allocate(outputs * elem, shift, 0xff, "output");
    const int status = finish(forward(a, nullptr));
    if (status == 0) write_output("output", a.output, outputs * elem);
    return status;
  }
  a.output = nullptr;
  mmgdino::cuda::MsdaBackwardArgs args;
  args.fwd = a;
  args.grad_output = read_input("grad_output", outputs * elem, shift);
  char* grad_value = window_rows > 0
                         ? reserve_zeros(values * acc_elem)
                         : static_cast<char*>(allocate(values * acc_elem, arg("misalign") * acc_elem, 0, "grad_value"));
  args.grad_value_acc = grad_value;
  args.grad_sampling_locations = allocate(2 * points * elem, 0, 0xff, "grad_sampling_locations");
  args.grad_attention_weights = allocate(points * elem, 0, 0xff, "grad_attention_weights");
  const int status = finish(backward_pass(args, nullptr));
  if (status == 0) {
    if (window_rows > 0) {
      write_output("grad_value", grad_value + window_offset * acc_elem, window_elems * acc_elem);
    } else {
      write_output("grad_value", grad_value, values * acc_elem);
    }
    write_output("grad_sampling_locations", args.grad_sampling_locations, 2 * points * elem);
    write_output("grad_attention_weights", args.grad_attention_weights, points * elem);
  }
  return status;
}

int run_contrastive(bool reduce_max, DType dtype, size_t elem, size_t acc_elem) {
  mmgdino::cuda::ContrastiveArgs a;
  a.dtype = dtype;
  a.batch = arg("batch");
  a.num_rows = arg("num_rows");
  a.num_tokens = arg("num_tokens");
  a.dim = arg("dim");
  a.max_text_len = arg("max_text_len");
  a.scale = atof(g_args.at("scale").c_str());
  a.vision = read_input("vision", a.batch * a.num_rows * a.dim * elem, 0);
  a.text = read_input("text", a.batch * a.num_tokens * a.dim * elem, 0);
  a.text_token_mask = static_cast<const bool*>(read_input("text_token_mask", a.batch * a.num_tokens, 0));
  a.bias = read_input("bias", acc_elem, 0);
  const size_t outputs = a.batch * a.num_rows * (reduce_max ? 1 : a.max_text_len);
  a.output = allocate(outputs * acc_elem, 0, 0xff, "output");
  const int status =
      finish(reduce_max ? mmgdino::cuda::contrastive_max(a, nullptr) : mmgdino::cuda::contrastive_logits(a, nullptr));
  if (status == 0) write_output("output", a.output, outputs * acc_elem);
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  g_dir = argv[1];
  FILE* f = fopen((g_dir + "/args.txt").c_str(), "r");
  if (!f) {
    fprintf(stderr, "cannot open %s/args.txt\n", argv[1]);
    return 2;
  }
  char key[64], value[64];
  while (fscanf(f, "%63s %63s", key, value) == 2) g_args[key] = value;
  fclose(f);
  size_t elem = 0, acc_elem = 0;
  const DType dtype = dtype_of(g_args.at("dtype"), &elem, &acc_elem);
  const std::string op = g_args.at("op");
  int status = 2;
  if (op == "ms_deform_attn_forward")
    status = run_msda(false, dtype, elem, acc_elem);
  else if (op == "ms_deform_attn_backward")
    status = run_msda(true, dtype, elem, acc_elem);
  else if (op == "contrastive_logits")
    status = run_contrastive(false, dtype, elem, acc_elem);
  else if (op == "contrastive_max")
    status = run_contrastive(true, dtype, elem, acc_elem);
  else
    fprintf(stderr, "unknown op %s\n", op.c_str());
  for (Buffer& b : g_buffers) free(b.base);
  return status;
}
