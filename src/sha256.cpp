// sha256.cpp: the EVP digest interface of libcrypto.
#include "sha256.h"

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
  for (const auto& [name, digest] : name_digest) {
    if (name.find_first_of("\\\n\r") == std::string::npos) {
      out += digest + "  " + name + "\n";
      continue;
    }
    // As sha256sum writes such a name: the line starts with a backslash, and the name's
    // backslashes, line feeds and carriage returns are written \\, \n and \r.
    out += "\\" + digest + "  ";
    for (const char c : name)
      out += c == '\\' ? "\\\\" : c == '\n' ? "\\n" : c == '\r' ? "\\r" : std::string(1, c);
    out += "\n";
  }
  return out;
}

std::optional<std::string> sha256sums_unescape(std::string_view name) {
  std::string out;
  for (size_t i = 0; i < name.size(); ++i) {
    if (name[i] != '\\') {
      out += name[i];
      continue;
    }
    if (++i == name.size())
      return std::nullopt;
    switch (name[i]) {
    case '\\':
      out += '\\';
      break;
    case 'n':
      out += '\n';
      break;
    case 'r':
      out += '\r';
      break;
    default:
      return std::nullopt;
    }
  }
  return out;
}

} // namespace shardshift
