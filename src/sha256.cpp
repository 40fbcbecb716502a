// sha256.cpp: the EVP digest interface of libcrypto.
#include "sha256.h"

#include "listing_line.h"

#include <openssl/evp.h>
#include <stdexcept>

namespace shardshift {

struct Sha256::Ctx {
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  ~Ctx() { EVP_MD_CTX_free(md); }
};

Sha256::Sha256() : ctx_(std::make_unique<Ctx>()) {
  if (!ctx_->md)
    throw std::bad_alloc();
  reset();
}

Sha256::~Sha256() = default;

void Sha256::reset() {
  EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr);
}

void Sha256::update(std::span<const std::byte> bytes) {
  EVP_DigestUpdate(ctx_->md, bytes.data(), bytes.size());
}

std::string Sha256::hex() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx_->md, digest, &n);
  static const char* const HEX = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < n; ++i) {
    out += HEX[digest[i] >> 4];
    out += HEX[digest[i] & 15];
  }
  reset();
  return out;
}

std::string sha256_hex(std::span<const std::byte> bytes) {
  Sha256 h;
  h.update(bytes);
  return h.hex();
}

std::string sha256sums_text(std::span<const std::pair<std::string, std::string>> name_digest) {
  std::string out;
  for (const auto& [name, digest] : name_digest)
    out += listing_line(digest, "  ", name);
  return out;
}

} // namespace shardshift
