// cuda_stub.cpp: the CUDA stage of a build without CUDA (-DSHARDSHIFT_CUDA=OFF or no nvcc):
// no devices, and a clear error when one is asked for.
#include "cuda_transform.h"

namespace shardshift {

int CudaTransformer::device_count() {
  return 0;
}

void CudaTransformer::reset_device(int) {}

Result<std::unique_ptr<CudaTransformer>> CudaTransformer::create(int, uint64_t, unsigned) {
  return Status(Errc::cuda,
                "this shardshift was built without CUDA (-DSHARDSHIFT_CUDA=OFF or no nvcc at build "
                "time); use --device cpu");
}

} // namespace shardshift
